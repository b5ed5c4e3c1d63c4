"""Model Stock (Jang et al. 2024): move from the base towards the models' average by an angle-derived ratio."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch

from . import register


def mean_pairwise_cosine(offsets: Sequence[torch.Tensor]) -> float:
    """Mean over model pairs of cos(δ_i, δ_j) for the flattened offsets δ_t = θ_t − θ_base.

    A pair where either offset is zero contributes cosine 0.
    """
    cosines = []
    for a, b in combinations(offsets, 2):
        na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
        if na == 0 or nb == 0:
            cosines.append(0.0)
        else:
            cosines.append(float(torch.sum(a * b) / (na * nb)))
    return sum(cosines) / len(cosines)


@register("model_stock", needs_base=True, min_models=2)
def model_stock(tensors: Sequence[torch.Tensor], *, base: torch.Tensor) -> torch.Tensor:
    """θ = r · mean_t(θ_t) + (1 − r) · θ_base, with r = N cos θ / (1 + (N − 1) cos θ).

    cos θ is the mean pairwise cosine between the models' offsets from the base, computed per tensor over the
    whole (flattened) tensor and clamped to [0, 1]: offsets at a right angle or worse give r = 0 (the base),
    identical offsets give r = 1 (their average). N is the number of models (at least two).
    """
    n = len(tensors)
    cos = min(1.0, max(0.0, mean_pairwise_cosine([t - base for t in tensors])))
    ratio = n * cos / (1 + (n - 1) * cos)
    mean = torch.stack(list(tensors)).mean(dim=0)
    return ratio * mean + (1 - ratio) * base
