"""Packing tokens into fixed-length rows (pure numpy, no I/O).

- Text: :func:`pack_blocks` cuts one token stream into full blocks.
- Chat examples (``(input_ids, labels)`` pairs): :func:`truncate_examples` caps their length,
  then :func:`pad_examples` puts one example per row (right-padded), or :func:`pack_examples` bin-packs
  whole examples into rows with per-example ``position_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .packed import IGNORE_INDEX

Example = tuple[np.ndarray, np.ndarray]  # (input_ids, labels), int32, same length


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


def truncate_examples(examples: Sequence[Example], max_length: int) -> tuple[list[Example], int, int]:
    """Keep the first ``max_length`` tokens of every example.

    Returns ``(kept, n_truncated, n_dropped)``: ``n_truncated`` examples were longer than ``max_length``;
    ``n_dropped`` of those lost every labelled token (the prompt alone filled ``max_length``) and are
    left out of ``kept``, as they would train nothing.
    """
    kept, n_truncated, n_dropped = [], 0, 0
    for ids, labels in examples:
        if len(ids) > max_length:
            n_truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
            if not np.any(labels != IGNORE_INDEX):
                n_dropped += 1
                continue
        kept.append((ids, labels))
    return kept, n_truncated, n_dropped


@dataclass
class ExampleRows:
    """Examples laid out in rows of ``row_len`` tokens: ``input_ids``/``labels`` ``[n_rows, row_len]``,
    ``position_ids`` (packed rows only, else ``None``) and ``row_tokens`` (real tokens per row)."""

    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray | None
    row_tokens: np.ndarray


def pad_examples(examples: Sequence[Example], row_len: int, pad_id: int) -> ExampleRows:
    """One example per row, right-padded to ``row_len`` with ``pad_id`` (label -100)."""
    n = len(examples)
    ids = np.full((n, row_len), pad_id, dtype=np.int32)
    labels = np.full((n, row_len), IGNORE_INDEX, dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int32)
    for r, (e_ids, e_labels) in enumerate(examples):
        if len(e_ids) > row_len:
            raise ValueError(f"example {r} has {len(e_ids)} tokens, more than a row of {row_len}")
        ids[r, : len(e_ids)] = e_ids
        labels[r, : len(e_ids)] = e_labels
        lengths[r] = len(e_ids)
    return ExampleRows(ids, labels, None, lengths)


def bin_pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group items into bins of ``capacity`` by best-fit decreasing: longest first, each into the open bin
    it fills most tightly, else a new bin. Returns item indices per bin (bins in creation order, items
    in insertion order). Deterministic; ties keep the input order.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep input order
    n_open = np.zeros(capacity + 1, dtype=np.int64)  # n_open[s]: open bins with s free slots
    open_bins: dict[int, list[int]] = {}
    bins: list[list[int]] = []
    for i in order:
        need = int(lengths[i])
        if need > capacity:
            raise ValueError(f"item {i} of length {need} exceeds the bin capacity {capacity}")
        fits = np.flatnonzero(n_open[need:])
        if len(fits):
            free = need + int(fits[0])
            b = open_bins[free].pop()
            n_open[free] -= 1
        else:
            free, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        left = free - need
        if left > 0:
            open_bins.setdefault(left, []).append(b)
            n_open[left] += 1
    return bins


def pack_examples(examples: Sequence[Example], row_len: int, pad_id: int) -> ExampleRows:
    """Whole examples bin-packed into rows of ``row_len`` (never split across rows; see :func:`bin_pack`).

    Each example's ``position_ids`` run from 0; a row's padding tail (pad id, label -100) is a run of its
    own from 0, so transformers' packed-sequence mask keeps every example separate.
    """
    bins = bin_pack([len(e[0]) for e in examples], row_len)
    n = len(bins)
    ids = np.full((n, row_len), pad_id, dtype=np.int32)
    labels = np.full((n, row_len), IGNORE_INDEX, dtype=np.int32)
    positions = np.zeros((n, row_len), dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int32)
    ramp = np.arange(row_len, dtype=np.int32)
    for r, members in enumerate(bins):
        at = 0
        for i in members:
            e_ids, e_labels = examples[i]
            k = len(e_ids)
            ids[r, at : at + k] = e_ids
            labels[r, at : at + k] = e_labels
            positions[r, at : at + k] = ramp[:k]
            at += k
        positions[r, at:] = ramp[: row_len - at]
        lengths[r] = at
    return ExampleRows(ids, labels, positions, lengths)
