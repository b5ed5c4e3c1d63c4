"""DARE (Yu et al. 2023): drop task-vector entries at random and rescale the rest, then merge."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import DENSITY, LAMBDA, WEIGHT, Param, kernels_enabled, normalize_param, register
from .task_arithmetic import combine_sum, task_vectors
from .ties import ties_combine

RESCALE = Param("rescale", True, kind=bool, doc="divide kept entries by density (the paper's rescaling)")


# The drop masks come from a counter-based generator: entry i of model t is kept when a hash of (i, key_t) falls
# below d_t·2^32. Every entry's draw is independent of every other's, so any block, thread or device can compute
# any part of a mask (the compiled kernel in :mod:`.ties_kernel` computes the same hash) and the result does not
# depend on how the work is split. The keys are the only numbers drawn from the seeded generator.
_M32 = 0xFFFFFFFF
_MIX = (0x21F0AAAD, 0x735A2D97)  # multipliers of a 32-bit integer hash (C. Wellons' hash-prospector), < 2^31
_CHUNK = 1 << 20  # entries hashed at a time (bounds the int64 temporaries to 8 MB each)
# From this many entries on, CPU masks come from the compiled loop of :mod:`.ties_kernel` (the int64 tensor ops
# above take 13–23 ns per entry on the benchmark machine, one pass through memory per operation; the loop,
# in 32-bit arithmetic, 0.6–0.85 ns).
_KERNEL_MIN = 1 << 16


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit hash of int64 values in [0, 2^32): xor-shift 16, ×c₁, xor-shift 15, ×c₂, xor-shift 15 (mod
    2^32). Each product is below 2^63, so int64 arithmetic is exact on every device."""
    x = x ^ (x >> 16)
    x = (x * _MIX[0]) & _M32
    x = x ^ (x >> 15)
    x = (x * _MIX[1]) & _M32
    return x ^ (x >> 15)


def drop_keys(n_models: int, generator: torch.Generator | None) -> list[tuple[int, int]]:
    """The two 32-bit keys (k₀, k₁) of each model's mask, drawn from ``generator`` (on the CPU)."""
    keys = torch.randint(0, 1 << 32, (n_models, 2), generator=generator, dtype=torch.int64)
    return [(int(a), int(b)) for a, b in keys.tolist()]


def keep_threshold(density: float) -> int:
    """⌊d·2^32⌋: an entry is kept when its 32-bit draw is below it (probability d; d = 1 keeps all)."""
    return int(density * (1 << 32))


def keep_mask(shape: torch.Size, key: tuple[int, int], density: float, device: torch.device | str = "cpu"):
    """m ~ Bernoulli(d) per entry, as a boolean tensor: m_i = [u_i < ⌊d·2^32⌋], u_i = mix32(mix32(i mod 2^32 ⊕ k₀)
    ⊕ ⌊i / 2^32⌋ ⊕ k₁) for the flat (row-major) index i."""
    n = shape.numel()
    k0, k1 = key
    threshold = keep_threshold(density)
    if torch.device(device).type == "cpu" and n >= _KERNEL_MIN and threshold < 1 << 32 and kernels_enabled():
        from .ties_kernel import keep_mask as compiled  # the same hash as a multi-threaded loop (tested)

        return compiled(n, key, threshold).view(shape)
    mask = torch.empty(n, dtype=torch.bool, device=device)
    for start in range(0, n, _CHUNK):
        i = torch.arange(start, min(n, start + _CHUNK), dtype=torch.int64, device=device)
        u = mix32(mix32((i & _M32) ^ k0) ^ (i >> 32) ^ k1)
        mask[start : start + i.numel()] = u < threshold
    return mask.view(shape)


def dare_drop(
    tau: list[torch.Tensor], density: Sequence[float], generator: torch.Generator | None, rescale: bool = True
) -> list[torch.Tensor]:
    """Keep each entry of τ_t with probability d_t (mask m_t from :func:`keep_mask`), then divide by d_t: m_t ⊙ τ_t / d_t.

    Works in place on the task vectors ``tau`` and returns them. One key pair per model is drawn from
    ``generator`` (all models' keys, before any mask), so the same seed gives bit-identical results on any
    device. Density 1 keeps everything untouched.
    """
    keys = drop_keys(len(tau), generator)
    for t, d, key in zip(tau, density, keys):
        if d >= 1.0:
            continue
        t.masked_fill_(~keep_mask(t.shape, key, d, t.device), 0.0)
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


def fused(tensors: Sequence[torch.Tensor], **kwargs) -> torch.Tensor:
    """The compiled CPU kernel of ``dare_ties`` (:func:`.ties_kernel.fused_dare_ties`), imported on first use."""
    from .ties_kernel import fused_dare_ties

    return fused_dare_ties(tensors, **kwargs)


@register(
    "dare_ties",
    params=[WEIGHT, DENSITY, LAMBDA, normalize_param(False), RESCALE],
    needs_base=True,
    uses_generator=True,
    kernel=fused,
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
