"""TIES, TIES-SV and DARE-TIES as a fused, multi-threaded CPU kernel: the numbers of :mod:`.ties` and :mod:`.dare`,
a fraction of the passes.

:func:`.ties.ties` is the definition: a dozen whole-tensor torch operations, each streaming float32 copies of
the task vectors through memory (about 20 ns per task-vector entry in the 0.5B benchmark on 2 cores). This
module computes the same result, bit for bit, in two or three passes over the *stored* inputs (bfloat16 or
float32), each pass a compiled loop (numba) over cache-sized blocks, the tensor split into contiguous ranges, one
per thread:

1. τ_t = f32(θ_t) − f32(θ_base) and a histogram of the top 16 bits of |τ_t| per model. For non-negative IEEE
   floats the bit patterns, read as integers, order exactly like the values, so the histogram locates the
   bucket holding the k-th largest magnitude (k = ⌊d_t·n⌋; for TIES-SV also k = ⌊s_t·n⌋) — the radix selection
   of :mod:`.magnitude`.
2. A histogram of the low 16 bits of |τ_t| for the entries inside that bucket, per thread range: the exact
   k-th largest value, and how many entries equal to it each range holds. When more entries tie at the
   threshold than may be kept, the first k − (entries above) of them in flat-index order are kept, as in
   :func:`.magnitude.top_fraction_mask`; the per-range counts say how many of them each range takes.
   For tensors of 2^20 entries or more this pass is usually folded into the first: a sample of 64K entries
   says which few buckets hold the k-th largest value (± 6 standard deviations of its rank), and the first
   pass also keeps the |τ| of the entries in those buckets (a few per cent of them, appended branch-free to a
   list); the low-bits histogram is then taken over that list. A model whose every threshold got such a window
   takes no top-bits histogram in the first pass: the entries above each window are counted instead (a
   comparison where the histogram scatters increments), and the window's own entries say which of its buckets
   holds the threshold. Only when the threshold falls outside the window, or the list outgrows the room the
   sample asked for, does this second pass run, after a histogram pass for the models that took none
   (:func:`_choose_windows`; tested with samples that mislead both ways and with too little room).
3. Per block: the trim, weights, sign election (among protected entries for TIES-SV), disjoint mean, λ and the
   base, rounded once to the output dtype (round-to-nearest-even, as torch's cast).

DARE-TIES needs no thresholds: one pass in which each block's drop masks are hashed (:func:`.dare.keep_mask`'s
counter-based hash), then the election and sum of step 3.

τ_t is recomputed in every pass instead of being stored: one subtraction is cheaper than writing and re-reading
4 bytes per entry per model. Loops that load stored bits and compute with them as floats, or hash in 32 bits, do
so through tiny LLVM intrinsics (a bit cast, a 32-bit multiply and shift: numba has no scalar ``view`` and types
uint32 arithmetic as 64-bit), which lets one loop do what would otherwise take a loop per step. Every float
operation is the one the torch definition performs, in the same order and in float32 (no fused multiply-add, no
reassociation), which is what makes the results identical; the tests compare the two on ties, zeros, negative
weights, both normalisations and every output dtype.

The passes release the GIL (``nogil``), so that the engine's reader and writer threads go on while a kernel
runs. The loops compile on first use (about 20 s per combination of input dtype, output dtype and number of
models, then cached on disk by numba, beside this file or in ``NUMBA_CACHE_DIR``). This module is imported only
when a kernel is first called (numba takes a quarter of a second to import); without numba the engine runs the
torch definition instead.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Sequence

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .dare import drop_keys, keep_threshold


def _load_numba_numpy_support() -> None:
    """Import numba's numpy support (``numba.np.arraymath``) without its BLAS probe importing ``scipy.linalg``.

    The first compiled call loads that module, which checks once whether a BLAS is available by importing
    ``scipy.linalg.cython_blas``: with SciPy installed (``lm_eval`` pulls it in) 0.2–0.5 s of the ~1 s a fresh
    process takes to load these kernels, holding the GIL, on the critical path of every merge. None of the kernels
    here calls BLAS. The probe's import is refused while the module loads; its answer is then set to whether SciPy
    is installed — which is what the probe would have found — so that numba's ``np.dot`` in other code of the
    process behaves as before (its BLAS path imports SciPy when first compiled). Nothing is changed when either
    module was imported already.
    """
    probe = "scipy.linalg.cython_blas"
    if "numba.np.arraymath" in sys.modules or probe in sys.modules:
        return
    sys.modules[probe] = None  # an import of this name now raises ImportError at once
    try:
        import numba.np.arraymath as arraymath
    finally:
        del sys.modules[probe]
    arraymath._HAVE_BLAS = importlib.util.find_spec("scipy") is not None


_load_numba_numpy_support()

__all__ = ["fused_ties", "fused_dare_ties", "keep_mask"]

_HIGH_BINS = 1 << 15  # top 16 bits of |τ| with the sign bit clear
_LOW_BINS = 1 << 16
_SPARE = 64  # extra bins of the low-bits histogram that take the entries outside the bucket
_WINDOW_SHARE = 1 / 4  # largest share of the entries a sampled window may hold
_SAMPLE_MIN = 1 << 20  # tensors with at least this many entries guess the threshold's bucket from a sample
_SAMPLE_BLOCKS, _SAMPLE_LEN = 64, 1024  # the sample: this many runs of contiguous entries, evenly spread
_ABS = np.uint32(0x7FFFFFFF)

# Each pass is a plain compiled function over one contiguous range [lo, hi) of the flattened tensors, and a
# parallel loop that runs it on every thread's range (one range per thread).


@intrinsic
def _as_float32(typingctx, bits):
    """The float32 whose bit pattern is the uint32 ``bits``: a bit cast (numba has no scalar ``view``), so that a
    loop can load stored bits and compute with them as floats without a round trip through an array. (numba types
    shifts and ``~`` of uint32 as 64-bit: callers cast back to uint32 first.)"""
    if bits != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _float32_bits(typingctx, value):
    """The bit pattern of the float32 ``value``, as a uint32 (the inverse bit cast of :func:`_as_float32`)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@njit(cache=True, error_model="numpy", inline="always")
