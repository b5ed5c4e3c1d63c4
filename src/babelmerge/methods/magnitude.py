"""Selecting the k largest entries of a tensor by magnitude, exactly, in linear time.

TIES keeps the top ``density`` fraction of each task vector by magnitude. A sort (``argsort``/``topk``) or a
quickselect (``kthvalue``) costs 20–30 ns per element on a CPU core, which makes the trim the most expensive
step of a TIES merge. Here the k-th largest magnitude is found by a radix selection instead: for IEEE floats
of one sign the bit patterns, read as integers, sort exactly like the values, so a histogram of the top bits
locates the bucket holding the k-th largest value, and a second histogram of the remaining bits inside that
bucket pins it down. Two counting passes, about 5 ns per element; the result is identical to ``kthvalue``'s.
"""

from __future__ import annotations

import sys

import torch

# Below this many entries a quickselect is cheaper than building 65536-bucket histograms.
_RADIX_MIN = 1 << 16

# Where the top 16 bits of a float32 sit when it is viewed as two int16 values.
_HIGH = 1 if sys.byteorder == "little" else 0


def _kth_largest_count(counts: torch.Tensor, k: int) -> tuple[int, int]:
    """For a histogram of bucket counts and 1 ≤ k ≤ counts.sum(): (bucket of the k-th largest, count above it)."""
    from_top = counts.flip(0).cumsum(0)  # from_top[j] = entries in buckets ≥ len - 1 - j
    j = int(torch.searchsorted(from_top, torch.tensor([k], dtype=from_top.dtype, device=from_top.device)))
    bucket = counts.numel() - 1 - j
    return bucket, int(from_top[j]) - int(counts[bucket])


def kth_largest_magnitude(x: torch.Tensor, k: int) -> tuple[torch.Tensor, int, int]:
    """The k-th largest |x| (1 ≤ k ≤ numel) as a 0-d tensor of x's dtype, with how many |x| are above and equal to it.

    Finite values, infinities and ±0 are handled; NaN must not occur (the engine refuses non-finite inputs).
    """
    n = x.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    return _kth_largest(x.detach().abs().flatten(), k)


def _kth_largest(mag: torch.Tensor, k: int) -> tuple[torch.Tensor, int, int]:
    """:func:`kth_largest_magnitude` given the flattened magnitudes ``mag``."""
    n = mag.numel()
    if n < _RADIX_MIN or mag.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        value = mag.kthvalue(n - k + 1).values  # small tensors, float64: a quickselect
        return value, int((mag > value).sum()), int((mag == value).sum())
    if mag.dtype == torch.float32:
        bits = mag.view(torch.int32)
        high = mag.view(torch.int16)[_HIGH::2].contiguous()  # top 16 bits of each |x|, sign clear: 0..32767
        bucket, above = _kth_largest_count(torch.bincount(high, minlength=1 << 15), k)
        in_bucket = (high == bucket).nonzero().squeeze(1)
        low = bits[in_bucket] & 0xFFFF  # the entries in that bucket: only their low 16 bits differ
        counts = torch.bincount(low, minlength=1 << 16)
        low_key, above_in_bucket = _kth_largest_count(counts, k - above)
        key = torch.tensor((bucket << 16) | low_key, dtype=torch.int32, device=mag.device)
        return key.view(torch.float32), above + above_in_bucket, int(counts[low_key])
    # 16-bit floats: one histogram of the whole bit pattern.
    counts = torch.bincount(mag.view(torch.int16), minlength=1 << 15)
    key, above = _kth_largest_count(counts, k)
    return torch.tensor(key, dtype=torch.int16, device=mag.device).view(mag.dtype), above, int(counts[key])


def _keep_top(mag: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest entries of the (contiguous) magnitudes ``mag``; ties in flat-index order."""
    threshold, above, equal = _kth_largest(mag.view(-1), k)
    keep = mag >= threshold
    if above + equal > k:  # keep only the first k − above of the entries tied at the threshold
        tied = (mag.view(-1) == threshold).nonzero().squeeze(1)
        keep.view(-1)[tied[k - above :]] = False
    return keep


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
    return _keep_top(x.detach().abs().contiguous(), k)


def keep_top_fraction_(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Zero all but the entries of :func:`top_fraction_mask` in place (TIES' trim of one task vector)."""
    k = int(fraction * x.numel())
    if k >= x.numel():
        return x
    if k <= 0:
        return x.zero_()
    return x.mul_(_keep_top(x.detach().abs().contiguous(), k))
