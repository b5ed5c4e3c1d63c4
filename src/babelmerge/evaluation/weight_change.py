"""How far a model moved from a reference: L2 distance of the weights, in total and per layer.

The BaM paper ties forgetting to the size of the weight change; this is the number to put next to it. Tensors are
streamed one at a time from the two checkpoints, so this works on models larger than memory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator

import torch

from ..checkpoint import open_checkpoint
from ..errors import BabelmergeError

LAYER = re.compile(r"\.layers\.(\d+)\.")


def layer_of(name: str) -> str:
    """``layer.N`` for tensors of transformer block N, else ``other`` (embeddings, final norm, head)."""
    m = LAYER.search(name)
    return f"layer.{int(m.group(1))}" if m else "other"


def weight_change(model_ref: str, reference_ref: str) -> dict:
    """``{"l2": ‖θ − θ_ref‖, "relative": ‖θ − θ_ref‖ / ‖θ_ref‖, "per_layer": {layer: l2}}`` over float tensors."""
    model, ref = open_checkpoint(model_ref), open_checkpoint(reference_ref)
    if set(model.tensors) != set(ref.tensors):
        diff = sorted(set(model.tensors) ^ set(ref.tensors))[0]
        raise BabelmergeError(f"tensor '{diff}' is in only one of '{model_ref}' and '{reference_ref}'")

    def pairs() -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        for name in ref.tensors:
            if not ref.dtype(name).is_floating_point:
                continue
            if model.shape(name) != ref.shape(name):
                raise BabelmergeError(
                    f"tensor '{name}' has shape {list(model.shape(name))} in '{model_ref}' "
                    f"but {list(ref.shape(name))} in '{reference_ref}'"
                )
            yield name, model.read(name), ref.read(name)

    return change_norms(pairs(), str(reference_ref))


def change_norms(pairs: Iterable[tuple[str, torch.Tensor, torch.Tensor]], reference: str) -> dict:
    """``{"reference", "l2": ‖θ − θ_ref‖, "relative": ‖θ − θ_ref‖ / ‖θ_ref‖, "per_layer": {layer: l2}}`` from
    ``(name, θ, θ_ref)`` tensor pairs (accumulated in float64, one pair at a time)."""
    sq: dict[str, float] = {}
    ref_sq = 0.0
    for name, theta, theta_ref in pairs:
        a, b = theta.double(), theta_ref.double()
        key = layer_of(name)
        sq[key] = sq.get(key, 0.0) + float(torch.sum((a - b) ** 2))
        ref_sq += float(torch.sum(b**2))
    total = math.sqrt(sum(sq.values()))
    per_layer = {k: math.sqrt(v) for k, v in sorted(sq.items(), key=lambda kv: _layer_sort_key(kv[0]))}
    return {
        "reference": reference,
        "l2": total,
        "relative": total / math.sqrt(ref_sq),
        "per_layer": per_layer,
    }


def _layer_sort_key(key: str) -> tuple[int, int]:
    return (1, 0) if key == "other" else (0, int(key.split(".")[1]))
