"""TIES merging (Yadav et al. 2023) and TIES with a slack variable (after Tao et al. 2024).

TIES: trim each task vector to its largest entries, elect a sign per entry, and average only the entries that
agree with the elected sign ("disjoint mean"). Weighted as in mergekit: the election uses the weighted sum
Σ_t w_t τ̂_t, and the disjoint mean divides by the sum of the agreeing models' weights.

TIES-SV: when one task vector is much larger than another (a model continually pretrained for long, merged with
an instruction-tuned one), it wins the sign election wherever the two conflict, and the smaller model's most
important entries are discarded. babelmerge's reading of Tao et al.'s slack variable: each task vector t has a
slack s_t ∈ [0, density_t]; its top-s_t fraction of entries by magnitude are *protected*. Where any protected
(non-zero) values exist, the sign is elected among the protected values only; elsewhere the ordinary election
applies. With s_t = 0 for every model this is exactly TIES.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import DENSITY, LAMBDA, WEIGHT, Param, normalize_param, register
from .task_arithmetic import task_vectors

SLACK = Param(
    "slack", 0.0, per_model=True, low=0.0, high=1.0, doc="fraction of τ_t protected in the election"
)


def top_fraction_mask(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask of the k = ⌊fraction · numel⌋ entries of ``x`` with the largest magnitude.

    Exactly k entries are kept. Entries tied at the threshold magnitude are taken in flat-index order (earlier
    first), so the result is deterministic, and the mask for a smaller fraction is a subset of the mask for a
    larger one.
    """
    n = x.numel()
    k = int(fraction * n)
    if k >= n:
        return torch.ones_like(x, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(x, dtype=torch.bool)
    mag = x.abs().flatten()
    threshold = mag.kthvalue(n - k + 1).values  # the k-th largest magnitude
    above = mag > threshold
    need = k - int(above.sum())
    tied = (mag == threshold).nonzero().squeeze(1)[:need]  # flat indices in increasing order
    above[tied] = True
    return above.view_as(x)


def trim(tau: torch.Tensor, density: Sequence[float]) -> torch.Tensor:
    """τ̂_t: each task vector with all but its top-``density_t`` fraction of entries (by magnitude) set to zero."""
    return torch.stack([t * top_fraction_mask(t, d) if d < 1.0 else t for t, d in zip(tau, density)])


def _sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x`` ≥ 0, −1 elsewhere (a zero sum elects +1, as in mergekit)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def elect_sign(weighted: torch.Tensor) -> torch.Tensor:
    """γ = sign(Σ_t w_t τ̂_t) per entry, given the stack of weighted trimmed task vectors."""
    return _sign(weighted.sum(dim=0))


def disjoint_merge(
    weighted: torch.Tensor, weight: Sequence[float], sign: torch.Tensor, normalize: bool
) -> torch.Tensor:
    """Σ_{t ∈ A} w_t τ̂_t / Σ_{t ∈ A} w_t per entry, A = models whose w_t τ̂_t has the elected sign.

    Zero entries never agree. Without ``normalize`` the sum is not divided. Entries where no model agrees are 0.
    """
    agree = torch.sign(weighted) == sign
    merged = (weighted * agree).sum(dim=0)
    if not normalize:
        return merged
    w = torch.tensor(weight, dtype=weighted.dtype, device=weighted.device).view(-1, *[1] * sign.dim())
    divisor = (w * agree).sum(dim=0)
    divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    return merged / divisor


def _weights_view(weight: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(weight, dtype=like.dtype, device=like.device).view(-1, *[1] * (like.dim() - 1))


def ties_combine(
    base: torch.Tensor,
    tau_hat: torch.Tensor,
    weight: Sequence[float],
    lambda_: float,
    normalize: bool,
    sign: torch.Tensor | None = None,
) -> torch.Tensor:
    """θ_base + λ · disjoint_merge(w_t τ̂_t) with the elected sign (or the ``sign`` given)."""
    weighted = tau_hat * _weights_view(weight, tau_hat)
    if sign is None:
        sign = elect_sign(weighted)
    return base + lambda_ * disjoint_merge(weighted, weight, sign, normalize)


@register("ties", params=[WEIGHT, DENSITY, LAMBDA, normalize_param(True)], needs_base=True)
def ties(
    tensors: Sequence[torch.Tensor],
    *,
    base: torch.Tensor,
    weight: Sequence[float],
    density: Sequence[float],
    lambda_: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """θ = θ_base + λ · Σ_{t∈A} w_t τ̂_t / Σ_{t∈A} w_t, A = {t : sign(τ̂_t) = sign(Σ_s w_s τ̂_s)}.

    τ̂_t keeps the top-``density_t`` fraction of τ_t = θ_t − θ_base by magnitude (exactly ⌊d·n⌋ entries, ties
    at the threshold taken in index order). Without ``normalize`` the agreeing sum is not divided.
    """
    tau_hat = trim(task_vectors(base, tensors), density)
    return ties_combine(base, tau_hat, weight, lambda_, normalize)


def _check_slack(params: dict) -> str | None:
    for i, (s, d) in enumerate(zip(params["slack"], params["density"])):
        if s > d:
            return f"slack ({s}) must not exceed density ({d}) for model {i + 1}"
    return None


@register(
    "ties_sv",
    params=[WEIGHT, DENSITY, SLACK, LAMBDA, normalize_param(True)],
    needs_base=True,
    check=_check_slack,
)
def ties_sv(
    tensors: Sequence[torch.Tensor],
    *,
    base: torch.Tensor,
    weight: Sequence[float],
    density: Sequence[float],
    slack: Sequence[float],
    lambda_: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """TIES whose sign election, where protected entries exist, counts only them: γ = sign(Σ_t w_t τ_t·P_t).

    P_t marks the top-``slack_t`` fraction of τ_t by magnitude (s_t ≤ density_t, so P_t ⊆ the trimmed
    entries). At entries with any non-zero protected value the elected sign is sign(Σ_t w_t τ_t P_t); elsewhere
    it is TIES' sign(Σ_t w_t τ̂_t). The disjoint mean is then TIES' over all trimmed entries. s_t = 0 for all t
    gives TIES exactly.
    """
    tau = task_vectors(base, tensors)
    tau_hat = trim(tau, density)
    w = _weights_view(weight, tau)
    weighted = tau_hat * w
    sign = elect_sign(weighted)
    if any(s > 0 for s in slack):
        protected = torch.stack([t * top_fraction_mask(t, s) for t, s in zip(tau, slack)]) * w
        has_protected = (protected != 0).any(dim=0)
        sign = torch.where(has_protected, _sign(protected.sum(dim=0)), sign)
    return base + lambda_ * disjoint_merge(weighted, weight, sign, normalize)
