"""Do the models of a merge share a base? Same architecture, and weights close to the named base model.

Task arithmetic and TIES add up task vectors θ_i − θ_base. That only means something when every θ_i was trained
from θ_base: models of another architecture cannot be merged at all, and models of the same architecture but
another initialisation can be merged, silently, into noise. Two checks therefore run before a pipeline merges:

1. architecture: ``config.json`` agrees on the model type and sizes, and the checkpoints hold the same tensor
   names with the same shapes (the error names the first tensor that differs);
2. closeness: the relative L2 distance ‖θ − θ_base‖ / ‖θ_base‖ over the weight matrices is below a threshold.
   Fine-tuning, continued pretraining and merging move a model by a few percent to a few tens of percent; two
   independently initialised models are about √2 ≈ 1.4 apart (two independent random vectors of equal norm).
   Vectors (norm scales, biases) are left out: at initialisation every norm scale is 1 in every model, which
   would make unrelated models look close.
"""

from __future__ import annotations

import json
import math

import torch

from ..checkpoint import Checkpoint, open_checkpoint
from ..errors import BabelmergeError

#: config.json keys that must agree between merged models (when either model sets them).
ARCHITECTURE_KEYS = (
    "model_type",
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
)

#: Default bound on ‖θ − θ_base‖ / ‖θ_base‖ for a model to count as trained from the base.
DEFAULT_MAX_DISTANCE = 0.5


def architecture_difference(base: Checkpoint, model: Checkpoint) -> str | None:
    """The first difference between the two checkpoints' tensors or config.json sizes, or ``None``."""
    names, base_names = set(model.tensors), set(base.tensors)
    if names != base_names:
        only_base = sorted(base_names - names)
        if only_base:
            return f"tensor '{only_base[0]}' is in the base but not in the model"
        return f"tensor '{sorted(names - base_names)[0]}' is in the model but not in the base"
    for name in base.tensors:
        if model.shape(name) != base.shape(name):
            return f"tensor '{name}' has shape {list(model.shape(name))}, but {list(base.shape(name))} in the base"
    base_cfg = json.loads(base.config_path.read_text())
    model_cfg = json.loads(model.config_path.read_text())
    for key in ARCHITECTURE_KEYS:
        if key in base_cfg or key in model_cfg:
            if base_cfg.get(key) != model_cfg.get(key):
                return f"config.json {key} is {model_cfg.get(key)!r}, but {base_cfg.get(key)!r} in the base"
    return None


def squared_distance(theta: torch.Tensor, base: torch.Tensor) -> tuple[float, float]:
    """``(‖θ − θ_base‖², ‖θ_base‖²)`` of one tensor, in float64."""
    a, b = theta.double(), base.double()
    return float(torch.sum((a - b) ** 2)), float(torch.sum(b**2))


def matrix_distance(model: Checkpoint, base: Checkpoint) -> tuple[float, str, float]:
    """Relative L2 distance of ``model`` from ``base`` over the float tensors with two or more dimensions, and the
    tensor with the largest relative distance (name, value). Streams one tensor pair at a time."""
    diff_sq = base_sq = 0.0
    worst, worst_value = "", -1.0
    for name in base.tensors:
        if len(base.shape(name)) < 2 or not base.dtype(name).is_floating_point:
            continue
        d, b = squared_distance(model.read(name), base.read(name))
        diff_sq, base_sq = diff_sq + d, base_sq + b
        rel = math.sqrt(d / b) if b > 0 else (0.0 if d == 0 else math.inf)
        if rel > worst_value:
            worst, worst_value = name, rel
    return (math.sqrt(diff_sq / base_sq) if base_sq > 0 else 0.0), worst, worst_value


#: Distances already measured in this process, keyed by the two checkpoints' weight files (path, size, mtime):
#: a merge whose inputs were checked during validation is not read a second time just before it runs.
_measured: dict[tuple, tuple[float, str, float]] = {}


def _files_key(ck: Checkpoint) -> tuple:
    files = sorted({info.file for info in ck.tensors.values() if info is not None})
    return tuple((str(f.absolute()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def measured_distance(model: Checkpoint, base: Checkpoint) -> tuple[float, str, float]:
    """:func:`matrix_distance`, remembered for unchanged weight files."""
    key = (_files_key(model), _files_key(base))
    if not (key[0] and key[1]):
        return matrix_distance(model, base)
    if key not in _measured:
        _measured[key] = matrix_distance(model, base)
    return _measured[key]


def check_shared_base(
    base_ref: str,
    model_refs: list[str],
    max_distance: float | None,
    where: str,
    labels: dict[str, str] | None = None,
) -> dict[str, float]:
    """Raise unless every model has the base's architecture and (if ``max_distance``) lies near the base.

    ``labels`` optionally describes a model in error messages (default: ``model '<ref>'``).

    Returns each model's relative distance from the base (empty if the distance check is off). Reads every
    tensor of each model once (streamed), so it costs about what reading the models for the merge costs.
    """
    labels = labels or {}

    def describe(ref: str) -> str:
        return labels.get(ref, "model '" + ref + "'")

    base = open_checkpoint(base_ref)
    models = {ref: open_checkpoint(ref) for ref in model_refs if ref != base_ref}
    for ref, model in models.items():
        problem = architecture_difference(base, model)
        if problem:
            raise BabelmergeError(
                f"{where}: {describe(ref)} does not have the architecture of base_model '{base_ref}': {problem}"
            )
    distances: dict[str, float] = {}
    if max_distance is None:
        return distances
    for ref, model in models.items():
        distance, worst, worst_value = measured_distance(model, base)
        distances[ref] = distance
        if distance > max_distance:
            raise BabelmergeError(
                f"{where}: {describe(ref)} does not look trained from base_model '{base_ref}': relative weight "
                f"distance ‖θ − θ_base‖/‖θ_base‖ = {distance:.3f} exceeds max_base_distance {max_distance:g} "
                f"(independently initialised models are about 1.4 apart; farthest tensor: '{worst}' at "
                f"{worst_value:.3f}); merge models of one base, or raise max_base_distance"
            )
    return distances