def _load(src, start, count, out_bits):
    """Stored values src[start:start+count] (bfloat16 or float32 bit patterns) as float32 bit patterns."""
    blk = src[start : start + count]  # a slice, not src[start + j]: numba then knows the index is in range
    if src.itemsize == 2:  # bfloat16 is the top half of a float32 (resolved at compile time)
        for j in range(count):
            out_bits[j] = np.uint32(blk[j]) << np.uint32(16)
    else:
        for j in range(count):
            out_bits[j] = np.uint32(blk[j])


@njit(cache=True, error_model="numpy", inline="always")
def _task_vector(src, base_f, start, count, tau_bits):
    """τ = f32(θ) − f32(θ_base) of one model on [start, start+count), as float32 bit patterns in ``tau_bits``.
    One loop from the stored bits (measured 25% faster than widening into the array, then subtracting)."""
    blk = src[start : start + count]
    t = tau_bits.view(np.float32)
    if src.itemsize == 2:  # bfloat16 is the top half of a float32 (resolved at compile time)
        for j in range(count):
            t[j] = _as_float32(np.uint32(np.uint32(blk[j]) << np.uint32(16))) - base_f[j]
    else:
        for j in range(count):
            t[j] = _as_float32(np.uint32(blk[j])) - base_f[j]


@njit(cache=True)
def _bounds(n, parts, p):
    step = (n + parts - 1) // parts
    return min(n, p * step), min(n, (p + 1) * step)


@njit(cache=True, error_model="numpy", inline="always")
def _room(keys, q, count, e):
    """The next ``e`` slots of window q's keys, which the append loops fill through this block-sized slice with a
    32-bit count (in a standalone loop up to 1.6× faster than indexing the whole row with the int64 count; not
    faster in every sitting)."""
    start = count[q]
    row = keys[q]
    return row[start : start + e]


@njit(cache=True, error_model="numpy")
def _high_range(
    models, base, lo, hi, block, hist, need_hist, win_model, win_first, win_span, keys, count, above
):
    """For the models t with need_hist[t]: hist[t, b] += how many |τ_t| on [lo, hi) have top 16 bits b. For each
    window q (of model win_model[q]): a − win_first[q] appended to keys[q] for the |τ| bit patterns a with
    0 ≤ a − win_first[q] ≤ win_span[q], of which count[q] are filled (−1 once they no longer fit: that window is
    then left to the fallback), and above[q] += how many lie above the window (except for a model's first window
    when the model takes the histogram, which says as much). ``keys`` is uint16 when every span is below 2^16,
    else uint32."""
    base_bits = np.empty(block, dtype=np.uint32)
    tau = np.empty(block, dtype=np.uint32)
    cap = keys.shape[1]
    for s in range(lo, hi, block):
        e = min(hi, s + block) - s
        _load(base, s, e, base_bits)
        base_f = base_bits.view(np.float32)
        for q in range(win_model.shape[0]):
            if count[q] + e > cap:  # no room for a whole block (each entry is written, then kept or not)
                count[q] = -1
        for t in range(len(models)):
            _task_vector(models[t], base_f, s, e, tau)
            h = hist[t]
            # A model's windows (TIES-SV: the density's and the slack's) are filled one loop each, the first in the
            # histogram's loop when the model takes one. Every entry is written at the end of the keys and the end
            # advanced only for those in the window: no branch, which would mispredict. The window loop is written
            # out in both loops on purpose: the previous per-bucket counting, as one inline helper, made the first
            # pass 7× slower (not re-tried for the append).
            w0 = -1
            for q in range(win_model.shape[0]):
                if win_model[q] == t and count[q] >= 0:
                    w0 = q
                    break
            if w0 < 0:
                if need_hist[t]:
                    for j in range(e):
                        h[(tau[j] & _ABS) >> np.uint32(16)] += 1
                continue
            if need_hist[t]:
                first, span, dst = (
                    np.uint32(win_first[w0]),
                    np.uint32(win_span[w0]),
                    _room(keys, w0, count, e),
                )
                k = np.uint32(0)
                for j in range(e):
                    a = tau[j] & _ABS
                    h[a >> np.uint32(16)] += 1
                    dst[k] = a - first  # below the window this wraps around past span: one test, both ends
                    k += np.uint32(a - first <= span)
                count[w0] += k
                w0 += 1
            # The entries above each window are counted: with the window's own entries, that says whether the
            # threshold is inside it when the model takes no histogram (every threshold of it has a window).
            for q in range(w0, win_model.shape[0]):
                if win_model[q] != t or count[q] < 0:
                    continue
                first, span, dst = np.uint32(win_first[q]), np.uint32(win_span[q]), _room(keys, q, count, e)
                top, k, up = first + span, np.uint32(0), np.int32(0)
                for j in range(e):
                    a = tau[j] & _ABS
                    dst[k] = a - first
                    k += np.uint32(a - first <= span)
                for j in range(e):
                    up += np.int32(tau[j] & _ABS > top)
                count[q] += k
                above[q] += up


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def _pass_high(models, base, parts, block, need_hist, win_model, win_first, win_span, keys):
    """Histograms of the top 16 bits of |τ_t| for the models with need_hist[t], per thread range and model:
    (parts, T, 2^15), zero for the others; and, into ``keys`` (parts, Q, room), per thread range and window the
    |τ| bit patterns inside the window minus its first, of which count (parts, Q) are filled (−1: more than the
    room), and how many lie above the window, above (parts, Q), for windows of models without a histogram."""
    hist = np.zeros((parts, len(models), _HIGH_BINS), dtype=np.int32)
    count = np.zeros((parts, win_model.shape[0]), dtype=np.int64)
    above = np.zeros((parts, win_model.shape[0]), dtype=np.int64)
    for p in prange(parts):
        lo, hi = _bounds(base.shape[0], parts, p)
        _high_range(
            models, base, lo, hi, block, hist[p], need_hist, win_model, win_first, win_span, keys[p], count[p],
            above[p],
        )  # fmt: skip
    return hist, count, above


