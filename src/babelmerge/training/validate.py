"""Checks that need the model, the tokenizer or the files named in the config; all run before training.

Each failure is a one-line :class:`BabelmergeError` naming the key or path at fault. The data-dependent
checks (the budget fits the sources; every slice holds at least one optimiser step) run right after the
data is packed, still before the first branch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from babelmerge.data.sources import resolve_files
from babelmerge.errors import BabelmergeError

from .config import TrainConfig


@dataclass
class Inputs:
    """What the checks loaded and the run reuses."""

    tokenizer: object
    tokenizer_dir: Path
    model_dtype: str


def validate_inputs(cfg: TrainConfig, world_size: int = 1) -> Inputs:
    """Check the model folder, the tokenizer, their compatibility, the data and eval files, the merge."""
    model_dir = Path(cfg.model).expanduser()
    if not model_dir.is_dir():
        raise BabelmergeError(
            f"model: {cfg.model} is not a folder (a Hugging Face checkpoint folder is needed)"
        )
    if not (model_dir / "config.json").is_file():
        raise BabelmergeError(f"model: {cfg.model} has no config.json")
    if not any(model_dir.glob("*.safetensors")):
        raise BabelmergeError(
            f"model: {cfg.model} has no *.safetensors weights (only safetensors are loaded)"
        )
    model_cfg = json.loads((model_dir / "config.json").read_text())

    tok_dir = Path(cfg.tokenizer).expanduser() if cfg.tokenizer else model_dir
    tokenizer = _load_tokenizer(tok_dir, "tokenizer" if cfg.tokenizer else "model")
    vocab = model_cfg.get("vocab_size")
    if vocab is not None and len(tokenizer) > vocab:
        raise BabelmergeError(
            f"tokenizer {tok_dir} has {len(tokenizer)} tokens but model {cfg.model} has an embedding for only "
            f"{vocab} (vocab_size); resize the model's embeddings first"
        )
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise BabelmergeError(f"tokenizer {tok_dir} has no EOS token, needed to separate packed documents")
    max_pos = model_cfg.get("max_position_embeddings")
    if max_pos is not None and cfg.data.block_size > max_pos:
        raise BabelmergeError(
            f"data.block_size {cfg.data.block_size} exceeds the model's max_position_embeddings {max_pos}"
        )

    for i, src in enumerate(cfg.data.sources):
        if src.path is not None:
            try:
                resolve_files(src)
            except BabelmergeError as err:
                raise BabelmergeError(f"data.sources[{i}]: {err}") from None
    if cfg.eval is not None:
        for f in cfg.eval.files:
            if not Path(f).expanduser().is_file():
                raise BabelmergeError(f"eval.files: {f} does not exist")
    if cfg.method == "bam":
        _check_merge(cfg)
    if cfg.backend.type == "ray":
        from .backends import import_ray

        import_ray()
    if world_size > 1 and cfg.backend.type == "ray":
        raise BabelmergeError(
            "backend: ray cannot be combined with torchrun/accelerate launch; use sequential"
        )
    dtype = model_cfg.get("dtype") or model_cfg.get("torch_dtype") or "float32"
    return Inputs(tokenizer=tokenizer, tokenizer_dir=tok_dir, model_dtype=str(dtype))


def _load_tokenizer(path: Path, key: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # transformers raises many kinds; all mean "no usable tokenizer here"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BabelmergeError(f"{key}: cannot load a tokenizer from {path}: {first}") from None


def _check_merge(cfg: TrainConfig) -> None:
    """Validate the merge method's parameters now, not after the first iteration's training."""
    from babelmerge.merge_config import check_parameters, get_merge_method, load_merge_config

    from .bam import merge_config

    refs = [f"branch{k}" for k in range(cfg.branches_per_iteration)]
    mcfg, _ = load_merge_config(merge_config(cfg.merge, "base", refs))
    try:
        check_parameters(mcfg, get_merge_method(mcfg), refs)
    except BabelmergeError as err:
        raise BabelmergeError(f"merge: {err}") from None
