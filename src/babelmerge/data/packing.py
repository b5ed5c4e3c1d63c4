"""Packing a token stream into fixed-length blocks (pure numpy, no I/O)."""

from __future__ import annotations

import numpy as np


def pack_blocks(
    ids: np.ndarray, block_size: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Cut ``ids`` (1-D) into ``len(ids) // block_size`` rows of ``block_size`` tokens; drop the remainder.

    ``labels``, if given, is aligned with ``ids`` and cut the same way (prompt tokens stay -100).
    Returns int32 arrays ``[n_blocks, block_size]``.
    """
    if ids.ndim != 1:
        raise ValueError(f"expected a 1-D token stream, got shape {ids.shape}")
    if labels is not None and labels.shape != ids.shape:
        raise ValueError(f"labels shape {labels.shape} differs from ids shape {ids.shape}")
    n_blocks = len(ids) // block_size
    keep = n_blocks * block_size
    blocks = np.ascontiguousarray(ids[:keep], dtype=np.int32).reshape(n_blocks, block_size)
    if labels is None:
        return blocks, None
    return blocks, np.ascontiguousarray(labels[:keep], dtype=np.int32).reshape(n_blocks, block_size)