@njit(cache=True, nogil=True, error_model="numpy")
def _sample_high(models, base, runs, length):
    """The top-16-bits histogram of |τ_t| (T, 2^15) over ``runs`` runs of ``length`` entries, evenly spread."""
    n = base.shape[0]
    hist = np.zeros((len(models), _HIGH_BINS), dtype=np.int32)
    every = np.ones(len(models), dtype=np.bool_)
    none = np.zeros(0, dtype=np.int64)
    keys = np.zeros((0, 1), dtype=np.uint32)
    for r in range(runs):
        s = (n - length) * r // max(1, runs - 1)
        _high_range(models, base, s, s + length, length, hist, every, none, none, none, keys, none, none)
    return hist


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def _window_high(keys, count, q, buckets):
    """Histogram of the top-bits buckets of window q's |τ| bit patterns, counted from the window's first bucket
    (keys >> 16: windows start at a bucket), per thread range: (parts, ``buckets``)."""
    parts = keys.shape[0]
    hist = np.zeros((parts, buckets), dtype=np.int64)
    for p in prange(parts):
        buf, h = keys[p, q], hist[p]
        for i in range(count[p, q]):
            h[np.uint32(buf[i]) >> np.uint32(16)] += 1
    return hist


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def _window_low(keys, count, q, first, bucket):
    """Histogram of the low 16 bits of window q's |τ| bit patterns (keys + ``first``) in top-bits bucket
    ``bucket``, per thread range: (parts, 2^16)."""
    parts = keys.shape[0]
    hist = np.zeros((parts, _LOW_BINS), dtype=np.int32)
    b, f = np.uint32(bucket), np.uint32(first)
    for p in prange(parts):
        buf, h = keys[p, q], hist[p]
        for i in range(count[p, q]):
            a = np.uint32(buf[i]) + f
            if a >> np.uint32(16) == b:
                h[a & np.uint32(0xFFFF)] += 1
    return hist


@njit(cache=True)
def _kth_bucket(counts, k):
    """For a histogram of bucket counts and 1 ≤ k ≤ counts.sum(): (bucket of the k-th largest, count above it),
    as :func:`.magnitude._kth_largest_count`."""
    above = 0
    for b in range(counts.shape[0] - 1, -1, -1):
        c = counts[b]
        if above + c >= k:
            return b, above
        above += c
    return 0, above


