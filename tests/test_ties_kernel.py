"""The fused TIES / TIES-SV / DARE-TIES kernel gives exactly the numbers of the torch definitions in
``methods/ties.py`` and ``methods/dare.py``.

Inputs are built from bf16 values so that many task-vector magnitudes tie at the trim threshold, as in real
merges; small blocks and several thread ranges make ties straddle block and range boundaries.
"""

import numpy as np
import pytest
import torch

from babelmerge.methods import METHODS, dare
from babelmerge.methods.ties import fused, ties, ties_sv

pytest.importorskip("numba")
from babelmerge.methods import ties_kernel  # noqa: E402
from babelmerge.methods.ties_kernel import fused_dare_ties, fused_ties  # noqa: E402

N = 70_001  # odd: ranges and blocks do not divide it


def _inputs(n_models: int, dtype: torch.dtype, kind: str, n: int = N, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g).to(dtype)
    models = []
    for i in range(n_models):
        if kind == "ties":  # few distinct task-vector values: heavy ties at every threshold, many zeros
            step = torch.randint(-3, 4, (n,), generator=g).float() * 0.01 * (i + 1)
        elif kind == "same":  # identical to the base: all task vectors zero
            step = torch.zeros(n)
        else:
            step = torch.randn(n, generator=g) * 0.01 * (i + 1)
        models.append((base.float() + step).to(dtype))
    return base, models


def _reference(models, base, out_dtype, slack=None, **kw):
    f32 = [m.float() for m in models]
    if slack is None:
        return ties(f32, base=base.float(), **kw).to(out_dtype)
    return ties_sv(f32, base=base.float(), slack=slack, **kw).to(out_dtype)


CASES = [
    # (n_models, weight, density, slack, lambda, normalize)
    (2, [1.0, 1.0], [0.5, 0.5], None, 1.0, True),
    (2, [0.7, -0.3], [0.3, 0.9], None, 0.5, False),
    (3, [1.0, 2.0, 0.5], [0.2, 1.0, 0.6], None, 1.3, True),
    (2, [1.0, 1.0], [1.0, 0.00001], None, 1.0, True),  # keep everything / keep nothing
    (2, [1.0, 0.5], [0.5, 0.8], [0.1, 0.4], 1.0, True),
    (3, [1.0, 2.0, 0.5], [0.3, 0.9, 1.0], [0.3, 0.0, 0.5], 0.8, False),  # slack = density, slack 0
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["ties", "normal", "same"])
@pytest.mark.parametrize(
    ("in_dtype", "out_dtype"), [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)]
)
def test_fused_equals_torch_definition(case, kind, in_dtype, out_dtype):
    n_models, weight, density, slack, lam, normalize = case
    base, models = _inputs(n_models, in_dtype, kind)
    kw = dict(weight=weight, density=density, lambda_=lam, normalize=normalize)
    expected = _reference(models, base, out_dtype, slack, **kw)
    for window in (False, True):  # thresholds from two full passes, or one pass with windows from a sample
        got = fused_ties(models, base=base, slack=slack, out_dtype=out_dtype, window=window, **kw)
        assert got.dtype == out_dtype and got.shape == base.shape
        assert torch.equal(got, expected), f"window={window}"


def _record_passes(monkeypatch) -> list:
    """Each full pass over the inputs before the combining one, in order: ("high", which models took the top-bits
    histogram) and "low" (the low-bits pass)."""
    calls: list = []
    high, low = ties_kernel._pass_high, ties_kernel._pass_low

    def recording_high(models, base, parts, block, need_hist, *rest):
        calls.append(("high", tuple(bool(x) for x in need_hist)))
        return high(models, base, parts, block, need_hist, *rest)

    monkeypatch.setattr(ties_kernel, "_pass_high", recording_high)
    monkeypatch.setattr(ties_kernel, "_pass_low", lambda *a: calls.append("low") or low(*a))
    return calls


ONE_PASS = [("high", (False, False))]  # every threshold in its window: no histogram, no second pass
FALLBACK = [*ONE_PASS, ("high", (True, True)), "low"]


