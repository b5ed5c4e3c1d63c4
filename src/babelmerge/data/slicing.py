"""Splitting packed data into the N equal, disjoint slices of Branch-and-Merge training.

Pure index arithmetic over ``PackedData.source``; no I/O.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .packed import PackedData


def slice_indices(
    source: np.ndarray, n_slices: int, *, mode: Literal["iid", "ordered"] = "iid", seed: int = 0
) -> list[np.ndarray]:
    """Block indices of each slice; see :func:`make_slices`."""
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    n_blocks = len(source)
    per_slice = n_blocks // n_slices
    if per_slice == 0:
        raise ValueError(f"cannot cut {n_blocks} blocks into {n_slices} non-empty slices")
    if mode == "ordered":
        order = np.argsort(source, kind="stable")[: per_slice * n_slices]
        return [order[k * per_slice : (k + 1) * per_slice] for k in range(n_slices)]
    if mode != "iid":
        raise ValueError(f"mode must be 'iid' or 'ordered', got {mode!r}")

    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_slices)]
    leftovers = []
    for s in np.unique(source):
        idx = rng.permutation(np.flatnonzero(source == s))
        q = len(idx) // n_slices
        for k in range(n_slices):
            parts[k].append(idx[k * q : (k + 1) * q])
        leftovers.append(idx[q * n_slices :])
    # Deal each source's few leftover blocks round-robin, continuing where the previous source stopped:
    # a source then differs by at most one block between slices, and slice sizes by at most one block
    # before the final trim to ``per_slice`` drops the last ``n_blocks % n_slices`` leftovers.
    rest = np.concatenate(leftovers)
    for j, block in enumerate(rest[: len(rest) - n_blocks % n_slices]):
        parts[j % n_slices].append(np.array([block]))
    return [rng.permutation(np.concatenate(p)) for p in parts]


def make_slices(
    data: PackedData, n_slices: int, *, mode: Literal["iid", "ordered"] = "iid", seed: int = 0
) -> list[PackedData]:
    """Cut ``data`` into ``n_slices`` disjoint slices of ``len(data) // n_slices`` blocks each.

    The ``len(data) % n_slices`` remainder blocks are dropped (deterministically given ``seed``).

    - ``"iid"``: stratified by source, so every slice has the mixture's source shares (each source's
      count differs by at most one block between slices); blocks are shuffled within a slice.
    - ``"ordered"``: non-i.i.d.; blocks sorted by source (source 0 first, original order within a
      source) and cut into consecutive runs, e.g. one source per slice when sources are equally big.
      The remainder is dropped from the end of the last source.
    """
    return [data.subset(idx) for idx in slice_indices(data.source, n_slices, mode=mode, seed=seed)]