@njit(cache=True, error_model="numpy")
def _low_range(models, base, lo, hi, block, target_model, target_bucket, hist):
    """hist[q, b] += how many |τ| of model target_model[q] on [lo, hi) have top bits target_bucket[q], low bits b."""
    base_bits = np.empty(block, dtype=np.uint32)
    tau = np.empty(block, dtype=np.uint32)
    for s in range(lo, hi, block):
        e = min(hi, s + block) - s
        _load(base, s, e, base_bits)
        base_f = base_bits.view(np.float32)
        for t in range(len(models)):
            _task_vector(models[t], base_f, s, e, tau)
            for q in range(target_model.shape[0]):
                if target_model[q] != t:
                    continue
                bucket = np.uint32(target_bucket[q])
                h = hist[q]
                # Entries in the bucket with low bits 0 (most of them when τ comes from bfloat16 weights) are
                # counted in a vectorised loop: incremented one by one, the same bin would make each increment
                # wait for the previous one. The others go to their bin, and entries outside the bucket to one
                # of _SPARE bins past the end (in turn, for the same reason); neither needs a branch, which
                # would mispredict.
                zeros = np.int32(0)
                for j in range(e):
                    zeros += np.int32(tau[j] & _ABS == bucket << np.uint32(16))
                h[0] += zeros
                for j in range(e):
                    a = tau[j] & _ABS
                    low = a & np.uint32(0xFFFF)
                    spare = np.uint32(_LOW_BINS) + (np.uint32(j) & np.uint32(_SPARE - 1))
                    h[low if (a >> np.uint32(16)) == bucket and low != np.uint32(0) else spare] += 1


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def _pass_low(models, base, parts, block, target_model, target_bucket):
    """Histogram of the low 16 bits of |τ| inside one top-bits bucket per target: (parts, J, 2^16)."""
    hist = np.zeros((parts, target_model.shape[0], _LOW_BINS + _SPARE), dtype=np.int32)
    for p in prange(parts):
        lo, hi = _bounds(base.shape[0], parts, p)
        _low_range(models, base, lo, hi, block, target_model, target_bucket, hist[p])
    return hist


@njit(cache=True, error_model="numpy", inline="always")
def _trim_weigh(tau_f, tau, e, key, allowed, w, out):
    """out[:e] = w·τ where |τ| (the bit patterns ``tau`` & 0x7FFFFFFF) is above ``key``, or equal to it and among
    the first ``allowed`` such entries (``allowed`` < 0: all of them); 0 elsewhere. Returns what is left of
    ``allowed``.

    Only the one block per range in which the allowance runs out needs an entry-by-entry loop; every other
    block keeps all or none of its tied entries in one vectorised loop.
    """
    zero = np.float32(0.0)
    if allowed != 0:
        tied = np.int32(0)  # 32-bit count: the loop vectorises twice as wide as with int64
        if allowed > 0:
            for j in range(e):
                tied += np.int32(tau[j] & _ABS == key)
        if allowed < 0 or tied <= allowed:
            for j in range(e):
                out[j] = tau_f[j] * w if tau[j] & _ABS >= key else zero
            return allowed if allowed < 0 else allowed - tied
    for j in range(e):
        out[j] = tau_f[j] * w if tau[j] & _ABS > key else zero
    if allowed > 0:
        for j in range(e):
            if tau[j] & _ABS == key and allowed > 0:
                out[j] = tau_f[j] * w
                allowed -= 1
    return allowed


_U32 = np.uint64(0xFFFFFFFF)


def _uint32_op(name: str, doc: str):
    """An intrinsic applying the LLVM instruction ``name`` (an llvmlite ``IRBuilder`` method) to two uint32, in
    32 bits: numba types the product and the shifts of uint32 as 64-bit, and such loops do not vectorise."""

    def typer(typingctx, a, b):
        if a != types.uint32 or b != types.uint32:
            return None

        def codegen(context, builder, signature, args):
            return getattr(builder, name)(*args)

        return types.uint32(types.uint32, types.uint32), codegen

    typer.__name__, typer.__doc__ = f"_{name}32", doc
    return intrinsic(typer)


_mul32 = _uint32_op("mul", "a·b mod 2^32 of two uint32.")
_shr32 = _uint32_op("lshr", "a >> k of two uint32 (logical shift).")


@njit(cache=True, error_model="numpy", inline="always")
def _mix32(x):
    """:func:`.dare.mix32` of one uint32, in 32-bit operations only, so that a loop of it vectorises."""
    a = np.uint32(x ^ _shr32(x, np.uint32(16)))
    b = _mul32(a, np.uint32(0x21F0AAAD))
    c = np.uint32(b ^ _shr32(b, np.uint32(15)))
    d = _mul32(c, np.uint32(0x735A2D97))
    return np.uint32(d ^ _shr32(d, np.uint32(15)))


@njit(cache=True, error_model="numpy", inline="always")
def _draws(start, e, k0, k1, u):
    """u[:e] = DARE's 32-bit draws of the entries start … start + e − 1 (:func:`.dare.keep_mask`'s hash), in one
    loop (measured a third faster than one loop per step of the hash)."""
    if start >> 32 == (start + e - 1) >> 32:  # the high word of the index is the same for the whole block
        high = np.uint32(np.uint32(start >> 32) ^ k1)
        for j in range(e):
            u[j] = _mix32(np.uint32(_mix32(np.uint32(np.uint32((start + j) & 0xFFFFFFFF) ^ k0)) ^ high))
    else:
        for j in range(e):
            i = start + j
            first = _mix32(np.uint32(np.uint32(i & 0xFFFFFFFF) ^ k0))
            u[j] = _mix32(np.uint32(first ^ np.uint32(np.uint32(i >> 32) ^ k1)))


