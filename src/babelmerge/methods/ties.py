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
from .magnitude import keep_top_fraction_, top_fraction_mask
from .task_arithmetic import add_to_base_, task_vectors

__all__ = ["ties", "ties_sv", "top_fraction_mask", "trim_", "elect_sign", "disjoint_merge", "ties_combine"]

SLACK = Param(
    "slack", 0.0, per_model=True, low=0.0, high=1.0, doc="fraction of τ_t protected in the election"
)


def fused(tensors: Sequence[torch.Tensor], **kwargs) -> torch.Tensor:
    """The compiled CPU kernel of ``ties``/``ties_sv`` (:mod:`.ties_kernel`), imported on first use."""
    from .ties_kernel import fused_ties

    return fused_ties(tensors, **kwargs)


def trim_(tau: list[torch.Tensor], density: Sequence[float]) -> list[torch.Tensor]:
    """τ̂_t, in place: each task vector with all but its top-``density_t`` fraction of entries set to zero."""
    for t, d in zip(tau, density):
        keep_top_fraction_(t, d)
    return tau


def weigh_(tau: list[torch.Tensor], weight: Sequence[float]) -> list[torch.Tensor]:
    """w_t τ_t for each task vector, in place."""
    for t, w in zip(tau, weight):
        if w != 1.0:
            t.mul_(w)
    return tau


def elect_sign(weighted: Sequence[torch.Tensor]) -> torch.Tensor:
    """γ = sign(Σ_t w_t τ̂_t) per entry as a boolean "γ = +1", given the w_t τ̂_t (a zero sum elects +)."""
    total = weighted[0].clone()
    for t in weighted[1:]:
        total.add_(t)
    return total >= 0


def disjoint_merge(
    weighted: Sequence[torch.Tensor], weight: Sequence[float], positive: torch.Tensor, normalize: bool
) -> torch.Tensor:
    """Σ_{t ∈ A} w_t τ̂_t / Σ_{t ∈ A} w_t per entry, A = models whose w_t τ̂_t has the elected sign.

    ``positive`` marks the entries whose elected sign is +. Zero entries never agree. Without ``normalize`` the
    sum is not divided; a zero divisor counts as 1 (entries where no model agrees are 0).

    Computed as two running sums, one over the positive and one over the negative entries of each w_t τ̂_t
    (and their weights), then picked per entry by the elected sign: no per-model agreement mask is stored.
    The tensors in ``weighted`` serve as scratch space and are overwritten.
    """
    pos_sum = torch.zeros_like(weighted[0])
    neg_sum = torch.zeros_like(weighted[0])
    pos_w = torch.zeros_like(weighted[0]) if normalize else None
    neg_w = torch.zeros_like(weighted[0]) if normalize else None
    for t, w in zip(weighted, weight):
        part = t.clamp(min=0)
        pos_sum.add_(part)
        neg_sum.add_(t.sub_(part))  # t − max(t, 0) = min(t, 0), in t's own storage
        if normalize:  # sign() is 1 on the positive part's non-zero entries, −1 on the negative part's
            pos_w.add_(part.sign_(), alpha=w)
            neg_w.sub_(t.sign_(), alpha=w)
    if normalize:  # a zero divisor counts as 1
        pos_sum.div_(pos_w.add_(pos_w == 0))
        neg_sum.div_(neg_w.add_(neg_w == 0))
    return torch.where(positive, pos_sum, neg_sum)


def ties_combine(
    base: torch.Tensor,
    tau_hat: list[torch.Tensor],
    weight: Sequence[float],
    lambda_: float,
    normalize: bool,
    positive: torch.Tensor | None = None,
) -> torch.Tensor:
    """θ_base + λ · disjoint_merge(w_t τ̂_t) with the elected sign (or the given one). Consumes ``tau_hat``."""
    weighted = weigh_(tau_hat, weight)
    if positive is None:
        positive = elect_sign(weighted)
    return add_to_base_(base, disjoint_merge(weighted, weight, positive, normalize), lambda_)


@register("ties", params=[WEIGHT, DENSITY, LAMBDA, normalize_param(True)], needs_base=True, kernel=fused)
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
    return ties_combine(base, trim_(task_vectors(base, tensors), density), weight, lambda_, normalize)


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
    kernel=fused,
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
    if not any(s > 0 for s in slack):
        return ties_combine(base, trim_(tau, density), weight, lambda_, normalize)
    protected = weigh_([t * top_fraction_mask(t, s) for t, s in zip(tau, slack)], weight)
    has_protected = torch.stack(protected).ne(0).any(dim=0)
    weighted = weigh_(trim_(tau, density), weight)
    positive = torch.where(has_protected, elect_sign(protected), elect_sign(weighted))
    return add_to_base_(base, disjoint_merge(weighted, weight, positive, normalize), lambda_)