@pytest.mark.parametrize("in_dtype", [torch.bfloat16, torch.float32])
def test_sampled_windows_find_the_thresholds_in_one_pass(monkeypatch, in_dtype):
    """A large tensor (2^20 entries: windows on by default) of normal task vectors: the sample's windows hold
    every threshold (TIES-SV: the slack's too), so neither a top-bits histogram nor a second pass is needed, and
    the result is the definition's."""
    calls = _record_passes(monkeypatch)
    base, models = _inputs(2, in_dtype, "normal", n=1 << 20, seed=3)
    kw = dict(weight=[1.0, 0.6], density=[0.5, 0.2], lambda_=1.0, normalize=True)
    for slack in (None, [0.05, 0.1]):
        expected = _reference(models, base, in_dtype, slack, **kw)
        assert torch.equal(fused_ties(models, base=base, slack=slack, out_dtype=in_dtype, **kw), expected)
    assert calls == 2 * ONE_PASS


@pytest.mark.parametrize("scale", [4.0, 0.5])
def test_misleading_sample_falls_back_to_the_second_pass(monkeypatch, scale):
    """A sample whose magnitudes are 4x (half) the tensor's puts every window above (below) the thresholds:
    the entries counted above the windows say so, a histogram pass and the second pass then find the
    thresholds, and the result is still the definition's."""
    calls = _record_passes(monkeypatch)
    base, models = _inputs(2, torch.bfloat16, "normal", n=1 << 20, seed=4)
    scaled = [(base.float() + scale * (m.float() - base.float())).bfloat16() for m in models]
    sample = ties_kernel._sample_high
    fake = ties_kernel._inputs(base, scaled)
    monkeypatch.setattr(ties_kernel, "_sample_high", lambda _models, _base, *a: sample(fake[1], fake[0], *a))
    kw = dict(weight=[1.0, 0.6], density=[0.5, 0.2], lambda_=1.0, normalize=True)
    expected = _reference(models, base, torch.bfloat16, **kw)
    assert torch.equal(fused_ties(models, base=base, out_dtype=torch.bfloat16, **kw), expected)
    assert calls == FALLBACK


def test_a_model_without_a_window_takes_the_histogram_the_others_do_not(monkeypatch):
    """Model 0's task vector is normal (its threshold gets a window), model 1's is zero in 45% of the entries and
    its threshold (density 0.6) among them (the bucket of 0 holds far more than a window may, so none is chosen):
    only model 1 takes the histogram and the second pass, and the result is the definition's."""
    calls = _record_passes(monkeypatch)
    n = 1 << 20
    base, (normal, other) = _inputs(2, torch.bfloat16, "normal", n=n, seed=6)
    zero = torch.rand(n, generator=torch.Generator().manual_seed(7)) < 0.45
    models = [normal, torch.where(zero, base, other)]
    kw = dict(weight=[1.0, 0.8], density=[0.4, 0.6], lambda_=1.0, normalize=True)
    expected = _reference(models, base, torch.bfloat16, **kw)
    assert torch.equal(fused_ties(models, base=base, out_dtype=torch.bfloat16, **kw), expected)
    assert calls == [("high", (False, True)), "low"]


@pytest.mark.parametrize("in_dtype", [torch.bfloat16, torch.float32])
def test_windows_with_room_take_one_pass_and_those_that_outgrow_it_two(monkeypatch, in_dtype):
    """bfloat16 at density 0.7: one-bucket windows, 16-bit keys; float32: several buckets, 32-bit keys. With the
    room the sample asks for, one pass; with room for one block per range, every window overflows, is dropped,
    and a histogram pass and the second pass find the thresholds. The result is the definition's either way."""
    calls = _record_passes(monkeypatch)
    choose = ties_kernel._choose_windows
    key_types = []

    def recording(*args, room=None):
        targets, windows, keys = choose(*args)
        key_types.append(keys.dtype)
        return targets, windows, keys if room is None else np.ascontiguousarray(keys[:, :, :room])

    base, models = _inputs(2, in_dtype, "normal", n=1 << 20, seed=5)
    kw = dict(weight=[1.0, 0.6], density=[0.7, 0.7], lambda_=1.0, normalize=True)
    expected = _reference(models, base, in_dtype, **kw)
    for room, passes in ((None, ONE_PASS), (4096, FALLBACK)):
        monkeypatch.setattr(ties_kernel, "_choose_windows", lambda *a, room=room: recording(*a, room=room))
        calls.clear()
        assert torch.equal(fused_ties(models, base=base, out_dtype=in_dtype, block=4096, **kw), expected)
        assert calls == passes
    assert key_types == 2 * [np.uint16 if in_dtype == torch.bfloat16 else np.uint32]