@njit(cache=True, error_model="numpy", inline="always")
def _drop_weigh(tau_f, start, e, drop, scale, w, u, out):
    """out[:e] = (τ / scale)·w where DARE keeps entry start + j (:func:`.dare.keep_mask`, keys and threshold in
    ``drop`` = (k₀, k₁, ⌊d·2^32⌋)), 0 elsewhere. ``u``: uint32 scratch."""
    zero = np.float32(0.0)
    threshold = drop[2]
    _draws(start, e, np.uint32(drop[0]), np.uint32(drop[1]), u)
    if threshold > _U32:  # density 1: every entry kept
        for j in range(e):
            out[j] = (tau_f[j] / scale) * w
    else:
        t32 = np.uint32(threshold)
        for j in range(e):
            out[j] = (tau_f[j] / scale) * w if u[j] < t32 else zero


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def _pass_keep_mask(k0, k1, threshold, parts, block, out):
    """out[i] = DARE's draw of entry i < threshold (a uint32 below 2^32), for every i: :func:`.dare.keep_mask`."""
    n = out.shape[0]
    t32 = np.uint32(threshold)
    for p in prange(parts):
        lo, hi = _bounds(n, parts, p)
        u = np.empty(block, dtype=np.uint32)
        for s in range(lo, hi, block):
            e = min(hi, s + block) - s
            _draws(s, e, np.uint32(k0), np.uint32(k1), u)
            dst = out[s : s + e]
            for j in range(e):
                dst[j] = u[j] < t32


def keep_mask(n: int, key: tuple[int, int], threshold: int, block: int = 4096) -> torch.Tensor:
    """:func:`.dare.keep_mask` of n entries (flat) with keys ``key`` and a threshold below 2^32, multi-threaded."""
    out = torch.empty(n, dtype=torch.bool)
    _pass_keep_mask(key[0], key[1], threshold, _parts(n), block, out.numpy())
    return out


