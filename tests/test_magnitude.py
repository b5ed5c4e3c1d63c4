"""The exact radix selection behind TIES' trim, and the fast TIES/DARE kernels, against plain reference code.

The tensors here are large enough (≥ 2^16 entries) to take the histogram path rather than the quickselect used
for small tensors, and built from bf16 values so that many magnitudes tie at the threshold, as in real merges.
"""

import pytest
import torch

from babelmerge.methods import METHODS
from babelmerge.methods.dare import drop_keys, keep_mask
from babelmerge.methods.magnitude import keep_top_fraction_, kth_largest_magnitude, top_fraction_mask

N = 70_000  # above the quickselect cut-off


def _samples(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(N, generator=g, dtype=torch.float64)
    out = [
        (normal * 0.002).to(dtype),  # distinct-ish values
        (
            (normal * 0.02).bfloat16().to(torch.float64)
            - (normal * 0.02 + 0.001).bfloat16().to(torch.float64)
        ).to(dtype),  # differences of bf16 numbers: heavy ties
        torch.randint(-3, 4, (N,), generator=g).to(dtype),  # few distinct values, many zeros
    ]
    with_inf = out[0].clone()
    with_inf[[5, 17]] = float("inf")
    with_inf[9] = float("-inf")
    return [*out, with_inf]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_kth_largest_magnitude_equals_kthvalue(dtype):
    for x in _samples(dtype):
        mag = x.abs()
        for k in (1, 2, 3, N // 10, N // 2, N - 1, N):
            value, above, equal = kth_largest_magnitude(x, k)
            expected = mag.kthvalue(N - k + 1).values
            assert value.item() == expected.item(), (dtype, k)
            assert value.dtype == dtype
            assert above == int((mag > expected).sum())
            assert equal == int((mag == expected).sum())
            assert above < k <= above + equal


def test_kth_largest_magnitude_rejects_k_out_of_range():
    with pytest.raises(ValueError, match="k must be in"):
        kth_largest_magnitude(torch.ones(5), 0)
    with pytest.raises(ValueError, match="k must be in"):
        kth_largest_magnitude(torch.ones(5), 6)


def _reference_mask(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Top-k by a stable sort: larger magnitude first, equal magnitudes in increasing index order."""
    k = int(fraction * x.numel())
    order = torch.sort(x.abs().flatten(), descending=True, stable=True).indices
    mask = torch.zeros(x.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask.view_as(x)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_top_fraction_mask_and_in_place_trim_match_a_stable_sort(fraction):
    for x in _samples(torch.float32):
        expected = _reference_mask(x, fraction)
        mask = top_fraction_mask(x, fraction)
        assert torch.equal(mask, expected)
        assert int(mask.sum()) == int(fraction * N)
        trimmed = keep_top_fraction_(x.clone(), fraction)
        assert torch.equal(trimmed, torch.where(expected, x, torch.zeros(())))


# ---------------------------------------------------------------------------------------------------------------
# TIES as the textbook stack-and-reduce computation, to check the streaming kernels against
# ---------------------------------------------------------------------------------------------------------------


def _reference_ties(models, base, weight, density, normalize, lambda_=1.0, slack=None, dropped=None):
    tau = torch.stack([m - base for m in models]).double()
    if dropped is not None:
        tau = dropped
    else:
        tau = torch.stack([t * _reference_mask(t, d) for t, d in zip(tau, density)])
    w = torch.tensor(weight, dtype=torch.float64).view(-1, *[1] * base.dim())
    weighted = tau * w
    sign = torch.where(weighted.sum(0) >= 0, 1.0, -1.0).double()
    if slack is not None and any(s > 0 for s in slack):
        raw = torch.stack([m - base for m in models]).double()
        protected = torch.stack([t * _reference_mask(t, s) for t, s in zip(raw, slack)]) * w
        has = (protected != 0).any(0)
        sign = torch.where(has, torch.where(protected.sum(0) >= 0, 1.0, -1.0).double(), sign)
    agree = torch.sign(weighted) == sign
    merged = (weighted * agree).sum(0)
    if normalize:
        div = (w * agree).sum(0)
        merged = merged / torch.where(div == 0, torch.ones_like(div), div)
    return base.double() + lambda_ * merged


def _models(n_models: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(300, 240, generator=g) * 0.02).bfloat16().float()
    models = [
        (base + torch.randn(300, 240, generator=g) * s).bfloat16().float() for s in (0.002, 0.003, 0.004)
    ]
    return base, models[:n_models]


@pytest.mark.parametrize(
    "weight,density,normalize,lambda_",
    [
        ([1.0, 1.0], [0.5, 0.5], True, 1.0),
        ([0.7, 0.3], [0.2, 0.9], True, 0.8),
        ([1.0, -0.5, 2.0], [0.3, 0.6, 0.5], True, 1.0),
        ([1.0, 1.0, 1.0], [0.5, 0.5, 0.5], False, 1.3),
    ],
)
def test_ties_matches_the_stacked_reference(weight, density, normalize, lambda_):
    base, models = _models(len(weight))
    kw = dict(base=base, weight=weight, density=density, normalize=normalize, lambda_=lambda_)
    out = METHODS["ties"].fn(models, **kw)
    expected = _reference_ties(models, base, weight, density, normalize, lambda_)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)
    # every input is left untouched by the in-place kernels
    assert torch.equal(models[0], _models(len(weight))[1][0])


def test_ties_sv_matches_the_stacked_reference():
    base, models = _models(2, seed=1)
    models[0] = base + (models[0] - base) * 8  # a long-trained CPT model: its task vector dominates
    kw = dict(weight=[1.0, 1.0], density=[0.6, 0.6], slack=[0.0, 0.2], normalize=True)
    out = METHODS["ties_sv"].fn(models, base=base, **kw)
    expected = _reference_ties(models, base, kw["weight"], kw["density"], True, slack=kw["slack"])
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)
    plain = METHODS["ties"].fn(models, base=base, weight=[1.0, 1.0], density=[0.6, 0.6])
    assert not torch.equal(out, plain)  # the slack changed the outcome somewhere


def test_dare_ties_matches_the_reference_with_the_same_masks():
    base, models = _models(2, seed=2)
    gen = torch.Generator().manual_seed(7)
    out = METHODS["dare_ties"].fn(
        models, base=base, weight=[1.0, 0.5], density=[0.4, 0.7], normalize=True, generator=gen
    )
    keys = drop_keys(2, torch.Generator().manual_seed(7))
    # τ_t·m_t/d_t rounded to float32 as the definition rounds it (a double quotient can flip the sign of a sum
    # that cancels exactly); the election and disjoint mean below are then exact in float64
    tau = [m - base for m in models]
    dropped = torch.stack(
        [t * keep_mask(t.shape, k, d) / d for t, k, d in zip(tau, keys, [0.4, 0.7])]
    ).double()
    expected = _reference_ties(models, base, [1.0, 0.5], None, True, dropped=dropped)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)


def test_trim_of_a_non_contiguous_tensor():
    x = _samples(torch.float32)[1][: 280 * 250].view(280, 250).t()  # a transposed view
    assert not x.is_contiguous()
    expected = _reference_mask(x.contiguous(), 0.4)
    assert torch.equal(top_fraction_mask(x, 0.4), expected)
    trimmed = x.clone(memory_format=torch.preserve_format)
    keep_top_fraction_(trimmed, 0.4)
    assert torch.equal(trimmed, torch.where(expected, x, torch.zeros(())))
