"""Task arithmetic (Ilharco et al. 2023): add scaled task vectors to the base."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import LAMBDA, WEIGHT, normalize_param, register


def task_vectors(base: torch.Tensor, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The task vectors τ_t = θ_t − θ_base, one new tensor per model."""
    return [t - base for t in tensors]


def weighted_sum(tau: Sequence[torch.Tensor], weight: Sequence[float]) -> torch.Tensor:
    """Σ_t w_t τ_t, accumulated model by model (no stacked copy of the products)."""
    total = tau[0] * weight[0]
    for t, w in zip(tau[1:], weight[1:]):
        total.add_(t, alpha=w)
    return total


def add_to_base_(base: torch.Tensor, delta: torch.Tensor, lambda_: float) -> torch.Tensor:
    """θ_base + λ·δ, computed in δ's storage (δ is the caller's scratch tensor)."""
    if lambda_ != 1.0:
        delta.mul_(lambda_)
    return delta.add_(base)


def combine_sum(
    base: torch.Tensor, tau: Sequence[torch.Tensor], weight: Sequence[float], lambda_: float, normalize: bool
) -> torch.Tensor:
    """θ_base + λ Σ_t w_t τ_t (the sum divided by Σ_t w_t when ``normalize``)."""
    delta = weighted_sum(tau, weight)
    if normalize:
        total = float(sum(weight))
        if total == 0.0:
            raise ValueError("weights sum to zero, cannot normalise")
        delta.div_(total)
    return add_to_base_(base, delta, lambda_)


@register(
    "task_arithmetic", params=[WEIGHT, LAMBDA, normalize_param(False)], needs_base=True, elementwise=True
)
def task_arithmetic(
    tensors: Sequence[torch.Tensor],
    *,
    base: torch.Tensor,
    weight: Sequence[float],
    lambda_: float = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """θ = θ_base + λ Σ_t w_t τ_t, with τ_t = θ_t − θ_base (divided by Σ_t w_t when ``normalize``).

    λ = 0 gives the base; one model with w = λ = 1 gives that model.
    """
    return combine_sum(base, task_vectors(base, tensors), weight, lambda_, normalize)