@pytest.mark.parametrize("parts", [1, 2, 5, 16])
@pytest.mark.parametrize("block", [64, 4096])
def test_ties_across_ranges_and_blocks(parts, block):
    """The tie budget is split over thread ranges in index order: any split gives the same result."""
    base, models = _inputs(2, torch.bfloat16, "ties")
    kw = dict(weight=[1.0, 0.6], density=[0.37, 0.61], lambda_=1.0, normalize=True)
    expected = _reference(models, base, torch.bfloat16, [0.11, 0.2], **kw)
    got = fused_ties(
        models, base=base, slack=[0.11, 0.2], out_dtype=torch.bfloat16, parts=parts, block=block, **kw
    )
    assert torch.equal(got, expected)


def test_mixed_and_other_dtypes_shapes_and_lambda_zero():
    base, models = _inputs(2, torch.float32, "normal")
    models = [models[0].bfloat16(), models[1].half()]  # mixed: computed from float32 copies
    base2d = base.view(7, -1) if base.numel() % 7 == 0 else base[: 7 * 10_000].view(7, -1)
    models2d = [m[: base2d.numel()].view_as(base2d) for m in models]
    kw = dict(weight=[1.0, 1.0], density=[0.5, 0.5], normalize=True)
    got = fused_ties(models2d, base=base2d, lambda_=0.7, out_dtype=torch.float16, **kw)
    assert got.shape == base2d.shape and got.dtype == torch.float16
    assert torch.equal(got, _reference(models2d, base2d, torch.float16, lambda_=0.7, **kw))
    # λ = 0 gives the base; merging the base with itself gives the base.
    assert torch.equal(fused_ties(models2d, base=base2d, lambda_=0.0, out_dtype=torch.float32, **kw), base2d)
    assert torch.equal(fused_ties([base2d, base2d], base=base2d, out_dtype=torch.float32, **kw), base2d)


