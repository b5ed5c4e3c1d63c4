"""Open a Hugging Face causal-LM checkpoint for streaming: a local folder or a Hub id.

A checkpoint is a folder with ``config.json`` and weights as ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. Only tensor headers are read when it is opened; tensors are read one at a time
later. Pickle weights (``*.bin``, ``*.pt``) are refused unless the caller allows them, and are then loaded with
``torch.load(weights_only=True)``, which cannot execute code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import BabelmergeError
from .safetensors_stream import SafetensorsError, TensorInfo, map_tensor, read_header

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILES = ["*.safetensors", "*.json", "tokenizer*", "*.model", "*.txt", "*.jinja"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
AUX_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass
class Checkpoint:
    """An opened checkpoint: where it is and where each of its tensors lives."""

    ref: str
    path: Path
    tensors: dict[str, TensorInfo | None]
    _pickled: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def shape(self, name: str) -> tuple[int, ...]:
        info = self.tensors[name]
        return info.shape if info is not None else tuple(self._pickled[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        info = self.tensors[name]
        return info.dtype if info is not None else self._pickled[name].dtype

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name``, mapped from its file (copy-on-write: writing to it never changes the file)."""
        info = self.tensors[name]
        if info is None:
            return self._pickled[name]
        try:
            return map_tensor(info)
        except (OSError, SafetensorsError) as e:
            raise BabelmergeError(
                f"model '{self.ref}': cannot read tensor '{name}' from {info.file}: {e}"
            ) from None

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"


def resolve_model_path(ref: str, *, download: Callable[..., str] | None = None) -> Path:
    """A local folder for ``ref``: the folder itself, or a Hub snapshot (config, safetensors, tokenizer files).

    A ``ref`` that does not exist locally and looks like ``org/name`` is fetched with
    ``huggingface_hub.snapshot_download``; anything else is a missing path.
    """
    p = Path(ref).expanduser()
    if p.exists():
        if not p.is_dir():
            raise BabelmergeError(f"model '{ref}': {p} is a file, expected a checkpoint folder")
        return p
    if ref.startswith((".", "/", "~")) or not HUB_ID.match(ref):
        raise BabelmergeError(f"model '{ref}': no such folder")
    if download is None:
        from huggingface_hub import snapshot_download as download
    try:
        return Path(download(repo_id=ref, allow_patterns=HUB_FILES))
    except Exception as e:  # network errors, unknown repos, gated repos: all reported the same way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BabelmergeError(
            f"model '{ref}': not a local folder, and fetching it from the Hugging Face Hub failed: {first}"
        ) from None


def _weight_files(path: Path, ref: str) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise BabelmergeError(f"model '{ref}': {index} is not a valid safetensors index ({e})") from None
        files = sorted({path / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise BabelmergeError(f"model '{ref}': shard {missing[0]} listed in {index.name} is missing")
        return files
    return sorted(path.glob("*.safetensors"))


def open_checkpoint(ref: str, *, allow_pickle: bool = False, path: Path | None = None) -> Checkpoint:
    """Open ``ref`` (a folder or Hub id) and read its tensor headers; validate that it is a HF checkpoint."""
    path = path or resolve_model_path(ref)
    if not (path / "config.json").exists():
        raise BabelmergeError(f"model '{ref}': {path} is not a Hugging Face checkpoint (no config.json)")
    files = _weight_files(path, ref)
    if files:
        tensors: dict[str, TensorInfo | None] = {}
        for f in files:
            try:
                header = read_header(f)
            except (OSError, SafetensorsError) as e:
                raise BabelmergeError(f"model '{ref}': {e}") from None
            for name, info in header.items():
                if name in tensors:
                    raise BabelmergeError(f"model '{ref}': tensor '{name}' appears in more than one shard")
                tensors[name] = info
        return Checkpoint(ref, path, tensors)
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise BabelmergeError(f"model '{ref}': {path} has no weights (no *.safetensors files)")
    if not allow_pickle:
        raise BabelmergeError(
            f"model '{ref}': only pickle weights ({pickles[0].name}); babelmerge loads safetensors only — convert "
            "the checkpoint, or pass --allow-pickle to load it with torch.load(weights_only=True)"
        )
    loaded: dict[str, torch.Tensor] = {}
    for p in pickles:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise BabelmergeError(
                f"model '{ref}': cannot load {p.name} with weights_only=True: {e}"
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise BabelmergeError(f"model '{ref}': {p.name} is not a state dict of tensors")
        loaded.update(state)
    return Checkpoint(ref, path, dict.fromkeys(loaded), loaded)
