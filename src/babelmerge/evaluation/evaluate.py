"""Evaluate models for learning (target-language text) and forgetting (source-language text).

One call scores every model (and, with ``interpolate``, every point θ_base + α(θ − θ_base) between the base and
each model) on held-out text files in bits per byte, optionally on instruction prompts and lm-eval tasks, and
measures each model's weight change from a reference. Each scored point is written as one JSON file, so reports
are drawn from stored results without recomputation.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator

from .. import __version__
from ..atomic import atomic_write_json
from ..checkpoint import open_checkpoint
from ..config_errors import validate_model
from ..errors import BabelmergeError
from .bits_per_byte import score_texts
from .instruction_accuracy import instruction_accuracy, load_instruction_examples
from .interpolation import interpolation_curve
from .weight_change import change_norms, weight_change

RESULT_MARKER = "babelmerge_eval"


class EvalConfig(BaseModel):
    """What to evaluate and how. Text files hold one document per line."""

    model_config = ConfigDict(extra="forbid")

    models: list[str]
    labels: list[str] | None = None
    target: list[str] = []  # held-out text in the language being learned
    source: list[str] = []  # held-out text in the language that must not be forgotten
    texts: dict[str, str] = {}  # other named text sets (role "other")
    reference: str | None = None  # weight change is measured from this model (default: base)
    base: str | None = None  # interpolation start point
    interpolate: list[float] = []
    instruct: str | None = None
    match: Literal["exact", "contains"] = "exact"
    ignore_case: bool = False
    max_new_tokens: int = 32
    tasks: list[str] = []
    task_include: str | None = None
    task_limit: float | None = None
    max_length: int = 1024
    stride: int | None = None
    batch_size: int = 8
    bf16: bool = False
    max_docs: int | None = None
    device: str = "cpu"
    out: str | None = None  # results folder; default: <model>/babelmerge_eval/
    trust_remote_code: bool = False

    @field_validator("interpolate")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        for a in v:
            if not math.isfinite(a):
                raise ValueError(f"interpolation values must be finite, got {a}")
        return v


def _text_sets(cfg: EvalConfig) -> dict[str, tuple[str, Path]]:
    sets: dict[str, tuple[str, Path]] = {}
    for role, files in (("target", cfg.target), ("source", cfg.source)):
        for f in files:
            sets[Path(f).name if Path(f).name not in sets else f] = (role, Path(f))
    for name, f in cfg.texts.items():
        sets[name] = ("other", Path(f))
    return sets


def _read_docs(path: Path, max_docs: int | None) -> list[str]:
    docs = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not docs:
        raise BabelmergeError(f"{path}: no text to score")
    return docs[:max_docs] if max_docs else docs


def _labels(cfg: EvalConfig) -> list[str]:
    if cfg.labels is not None:
        if len(cfg.labels) != len(cfg.models):
            raise BabelmergeError(f"{len(cfg.labels)} labels given for {len(cfg.models)} models")
        return cfg.labels
    names = [Path(m).name or m for m in cfg.models]
    return [f"{Path(m).parent.name}/{n}" if names.count(n) > 1 else n for m, n in zip(cfg.models, names)]


def _safe(label: str) -> str:
    return re.sub(r"[^\w.@=-]+", "_", label)


def validate_eval(cfg: EvalConfig) -> None:
    """Check every path and option before loading any model."""
    if not cfg.models:
        raise BabelmergeError("no models to evaluate")
    for m in [*cfg.models, *filter(None, [cfg.reference, cfg.base])]:
        open_checkpoint(m)
    for _, (_, path) in _text_sets(cfg).items():
        if not path.is_file():
            raise BabelmergeError(f"{path}: no such text file")
    if cfg.instruct:
        load_instruction_examples(cfg.instruct)
    if cfg.interpolate and not cfg.base:
        raise BabelmergeError("interpolate needs a base model (--base) to interpolate from")
    if not (_text_sets(cfg) or cfg.instruct or cfg.tasks):
        raise BabelmergeError(
            "nothing to evaluate: give --target/--source/--text files, --instruct or --tasks"
        )
    if cfg.stride is not None and not 0 < cfg.stride < cfg.max_length:
        raise BabelmergeError(
            f"stride must be between 1 and max_length - 1 ({cfg.max_length - 1}), got {cfg.stride}"
        )
    _labels(cfg)


def load_model(path: str, device: str, trust_remote_code: bool = False):
    """A causal LM and its tokenizer from a local folder or Hub id; safetensors only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..checkpoint import resolve_model_path

    local = resolve_model_path(path)
    model = AutoModelForCausalLM.from_pretrained(
        local, dtype=torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    tokenizer = AutoTokenizer.from_pretrained(local, trust_remote_code=trust_remote_code)
    return model.to(device).eval(), tokenizer


def _score_point(
    model, tokenizer, cfg: EvalConfig, texts: dict[str, tuple[str, list[str], Path]], examples
) -> dict:
    max_length = min(cfg.max_length, getattr(model.config, "max_position_embeddings", cfg.max_length))
    stride = min(cfg.stride or max_length // 2, max_length - 1)
    result: dict = {"texts": {}}
    for name, (role, docs, path) in texts.items():
        score = score_texts(
            model,
            tokenizer,
            docs,
            max_length=max_length,
            stride=stride,
            batch_size=cfg.batch_size,
            bf16=cfg.bf16,
        )
        result["texts"][name] = {"role": role, "file": str(path), **score.as_dict()}
    for role in ("target", "source"):
        values = [t["bpb"] for t in result["texts"].values() if t["role"] == role]
        result[f"{role}_bpb"] = sum(values) / len(values) if values else None
    if examples is not None:
        result["instruct"] = instruction_accuracy(
            model,
            tokenizer,
            examples,
            match=cfg.match,
            ignore_case=cfg.ignore_case,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
        )
    if cfg.tasks:
        from .harness import run_harness

        result["harness"] = run_harness(
            model,
            tokenizer,
            cfg.tasks,
            include_path=cfg.task_include,
            batch_size=cfg.batch_size,
            limit=cfg.task_limit,
        )
    result["settings"] = {
        "max_length": max_length,
        "stride": stride,
        "bf16": cfg.bf16,
        "max_docs": cfg.max_docs,
    }
    return result


def _in_memory_change(model, reference: dict[str, torch.Tensor], ref_name: str) -> dict:
    """Weight change of a loaded model (e.g. an interpolation point) from a reference state dict."""
    pairs = (
        (name, theta, reference[name])
        for name, theta in model.state_dict().items()
        if name in reference and theta.is_floating_point()
    )
    return change_norms(pairs, ref_name)


def evaluate(config: EvalConfig | dict) -> list[Path]:
    """Run the evaluation; return the result files written (one per model and interpolation point)."""
    cfg = config if isinstance(config, EvalConfig) else validate_model(EvalConfig, config, "eval config")
    validate_eval(cfg)
    texts = {
        name: (role, _read_docs(path, cfg.max_docs), path) for name, (role, path) in _text_sets(cfg).items()
    }
    examples = load_instruction_examples(cfg.instruct) if cfg.instruct else None
    reference = cfg.reference or cfg.base
    base_state = None
    if cfg.interpolate:
        base_model, _ = load_model(cfg.base, "cpu", cfg.trust_remote_code)
        base_state = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
        del base_model
    written: list[Path] = []
    for model_ref, label in zip(cfg.models, _labels(cfg)):
        model, tokenizer = load_model(model_ref, cfg.device, cfg.trust_remote_code)
        out_dir = Path(cfg.out) if cfg.out else Path(model_ref) / "babelmerge_eval"
        common = {RESULT_MARKER: __version__, "model": str(model_ref), "base": cfg.base}
        result = {
            **common,
            "label": label,
            "alpha": None,
            **_score_point(model, tokenizer, cfg, texts, examples),
        }
        if reference:
            result["weight_change"] = weight_change(model_ref, reference)
        path = out_dir / f"{_safe(label)}.json"
        atomic_write_json(path, result)
        written.append(path)
        if base_state is not None:
            for alpha in interpolation_curve(model, base_state, cfg.interpolate):
                point = {**common, "label": f"{label}@{alpha:g}", "of": label, "alpha": alpha}
                point.update(_score_point(model, tokenizer, cfg, texts, examples))
                point["weight_change"] = _in_memory_change(model, base_state, str(cfg.base))
                path = out_dir / f"{_safe(label)}@{alpha:g}.json"
                atomic_write_json(path, point)
                written.append(path)
        del model
    return written