def test_fused_closed_form():
    """Two models, sign conflict, hand-computed: τ_a = [3, −1, 2, 0.5], τ_b = [−1, 4, 1, 0.25] (density 0.5)."""
    n = 4 * 20_000  # the same 4-entry pattern repeated: thresholds 2 (a) and 1 (b) with heavy ties
    base = torch.zeros(n)
    a = torch.tensor([3.0, -1.0, 2.0, 0.5]).repeat(n // 4)
    b = torch.tensor([-1.0, 4.0, 1.0, 0.25]).repeat(n // 4)
    got = fused_ties([a, b], base=base, weight=[1.0, 1.0], density=[0.5, 0.5], out_dtype=torch.float32)
    # a keeps its 3s and 2s. b keeps its 4s and, of its n/2 magnitudes tied at 1, the first n/4 in index order:
    # in the first patterns both −1 and 1. Sums [2, 4, 3, 0] elect +: agreeing means 3, 4, (2 + 1)/2 and 0.
    assert torch.equal(got.view(-1, 4)[0], torch.tensor([3.0, 4.0, 1.5, 0.0]))
    assert torch.equal(got, ties([a, b], base=base, weight=[1.0, 1.0], density=[0.5, 0.5]))


def test_registered_as_the_ties_kernels():
    assert METHODS["ties"].kernel is fused
    assert METHODS["ties_sv"].kernel is fused
    assert METHODS["dare_ties"].kernel is dare.fused
    assert METHODS["dare_linear"].kernel is None


DARE_CASES = [
    # (n_models, weight, density, lambda, normalize, rescale)
    (2, [1.0, 1.0], [0.5, 0.5], 1.0, False, True),
    (2, [0.7, -0.3], [0.3, 0.9], 0.5, True, True),
    (3, [1.0, 2.0, 0.5], [0.2, 1.0, 0.6], 1.3, False, False),
    (2, [1.0, 1.0], [1.0, 1.0], 1.0, True, True),  # density 1: TIES' election without trim
]


@pytest.mark.parametrize("case", DARE_CASES)
@pytest.mark.parametrize("kind", ["ties", "normal"])
@pytest.mark.parametrize(
    ("in_dtype", "out_dtype"), [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)]
)
def test_dare_ties_kernel_equals_torch_definition(case, kind, in_dtype, out_dtype):
    n_models, weight, density, lam, normalize, rescale = case
    base, models = _inputs(n_models, in_dtype, kind, seed=3)
    kw = dict(weight=weight, density=density, lambda_=lam, normalize=normalize, rescale=rescale)
    expected = dare.dare_ties(
        [m.float() for m in models], base=base.float(), generator=torch.Generator().manual_seed(11), **kw
    ).to(out_dtype)
    got = fused_dare_ties(
        models, base=base, generator=torch.Generator().manual_seed(11), out_dtype=out_dtype, **kw
    )
    assert got.dtype == out_dtype and torch.equal(got, expected)
    if min(density) < 1.0:  # another seed, other masks
        other = fused_dare_ties(
            models, base=base, generator=torch.Generator().manual_seed(12), out_dtype=out_dtype, **kw
        )
        assert not torch.equal(other, got)


@pytest.mark.parametrize(("parts", "block"), [(1, 64), (3, 1000), (16, 4096)])
def test_dare_masks_do_not_depend_on_the_split(parts, block):
    base, models = _inputs(2, torch.bfloat16, "normal", seed=5)
    kw = dict(weight=[1.0, 0.8], density=[0.35, 0.6], out_dtype=torch.bfloat16)
    reference = fused_dare_ties(models, base=base, generator=torch.Generator().manual_seed(1), **kw)
    got = fused_dare_ties(
        models, base=base, generator=torch.Generator().manual_seed(1), parts=parts, block=block, **kw
    )
    assert torch.equal(got, reference)
    # λ = 0 gives the base whatever the masks
    zero = fused_dare_ties(models, base=base, lambda_=0.0, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(zero, base)


@pytest.mark.parametrize("n", [1 << 16, 3 * N, 1 << 20])
def test_compiled_dare_masks_equal_the_torch_hash(monkeypatch, n):
    """CPU masks of 2^16 entries or more come from the compiled loop; they equal the int64 torch hash bit for bit."""
    calls: list[int] = []
    compiled = ties_kernel.keep_mask
    monkeypatch.setattr(ties_kernel, "keep_mask", lambda *a: calls.append(1) or compiled(*a))
    keys = dare.drop_keys(3, torch.Generator().manual_seed(11)) + [(2**32 - 1, 2**32 - 1), (0, 0)]
    for key, d in zip(keys, [0.5, 0.1, 0.9, 0.3, 0.999]):
        got = dare.keep_mask(torch.Size([n]), key, d)
        monkeypatch.setenv("BABELMERGE_KERNELS", "0")  # the torch definition
        expected = dare.keep_mask(torch.Size([n]), key, d)
        monkeypatch.delenv("BABELMERGE_KERNELS")
        assert torch.equal(got, expected), (key, d)
        assert abs(got.float().mean().item() - d) < 6 * (d * (1 - d) / n) ** 0.5
    assert len(calls) == len(keys)


@pytest.mark.parametrize("start", [0, 2**32 - 700, 2**32, 5 * 2**32 - 1])
def test_compiled_draws_across_the_high_word_of_the_index(start):
    """The compiled draws of 1000 entries from ``start`` — blocks that cross a multiple of 2^32 take the loop that
    recomputes the index's high word per entry — equal the torch hash of those indices."""
    k0, k1 = 0x9E3779B9, 0x7F4A7C15
    got = np.empty(1000, dtype=np.uint32)
    ties_kernel._draws(start, 1000, np.uint32(k0), np.uint32(k1), got)
    i = torch.arange(start, start + 1000, dtype=torch.int64)
    expected = dare.mix32(dare.mix32((i & 0xFFFFFFFF) ^ k0) ^ (i >> 32) ^ k1)
    assert np.array_equal(got.astype(np.int64), expected.numpy())


def test_loading_the_kernels_skips_numbas_scipy_probe():
    """A fresh process that loads and runs a kernel does not import scipy.linalg (numba's BLAS probe, 0.2–0.5 s),
    and numba still reports BLAS as available exactly when SciPy is installed, so np.dot in numba code works."""
    import importlib.util
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from babelmerge.methods.ties_kernel import fused_ties\n"
        "z = torch.arange(16, dtype=torch.float32)\n"
        "r = fused_ties([z + 1, z - 1], base=z, weight=[1, 1], density=[0.5, 0.5])\n"
        # τ = +1 and −1 everywhere, all tied: each model keeps entries 0-7 (the first in index order), where the
        # election's sum is 0 and + wins, giving the mean of the agreeing +1.
        "assert torch.equal(r, z + (z < 8)), r\n"
        "import numba.np.arraymath as a\n"
        "print('scipy.linalg' in sys.modules, a._HAVE_BLAS)\n"
        "import numba, numpy as np\n"  # numba's np.dot still compiles (through SciPy's BLAS when installed)
        "dot = numba.njit(lambda x, y: np.dot(x, y))\n"
        "print(dot(np.eye(2), np.full((2, 2), 3.0))[0, 1])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", str(importlib.util.find_spec("scipy") is not None), "3.0"]
