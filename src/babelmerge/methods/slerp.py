"""Spherical linear interpolation between two models (Shoemake 1985), per tensor."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import Param, register

COLINEAR_DOT = 0.9995


@register(
    "slerp",
    params=[Param("t", None, low=0.0, high=1.0, doc="interpolation position: 0 = first model, 1 = second")],
    needs_base=False,
    min_models=2,
    max_models=2,
)
def slerp(tensors: Sequence[torch.Tensor], *, t: float, eps: float = 1e-8) -> torch.Tensor:
    """θ = sin((1−t)Ω)/sin Ω · θ_0 + sin(tΩ)/sin Ω · θ_1, with cos Ω = ⟨θ_0, θ_1⟩ / (‖θ_0‖ ‖θ_1‖).

    The angle is measured between the two whole tensors (flattened). When they are nearly colinear
    (|cos Ω| > 0.9995) or either is (almost) zero, the formula is ill-conditioned and the result is the linear
    interpolation (1−t) θ_0 + t θ_1. t = 0 gives the first model, t = 1 the second.
    """
    v0, v1 = tensors
    if t == 0.0:
        return v0.clone()
    if t == 1.0:
        return v1.clone()
    n0, n1 = torch.linalg.vector_norm(v0), torch.linalg.vector_norm(v1)
    if n0 < eps or n1 < eps:
        return (1 - t) * v0 + t * v1
    dot = float(torch.sum(v0 * v1) / (n0 * n1))
    dot = max(-1.0, min(1.0, dot))
    if abs(dot) > COLINEAR_DOT:
        return (1 - t) * v0 + t * v1
    omega = math.acos(dot)
    s0 = math.sin((1 - t) * omega) / math.sin(omega)
    s1 = math.sin(t * omega) / math.sin(omega)
    return s0 * v0 + s1 * v1
