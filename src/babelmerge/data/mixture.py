"""Drawing a mixture of sources: how many blocks of each source, and which ones.

The counting is pure arithmetic (:func:`allocate_blocks`, :func:`max_total_blocks`); the drawing
(:func:`draw_mixture`) is seeded numpy. Because every source is packed separately and all blocks have
the same length, a source's share of the tokens equals its share of the blocks.

Chat rows hold varying numbers of real tokens (the rest is padding), so their mixture counts real
tokens instead (:func:`token_targets`, :func:`pick_rows`, :func:`draw_rows`): each source gets
``ratio * budget`` real tokens, filled with whole rows in a seeded random order, stopping before the
target would be exceeded -- a source falls short of its target by less than one row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from babelmerge.errors import BabelmergeError

from .packed import PackedData


def allocate_blocks(n_total: int, ratios: Sequence[float]) -> list[int]:
    """Split ``n_total`` blocks proportionally to ``ratios`` (largest remainder; ties go to earlier sources).

    The counts sum to ``n_total`` and each differs from ``n_total * ratio`` by less than one block.
    """
    total = float(sum(ratios))
    exact = [n_total * r / total for r in ratios]
    counts = [math.floor(x) for x in exact]
    short = n_total - sum(counts)
    order = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:short]:
        counts[i] += 1
    return counts


def max_total_blocks(available: Sequence[int], ratios: Sequence[float]) -> int:
    """The largest number of blocks whose allocation at ``ratios`` fits in ``available`` blocks per source."""
    total = float(sum(ratios))
    n = math.floor(min(a / (r / total) for a, r in zip(available, ratios)) + 1e-9)
    while n > 0 and any(c > a for c, a in zip(allocate_blocks(n, ratios), available)):
        n -= 1
    return n


def plan_mixture(
    available: Sequence[int],
    ratios: Sequence[float],
    names: Sequence[str],
    block_size: int,
    token_budget: int | None,
) -> list[int]:
    """Blocks to draw per source so that shares follow ``ratios`` and the total is ``token_budget // block_size``
    (or as large as the data allows when ``token_budget`` is None).

    Raises :class:`BabelmergeError` when the budget exceeds what the data allows at these ratios.
    """
    n_max = max_total_blocks(available, ratios)
    if token_budget is None:
        n_total = n_max
    else:
        n_total = token_budget // block_size
        if n_total > n_max:
            total = float(sum(ratios))
            have = ", ".join(
                f"{name!r} has {a * block_size} packed tokens (ratio {r / total:.3g})"
                for name, a, r in zip(names, available, ratios)
            )
            limiting = names[int(np.argmin([a / r for a, r in zip(available, ratios)]))]
            raise BabelmergeError(
                f"token_budget {token_budget} exceeds the data at these ratios: {have}; "
                f"the maximum budget is {n_max * block_size} tokens (limited by {limiting!r})"
            )
    if n_total == 0:
        raise BabelmergeError(
            f"the sources {', '.join(map(repr, names))} give no block of {block_size} tokens at these ratios"
        )
    return allocate_blocks(n_total, ratios)


def draw_mixture(
    blocks: Sequence[np.ndarray],
    labels: Sequence[np.ndarray | None],
    counts: Sequence[int],
    names: Sequence[str],
    seed: int,
) -> PackedData:
    """Draw ``counts[i]`` blocks at random (without replacement) from source ``i`` and shuffle them together.

    Deterministic given ``seed``; each source's draw depends only on the seed and its position.
    """
    seeds = np.random.SeedSequence(seed).spawn(len(blocks) + 1)
    any_labels = any(lab is not None for lab in labels)
    ids_parts, lab_parts, src_parts = [], [], []
    for i, (blk, lab, n) in enumerate(zip(blocks, labels, counts)):
        if n > len(blk):
            raise ValueError(f"source {names[i]!r}: {n} blocks requested, {len(blk)} available")
        pick = np.sort(np.random.default_rng(seeds[i]).permutation(len(blk))[:n])
        ids_parts.append(np.asarray(blk[pick], dtype=np.int32))
        if any_labels:
            lab_parts.append(np.asarray((blk if lab is None else lab)[pick], dtype=np.int32))
        src_parts.append(np.full(n, i, dtype=np.int16))
    order = np.random.default_rng(seeds[-1]).permutation(sum(counts))
    return PackedData(
        input_ids=np.concatenate(ids_parts)[order],
        source=np.concatenate(src_parts)[order],
        source_names=list(names),
        labels=np.concatenate(lab_parts)[order] if any_labels else None,
    )


def token_targets(
    available: Sequence[int], ratios: Sequence[float], names: Sequence[str], token_budget: int | None
) -> list[int]:
    """Real tokens to draw per source: ``floor(ratio * token_budget)``, or without a budget the largest
    total the data allows at these ratios (the limiting source is used completely).

    Raises :class:`BabelmergeError` when a source has fewer tokens than its share of the budget.
    """
    total = float(sum(ratios))
    shares = [r / total for r in ratios]
    most = min(a / s for a, s in zip(available, shares))
    if token_budget is None:
        return [min(a, math.floor(most * s + 1e-6)) for a, s in zip(available, shares)]
    targets = [math.floor(token_budget * s) for s in shares]
    if any(t > a for t, a in zip(targets, available)):
        have = ", ".join(
            f"{name!r} has {a} tokens (ratio {s:.3g})" for name, a, s in zip(names, available, shares)
        )
        limiting = names[int(np.argmin([a / s for a, s in zip(available, shares)]))]
        raise BabelmergeError(
            f"token_budget {token_budget} exceeds the data at these ratios: {have}; "
            f"the maximum budget is {math.floor(most)} tokens (limited by {limiting!r})"
        )
    return targets


def pick_rows(row_tokens: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of rows drawn in random order while their real tokens stay within ``target``."""
    order = rng.permutation(len(row_tokens))
    cum = np.cumsum(np.asarray(row_tokens, dtype=np.int64)[order])
    return np.sort(order[: int(np.searchsorted(cum, target, side="right"))])


def draw_rows(
    parts: Sequence[PackedData], targets: Sequence[int], names: Sequence[str], seed: int
) -> PackedData:
    """Draw rows of each single-source ``parts[i]`` (which carry ``row_tokens``) up to ``targets[i]`` real
    tokens and shuffle them together; deterministic given ``seed``, like :func:`draw_mixture`."""
    seeds = np.random.SeedSequence(seed).spawn(len(parts) + 1)
    picked = []
    for i, (part, target) in enumerate(zip(parts, targets)):
        idx = pick_rows(part.row_tokens, target, np.random.default_rng(seeds[i]))
        if len(idx) == 0:
            raise BabelmergeError(
                f"source {names[i]!r}: its share of {target} tokens holds no whole row "
                f"(its rows have {int(np.min(part.row_tokens))}+ tokens); raise token_budget or its ratio"
            )
        picked.append(part.subset(idx))
    order = np.random.default_rng(seeds[-1]).permutation(sum(len(p) for p in picked))

    def cat(attr: str) -> np.ndarray | None:
        arrays = [getattr(p, attr) for p in picked]
        return None if arrays[0] is None else np.concatenate(arrays)[order]

    return PackedData(
        input_ids=cat("input_ids"),
        source=np.concatenate([np.full(len(p), i, dtype=np.int16) for i, p in enumerate(picked)])[order],
        source_names=list(names),
        labels=cat("labels"),
        position_ids=cat("position_ids"),
        row_tokens=cat("row_tokens"),
    )
