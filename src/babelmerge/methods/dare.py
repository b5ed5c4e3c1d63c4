"""DARE (Yu et al. 2023): drop task-vector entries at random and rescale the rest, then merge."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import DENSITY, LAMBDA, WEIGHT, Param, normalize_param, register
from .task_arithmetic import combine_sum, task_vectors
from .ties import ties_combine

RESCALE = Param("rescale", True, kind=bool, doc="divide kept entries by density (the paper's rescaling)")


def dare_drop(
    tau: list[torch.Tensor], density: Sequence[float], generator: torch.Generator | None, rescale: bool = True
) -> list[torch.Tensor]:
    """Keep each entry of τ_t with probability d_t (Bernoulli mask m_t), then divide by d_t: m_t ⊙ τ_t / d_t.

    Works in place on the task vectors ``tau`` and returns them.

    The masks are drawn on the CPU from ``generator``, one model after the other, so the same seed gives
    bit-identical results on any device. Density 1 keeps everything untouched.
    """
    for t, d in zip(tau, density):
        if d >= 1.0:
            continue
        keep = torch.rand(t.shape, generator=generator, dtype=torch.float32) < d
        t.mul_(keep.to(t.device))
        if rescale:
            t.div_(d)
    return tau


@register(
    "dare_linear",
    params=[WEIGHT, DENSITY, LAMBDA, normalize_param(False), RESCALE],
    needs_base=True,
    uses_generator=True,
)
def dare_linear(
    tensors: Sequence[torch.Tensor],
    *,
    base: torch.Tensor,
    weight: Sequence[float],
    density: Sequence[float],
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """θ = θ_base + λ Σ_t w_t (m_t ⊙ τ_t / d_t), m_t ~ Bernoulli(d_t) elementwise (task arithmetic on DARE'd τ).

    With d_t = 1 for all t this is task arithmetic.
    """
    tau = dare_drop(task_vectors(base, tensors), density, generator, rescale)
    return combine_sum(base, tau, weight, lambda_, normalize)


@register(
    "dare_ties",
    params=[WEIGHT, DENSITY, LAMBDA, normalize_param(False), RESCALE],
    needs_base=True,
    uses_generator=True,
)
def dare_ties(
    tensors: Sequence[torch.Tensor],
    *,
    base: torch.Tensor,
    weight: Sequence[float],
    density: Sequence[float],
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """TIES' sign election and disjoint sum over DARE'd task vectors m_t ⊙ τ_t / d_t (no magnitude trim).

    ``normalize`` defaults to false, as in mergekit's ``dare_ties``; with ``normalize: true`` and d_t = 1 it is
    TIES with density 1.
    """
    tau = dare_drop(task_vectors(base, tensors), density, generator, rescale)
    return ties_combine(base, tau, weight, lambda_, normalize)
