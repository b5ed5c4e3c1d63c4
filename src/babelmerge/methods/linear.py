"""Linear merge (weighted average of the models, "model soup")."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import WEIGHT, normalize_param, register


@register("linear", params=[WEIGHT, normalize_param(True)], needs_base=False, elementwise=True)
def linear(
    tensors: Sequence[torch.Tensor], *, weight: Sequence[float], normalize: bool = True
) -> torch.Tensor:
    """θ = Σ_t w_t θ_t, divided by Σ_t w_t when ``normalize``.

    With one model and normalisation the result is that model; with equal weights it is the plain average.
    """
    if normalize:
        total = float(sum(weight))
        if total == 0.0:
            raise ValueError("linear: weights sum to zero, cannot normalise")
        weight = [w / total for w in weight]  # normalising the weights first keeps linear([θ]) == θ exact
    # Accumulate in place: no stacked copy of the inputs.
    out = tensors[0] * weight[0]
    for t, w in zip(tensors[1:], weight[1:]):
        out.add_(t, alpha=w)
    return out