@njit(cache=True, error_model="numpy")
def _combine_range(
    models, base, out, lo, hi, block, keep_key, keep_left, protect_key, protect_left, drop, scale, weight,
    lambda_, normalize, use_slack, use_drop,
):  # fmt: skip
    """The merged values on [lo, hi) into ``out`` (see :func:`_pass_combine`); consumes keep_left/protect_left."""
    n_models = len(models)
    lam = np.float32(lambda_)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    base_bits = np.empty(block, dtype=np.uint32)
    tau = np.empty(block, dtype=np.uint32)
    v = np.empty(block, dtype=np.float32)
    pv = np.empty(block, dtype=np.float32)
    total = np.empty(block, dtype=np.float32)
    prot_total = np.empty(block, dtype=np.float32)
    prot_count = np.empty(block, dtype=np.int32)
    pos_sum = np.empty(block, dtype=np.float32)
    neg_sum = np.empty(block, dtype=np.float32)
    pos_w = np.empty(block, dtype=np.float32)
    neg_w = np.empty(block, dtype=np.float32)
    bits = np.empty(block, dtype=np.uint32)  # DARE's hashes
    tau_f = tau.view(np.float32)
    for s in range(lo, hi, block):
        e = min(hi, s + block) - s
        _load(base, s, e, base_bits)
        base_f = base_bits.view(np.float32)
        if use_slack:
            for j in range(e):
                prot_total[j] = zero
                prot_count[j] = 0
        for t in range(n_models):
            _task_vector(models[t], base_f, s, e, tau)
            w = np.float32(weight[t])
            if use_drop:
                _drop_weigh(tau_f, s, e, drop[t], np.float32(scale[t]), w, bits, v)
            else:
                keep_left[t] = _trim_weigh(tau_f, tau, e, keep_key[t], keep_left[t], w, v)
            if use_slack:
                protect_left[t] = _trim_weigh(tau_f, tau, e, protect_key[t], protect_left[t], w, pv)
                for j in range(e):
                    prot_total[j] = prot_total[j] + pv[j]
                for j in range(e):
                    prot_count[j] += pv[j] != zero
            # The election's sums start at the first model's values (no pass filling them with zeros first), as
            # torch's sum does. Two loops of two sums each: one loop writing all four does not vectorise (too
            # many arrays that might overlap for LLVM's runtime checks).
            if t == 0:
                for j in range(e):
                    total[j] = v[j]
                for j in range(e):
                    x = v[j]
                    pos_sum[j] = x if x > zero else zero
                    pos_w[j] = w if x > zero else zero
                for j in range(e):
                    x = v[j]
                    neg_sum[j] = x if x < zero else zero
                    neg_w[j] = w if x < zero else zero
                continue
            for j in range(e):
                total[j] = total[j] + v[j]
            for j in range(e):
                x = v[j]
                pos_sum[j] = pos_sum[j] + (x if x > zero else zero)
                pos_w[j] = pos_w[j] + (w if x > zero else zero)
            for j in range(e):
                x = v[j]
                neg_sum[j] = neg_sum[j] + (x if x < zero else zero)
                neg_w[j] = neg_w[j] + (w if x < zero else zero)
        if use_slack:  # the election among the protected values wherever there are some
            for j in range(e):
                if prot_count[j] > 0:
                    total[j] = prot_total[j]
        if normalize:  # a zero weight sum divides by 1
            for j in range(e):
                pos_sum[j] = pos_sum[j] / (pos_w[j] if pos_w[j] != zero else one)
                neg_sum[j] = neg_sum[j] / (neg_w[j] if neg_w[j] != zero else one)
        # The elected side, picked bit by bit (written as a float select, this loop compiled to a branch that
        # mispredicts on half the entries: the whole kernel 3× slower), then λ, the base and the rounding, in one
        # loop. λ·x + θ_base with λ = 1 is x + θ_base exactly.
        pos_bits, neg_bits = pos_sum.view(np.uint32), neg_sum.view(np.uint32)
        dst = out[s : s + e]
        for j in range(e):
            pick = np.uint32(0) - np.uint32(total[j] >= zero)  # all ones where the elected sign is +
            elected = np.uint32((pos_bits[j] & pick) | (neg_bits[j] & ~pick))
            merged = _as_float32(elected) * lam + base_f[j]
            b = _float32_bits(merged)
            if out.itemsize == 2:  # bfloat16: round to nearest even, as torch's float32 → bfloat16 cast
                dst[j] = (b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            else:
                dst[j] = b


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def _pass_combine(
    models, base, out, parts, block, keep_key, keep_ties, protect_key, protect_ties, drop, scale, weight,
    lambda_, normalize, use_slack, use_drop,
):  # fmt: skip
    """θ_base + λ · disjoint mean of the trimmed, weighted task vectors under the elected sign, into ``out``.

    keep_key[t] / protect_key[t]: the |τ_t| bit pattern of the density / slack threshold (entries above it
    are kept / protected; 0xFFFFFFFF: none). keep_ties[p, t] / protect_ties[p, t]: how many of the entries
    equal to that threshold thread range p takes, the first ones in index order (-1: all of them). ``out``
    holds bfloat16 (2-byte) or float32 (4-byte) bit patterns. With ``use_drop`` (DARE-TIES) the trim is
    replaced by DARE's drop: drop[t] = (k₀, k₁, ⌊d_t·2^32⌋) and the divisor scale[t] = d_t (or 1) per model.
    """
    for p in prange(parts):
        lo, hi = _bounds(base.shape[0], parts, p)
        _combine_range(
            models, base, out, lo, hi, block, keep_key, keep_ties[p].copy(), protect_key,
            protect_ties[p].copy(), drop, scale, weight, lambda_, normalize, use_slack, use_drop,
        )  # fmt: skip


def _parts(n: int) -> int:
    """How many contiguous ranges a tensor of n entries is split into: one per thread (numba's scheduling is
    static; measured: handing out smaller ranges one at a time with ``parallel_chunksize(1)`` is 3–9× slower),
    more only to keep every range under 2^30 entries (int32 counts)."""
    return max(1, min(numba.get_num_threads(), n >> 16), -(-n // (1 << 30)))


def _bits(x: torch.Tensor) -> np.ndarray:
    """A flat view of a bfloat16 (as uint16) or float32 (as uint32) tensor's bit patterns, sharing its memory."""
    flat = x.reshape(-1)
    return flat.view(torch.uint16 if x.dtype == torch.bfloat16 else torch.uint32).numpy()


NONE = np.uint32(0xFFFFFFFF)  # a threshold key no |τ| can exceed (largest finite |τ| is 0x7F7FFFFF)


def fused_ties(
    tensors: Sequence[torch.Tensor],
    *,
    base: torch.Tensor,
    weight: Sequence[float],
    density: Sequence[float],
    slack: Sequence[float] | None = None,
    lambda_: float = 1.0,
    normalize: bool = True,
    out_dtype: torch.dtype = torch.float32,
    parts: int | None = None,
    block: int = 1024,
    window: bool | None = None,
) -> torch.Tensor:
    """:func:`.ties.ties` (or :func:`.ties.ties_sv` with ``slack``) computed in float32 by the fused kernel.

    The inputs stay in their stored dtype (bfloat16 or float32; others, or a mix, are cast to float32 first) and
    are read two to four times instead of being copied (twice when the sampled windows hold the thresholds); the
    result is returned in ``out_dtype``, rounded once. Equal, element for element, to the torch definition
    followed by ``.to(out_dtype)``. ``parts``: how many contiguous
    ranges the threads take (default one per numba thread); ``block``: entries per inner block; ``window``:
    whether the thresholds' buckets are guessed from a sample (default: for tensors of 2^20 entries or more). None
    of them changes the result.
    """
    base_np, models = _inputs(base, tensors)
    n = base_np.shape[0]
    n_models = len(models)
    parts = parts or _parts(n)
    use_slack = slack is not None and any(s > 0 for s in slack)

    # Targets: one threshold per model for the density, and one for the slack when TIES-SV protects entries.
    fractions = list(density) + (list(slack) if use_slack else [])
    target_model = np.array([i % n_models for i in range(len(fractions))], dtype=np.int64)
    keys = np.full(len(fractions), NONE, dtype=np.uint32)
    allow = np.full((parts, len(fractions)), -1, dtype=np.int64)  # -1: every entry equal to the key
    search: list[tuple[int, int]] = []  # (target, k) needing the histograms
    for q, f in enumerate(fractions):
        k = int(f * n)
        if k >= n:
            keys[q] = 0  # keep everything: every |τ| is ≥ 0 and all ties allowed
        elif k <= 0:
            keys[q] = NONE
            allow[:, q] = 0
        else:
            search.append((q, k))
    if search:
        sampled = window if window is not None else n >= _SAMPLE_MIN
        win_q, (win_model, win_first, win_span), recorded = _choose_windows(
            models, base_np, search, target_model, sampled, parts, block
        )
        # A model whose every threshold has a window takes no top-bits histogram: the entries above each window
        # are counted instead, and the window's own entries say which of its buckets holds the threshold.
        windowed = set(win_q)
        need_hist = np.array(
            [any(target_model[q] == t and q not in windowed for q, _ in search) for t in range(n_models)]
        )
        high_parts, count, above = _pass_high(
            models, base_np, parts, block, need_hist, win_model, win_first, win_span, recorded
        )
        high = high_parts.sum(axis=0)
        k_of = dict(search)
        found = {}  # target → (bucket of the k-th largest |τ|, how many lie in the buckets above it)
        low_parts = {}  # target → (parts, 2^16): per range, the low 16 bits of |τ| in the threshold's bucket
        for i, q in enumerate(win_q):
            if (count[:, i] < 0).any():  # the window outgrew its room in some range
                continue
            first_bucket, last_bucket = win_first[i] >> 16, (win_first[i] + win_span[i]) >> 16
            if need_hist[target_model[q]]:
                bucket, before = _kth_bucket(high[target_model[q]], k_of[q])
                if not first_bucket <= bucket <= last_bucket:
                    continue
            else:
                up, inside = int(above[:, i].sum()), int(count[:, i].sum())
                if not up < k_of[q] <= up + inside:
                    continue
                per_bucket = _window_high(recorded, count, i, last_bucket - first_bucket + 1).sum(axis=0)
                offset, before = _kth_bucket(per_bucket, k_of[q] - up)
                bucket, before = first_bucket + offset, up + before
            found[q] = bucket, before
            low_parts[q] = _window_low(recorded, count, i, win_first[i], bucket)
        del recorded
        missed = [q for q, _ in search if q not in low_parts]
        if missed:  # no window, or the sample misled: a histogram (if not taken yet), then the low-bits pass
            lacking = np.array([not need_hist[t] and t in target_model[missed] for t in range(n_models)])
            if lacking.any():
                none, no_keys = np.zeros(0, dtype=np.int64), np.zeros((parts, 0, 1), dtype=np.uint32)
                extra = _pass_high(models, base_np, parts, block, lacking, none, none, none, no_keys)[0].sum(
                    axis=0
                )
                high[lacking] = extra[lacking]
            found.update({q: _kth_bucket(high[target_model[q]], k_of[q]) for q in missed})
            buckets = np.array(
                [found[q][0] if q in missed else 0 for q in range(len(fractions))], dtype=np.int64
            )
            wanted = np.array([target_model[q] if q in missed else -1 for q in range(len(fractions))])
            second = _pass_low(models, base_np, parts, block, wanted, buckets)
            low_parts.update({q: second[:, q, :_LOW_BINS] for q in missed})  # the spare bins dropped
        for q, k in search:
            bucket, above = found[q]
            low = low_parts[q].sum(axis=0)
            low_key, above_low = _kth_bucket(low, k - above)
            keys[q] = (bucket << 16) | low_key
            equal, taken = int(low[low_key]), k - above - above_low
            # Some of the entries tied at the threshold must be dropped (ties at 0 are moot: they add nothing):
            # the per-range low histograms count each range's tied entries, taken in range order.
            if taken < equal and keys[q] != 0:
                per_part = low_parts[q][:, low_key]
                before = np.concatenate([[0], np.cumsum(per_part)[:-1]])
                share = np.clip(taken - before, 0, per_part)
                allow[:, q] = np.where(share == per_part, -1, share)  # −1: all of the range's tied entries
    return _combine(
        models, base_np, tensors[0].shape, out_dtype, parts, block, keys[:n_models], allow[:, :n_models],
        keys[n_models:] if use_slack else keys[:n_models], allow[:, n_models:] if use_slack else allow[:, :n_models],
        None, None, weight, lambda_, normalize, use_slack,
    )  # fmt: skip


def _choose_windows(
    models: tuple[np.ndarray, ...],
    base: np.ndarray,
    search: list[tuple[int, int]],
    target_model: np.ndarray,
    sampled: bool,
    parts: int,
    block: int,
) -> tuple[list[int], tuple[np.ndarray, ...], np.ndarray]:
    """Which |τ| the first pass also keeps, from a sample: for each target (q, k) of ``search``, the top-bits
    buckets from the one holding the sample's (k + 6σ)-th largest |τ| to the one holding its (k − 6σ)-th (σ: the
    rank's standard deviation), if at most a quarter of the sample lies in them.

    Returns the targets that got a window, the window arrays of :func:`_pass_high` (model, first bit pattern,
    span) and its (unfilled) keys: per thread range 1.5 times the largest share the sample saw, plus a margin;
    uint16 when every window is a single bucket. When the k-th largest |τ| of the whole tensor falls outside its
    window, or a range's window entries outgrow the room, the second pass finds it: the sample decides how fast
    the result comes, never what it is.
    """
    chosen: list[tuple[int, int, int, float]] = []  # (target, bottom bucket, top bucket, sample share)
    n = base.shape[0]
    length = min(_SAMPLE_LEN, n // _SAMPLE_BLOCKS)
    if sampled and length > 0:
        sample = _sample_high(models, base, _SAMPLE_BLOCKS, length)
        m = _SAMPLE_BLOCKS * length
        for q, k in search:
            counts = sample[target_model[q]]
            f = k / n
            spread = 6 * math.sqrt(f * (1 - f) * m) + 8
            top = _kth_bucket(counts, max(1, math.floor(f * m - spread)))[0]
            bottom = _kth_bucket(counts, min(m, math.ceil(f * m + spread)))[0]
            share = int(counts[bottom : top + 1].sum()) / m
            if share <= _WINDOW_SHARE:
                chosen.append((q, bottom, top, share))
    widest = max((c[3] for c in chosen), default=0.0)
    room = int(-(-n // parts) * min(1.0, 1.5 * widest + 0.02)) + block if chosen else 0
    narrow = all(c[1] == c[2] for c in chosen)
    keys = np.empty((parts, len(chosen), room), dtype=np.uint16 if narrow else np.uint32)  # touched as filled
    return (
        [c[0] for c in chosen],
        (
            np.array([target_model[c[0]] for c in chosen], dtype=np.int64),
            np.array([c[1] << 16 for c in chosen], dtype=np.int64),
            np.array([((c[2] - c[1]) << 16) | 0xFFFF for c in chosen], dtype=np.int64),
        ),
        keys,
    )


def fused_dare_ties(
    tensors: Sequence[torch.Tensor],
    *,
    base: torch.Tensor,
    weight: Sequence[float],
    density: Sequence[float],
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    generator: torch.Generator | None = None,
    out_dtype: torch.dtype = torch.float32,
    parts: int | None = None,
    block: int = 1024,
) -> torch.Tensor:
    """:func:`.dare.dare_ties` computed in float32 in one pass: the drop masks are hashed per block (the keys
    drawn from ``generator`` exactly as :func:`.dare.dare_drop` draws them), then TIES' election and disjoint
    sum. Equal, element for element, to the torch definition followed by ``.to(out_dtype)``."""
    base_np, models = _inputs(base, tensors)
    n_models = len(models)
    drop = np.empty((n_models, 3), dtype=np.uint64)
    scale = np.ones(n_models, dtype=np.float64)
    for t, (d, key) in enumerate(zip(density, drop_keys(n_models, generator))):
        drop[t] = (*key, keep_threshold(min(d, 1.0)))
        if rescale and d < 1.0:
            scale[t] = d
    none = np.zeros(n_models, dtype=np.uint32)
    allow = np.zeros((parts or _parts(base_np.shape[0]), n_models), dtype=np.int64)
    return _combine(
        models, base_np, tensors[0].shape, out_dtype, allow.shape[0], block, none, allow, none, allow, drop, scale,
        weight, lambda_, normalize, False,
    )  # fmt: skip


def _inputs(base: torch.Tensor, tensors: Sequence[torch.Tensor]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Flat bit-pattern views of the base and the models (bfloat16 or float32; others, or a mix, cast to float32)."""
    dtypes = {t.dtype for t in (base, *tensors)}
    if dtypes - {torch.float32, torch.bfloat16} or len(dtypes) > 1:
        base, tensors = base.float(), [t.float() for t in tensors]
    return _bits(base.contiguous()), tuple(_bits(t.contiguous()) for t in tensors)


def _combine(
    models, base_np, shape, out_dtype, parts, block, keep_key, keep_ties, protect_key, protect_ties, drop, scale,
    weight, lambda_, normalize, use_slack,
) -> torch.Tensor:  # fmt: skip
    """Run :func:`_pass_combine` into a new tensor of ``shape`` in ``out_dtype`` (DARE when ``drop`` is given)."""
    n_models = len(models)
    use_drop = drop is not None
    if not use_drop:
        drop, scale = np.zeros((n_models, 3), dtype=np.uint64), np.ones(n_models, dtype=np.float64)
    out_bf16 = out_dtype == torch.bfloat16
    out = torch.empty(base_np.shape[0], dtype=torch.uint16 if out_bf16 else torch.uint32)
    _pass_combine(
        models, base_np, out.numpy(), parts, block, keep_key, keep_ties, protect_key, protect_ties, drop, scale,
        np.asarray(weight, dtype=np.float64), float(lambda_), normalize, use_slack, use_drop,
    )  # fmt: skip
    result = out.view(torch.bfloat16 if out_bf16 else torch.float32).view(shape)
    return result if out_dtype in (torch.bfloat16, torch.float32) else result.to(out_dtype)
