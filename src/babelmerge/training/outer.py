"""The outer step (pure math): BaM's merge generalised to an outer optimiser, as in DiLoCo.

Treat ``g = base - merged`` as an outer gradient (the negative of the merged update) and take one SGD
step on it: ``base <- base - lr * d`` where, with momentum ``mu`` and buffer ``buf`` (zero at the start),

    buf <- mu * buf + g
    d    = g + mu * buf   (Nesterov)   or   d = buf   (heavy ball)

With ``lr = 1`` and ``mu = 0`` this is ``base <- merged``: plain Branch-and-Merge. The functions here work
on tensors only; reading and writing model folders is in :mod:`babelmerge.training.weights`.
"""

from __future__ import annotations

import torch


def outer_step(
    base: torch.Tensor,
    merged: torch.Tensor,
    buf: torch.Tensor | None,
    *,
    lr: float,
    momentum: float = 0.0,
    nesterov: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One outer step for one tensor, in float32. Returns ``(new_base, new_buf)``.

    ``buf`` is the momentum buffer from the previous iteration (``None`` at the first one, meaning zero);
    ``new_buf`` is ``None`` when ``momentum`` is 0 (no state to keep).
    """
    base32 = base.to(torch.float32)
    grad = base32 - merged.to(torch.float32)
    if momentum == 0.0:
        return base32 - lr * grad, None
    new_buf = grad.clone() if buf is None else momentum * buf.to(torch.float32) + grad
    direction = grad + momentum * new_buf if nesterov else new_buf
    return base32 - lr * direction, new_buf
