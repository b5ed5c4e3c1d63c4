"""Weight-space interpolation between a base model and an adapted one: a cheap post-hoc trade-off curve.

θ(α) = θ_base + α (θ_adapted − θ_base), i.e. task arithmetic with λ = α on one model. α = 0 is the base and
α = 1 the adapted model; intermediate α trade learning (target language) for forgetting (source language)
without retraining. Scoring several α turns one method's single point into a curve, which is how methods
should be compared: one is better only where its curve lies above the other's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ..methods.task_arithmetic import task_arithmetic


def parse_alphas(text: str) -> list[float]:
    """``"0,0.25,0.5"`` → ``[0.0, 0.25, 0.5]``."""
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise ValueError(f"--interpolate expects comma-separated numbers, got {text!r}") from None
    if not alphas:
        raise ValueError("--interpolate needs at least one value")
    return alphas


@torch.no_grad()
def interpolate_state(
    base: dict[str, torch.Tensor], adapted: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """θ(α) for every float tensor (computed in float32, returned in the adapted model's dtypes).

    α = 1 returns the adapted tensors themselves, so the curve's end is exactly the adapted model.
    """
    out = {}
    for name, theta in adapted.items():
        if alpha == 1.0 or not theta.is_floating_point():
            out[name] = theta
            continue
        merged = task_arithmetic([theta.float()], base=base[name].float(), weight=[1.0], lambda_=alpha)
        out[name] = merged.to(theta.dtype)
    return out


def interpolation_curve(
    model, base_state: dict[str, torch.Tensor], alphas: Sequence[float]
) -> Iterator[float]:
    """Load θ(α) into ``model`` for each α in turn (yielding α); restores the adapted weights at the end."""
    adapted = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        for alpha in alphas:
            model.load_state_dict(interpolate_state(base_state, adapted, alpha))
            yield alpha
    finally:
        model.load_state_dict(adapted)
