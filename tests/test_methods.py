"""Merge methods against values computed by hand, and their invariants."""

import math

import pytest
import torch

from babelmerge import dare_linear, dare_ties, linear, model_stock, slerp, task_arithmetic, ties, ties_sv
from babelmerge.methods import METHODS, dare
from babelmerge.methods.ties import top_fraction_mask

T = torch.tensor


def test_registry_has_every_method():
    assert set(METHODS) == {
        "linear",
        "slerp",
        "task_arithmetic",
        "ties",
        "ties_sv",
        "dare_linear",
        "dare_ties",
        "model_stock",
    }
    for m in METHODS.values():
        assert "=" in m.summary or "TIES" in m.summary, f"{m.name} docstring must state its formula"


# ---------------------------------------------------------------- linear
def test_linear_weighted_average():
    a, b = T([1.0, 2.0]), T([3.0, 6.0])
    assert torch.equal(linear([a, b], weight=[1, 3]), T([2.5, 5.0]))  # (1*1+3*3)/4, (2+18)/4
    assert torch.equal(linear([a, b], weight=[1, 3], normalize=False), T([10.0, 20.0]))


def test_linear_of_one_model_and_of_a_model_with_itself():
    a = torch.randn(5, 3)
    assert torch.equal(linear([a], weight=[0.7]), a)
    assert torch.equal(linear([a, a], weight=[1, 1]), a)


def test_linear_zero_weight_sum_is_an_error():
    with pytest.raises(ValueError, match="sum to zero"):
        linear([T([1.0]), T([2.0])], weight=[1, -1])


# ---------------------------------------------------------------- slerp
def test_slerp_orthogonal_midpoint():
    out = slerp([T([1.0, 0.0]), T([0.0, 1.0])], t=0.5)
    assert torch.allclose(out, T([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-7)


def test_slerp_quarter_turn_keeps_norm_and_angle():
    out = slerp([T([2.0, 0.0]), T([0.0, 2.0])], t=1 / 3)  # 30° of a 90° arc on the radius-2 circle
    assert torch.allclose(out, T([2 * math.cos(math.pi / 6), 2 * math.sin(math.pi / 6)]), atol=1e-6)


def test_slerp_colinear_falls_back_to_linear():
    assert torch.allclose(slerp([T([1.0, 0.0]), T([2.0, 0.0])], t=0.25), T([1.25, 0.0]))
    assert torch.allclose(slerp([T([0.0, 0.0]), T([2.0, 4.0])], t=0.5), T([1.0, 2.0]))


def test_slerp_endpoints_and_self():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    assert torch.equal(slerp([a, b], t=0.0), a)
    assert torch.equal(slerp([a, b], t=1.0), b)
    assert torch.allclose(slerp([a, a], t=0.4), a, atol=1e-6)


# ---------------------------------------------------------------- task arithmetic
def test_task_arithmetic_closed_form():
    base, a, b = T([1.0, 1.0]), T([2.0, 0.0]), T([1.0, 3.0])
    # τa = [1,-1], τb = [0,2]; base + 2 * (1*τa + 0.5*τb) = [1,1] + 2*[1,0]
    assert torch.equal(task_arithmetic([a, b], base=base, weight=[1, 0.5], lambda_=2.0), T([3.0, 1.0]))
    # normalize divides the weighted sum by 1.5
    expected = base + 2.0 * T([1.0, 0.0]) / 1.5
    assert torch.allclose(
        task_arithmetic([a, b], base=base, weight=[1, 0.5], lambda_=2.0, normalize=True), expected
    )


# ---------------------------------------------------------------- trimming
def test_top_fraction_mask_breaks_threshold_ties_by_index():
    assert top_fraction_mask(T([1.0, 1.0, 1.0, 1.0]), 0.5).tolist() == [True, True, False, False]
    assert top_fraction_mask(T([1.0, -1.0, 2.0, 1.0]), 0.5).tolist() == [True, False, True, False]
    assert top_fraction_mask(T([0.1, -5.0, 2.0, 3.0]), 0.75).tolist() == [False, True, True, True]
    # k = floor(density * n): 0.3 of 4 entries is one entry; a tiny density keeps nothing
    assert top_fraction_mask(T([1.0, -4.0, 2.0, 3.0]), 0.3).tolist() == [False, True, False, False]
    assert not top_fraction_mask(T([1.0, 2.0]), 0.1).any()


def test_top_fraction_mask_is_nested():
    x = torch.randn(1000).round(decimals=1)  # many ties
    small, large = top_fraction_mask(x, 0.2), top_fraction_mask(x, 0.5)
    assert int(small.sum()) == 200 and int(large.sum()) == 500
    assert not (small & ~large).any()


# ---------------------------------------------------------------- TIES
def test_ties_trim_elect_disjoint_mean():
    base = torch.zeros(4)
    a = T([3.0, -1.0, 0.5, -2.0])  # trimmed to [3, 0, 0, -2]
    b = T([-1.0, 2.0, -0.5, -2.0])  # trimmed to [0, 2, 0, -2] (tie at |2| keeps both)
    # signs: [+, +, + (sum 0), -]; entry 3 averages -2 and -2
    assert torch.equal(ties([a, b], base=base, weight=[1, 1], density=[0.5, 0.5]), T([3.0, 2.0, 0.0, -2.0]))


def test_ties_weighted_election_and_mean():
    base = torch.zeros(1)
    # weighted: 3*1 = 3 vs 0.9*(-3) = -2.7 -> "+" wins, only model 1 agrees: 3 / 3
    assert torch.equal(ties([T([1.0]), T([-3.0])], base=base, weight=[3, 0.9], density=[1, 1]), T([1.0]))
    # unweighted the negative one wins
    assert torch.equal(ties([T([1.0]), T([-3.0])], base=base, weight=[1, 1], density=[1, 1]), T([-3.0]))
    # both agree: (1*2 + 3*4) / (1 + 3)
    assert torch.equal(ties([T([2.0]), T([4.0])], base=base, weight=[1, 3], density=[1, 1]), T([3.5]))
    # without normalize the agreeing weighted values are summed
    assert torch.equal(
        ties([T([2.0]), T([4.0])], base=base, weight=[1, 3], density=[1, 1], normalize=False), T([14.0])
    )


def test_ties_lambda_and_base_offset():
    base = T([10.0, 10.0])
    out = ties([T([12.0, 9.0]), T([14.0, 9.0])], base=base, weight=[1, 1], density=[1, 1], lambda_=0.5)
    assert torch.equal(out, T([10.0 + 0.5 * 3.0, 10.0 - 0.5]))


def test_ties_zero_task_vectors_give_base():
    base = torch.randn(3, 3)
    assert torch.equal(ties([base.clone(), base.clone()], base=base, weight=[1, 1], density=[0.5, 0.5]), base)


def test_lambda_zero_gives_base():
    base, a, b = torch.randn(6, 5), torch.randn(6, 5), torch.randn(6, 5)
    kw = dict(base=base, weight=[0.6, 1.3], lambda_=0.0)
    assert torch.equal(task_arithmetic([a, b], **kw), base)
    assert torch.equal(ties([a, b], density=[0.4, 0.7], **kw), base)
    assert torch.equal(ties_sv([a, b], density=[0.4, 0.7], slack=[0.1, 0.2], **kw), base)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(dare_linear([a, b], density=[0.5, 0.5], generator=g, **kw), base)
    assert torch.equal(dare_ties([a, b], density=[0.5, 0.5], generator=g, **kw), base)


def test_merging_a_model_with_itself_returns_it():
    base, a = torch.randn(7, 3), torch.randn(7, 3)
    assert torch.allclose(ties([a, a], base=base, weight=[1, 1], density=[1, 1]), a, atol=1e-6)
    assert torch.allclose(
        ties_sv([a, a], base=base, weight=[1, 1], density=[1, 1], slack=[0.3, 0.3]), a, atol=1e-6
    )
    assert torch.allclose(model_stock([a, a], base=base), a, atol=1e-6)
    assert torch.allclose(task_arithmetic([a], base=base, weight=[1.0]), a, atol=1e-6)


# ---------------------------------------------------------------- TIES with slack
def test_ties_sv_protects_the_small_models_top_entries():
    base = torch.zeros(4)
    ct = T([10.0, -10.0, 10.0, -10.0])  # continually pretrained: large task vector
    sft = T([-1.0, 1.0, 0.1, -0.1])  # instruction tuned: small, conflicting at entries 0 and 1
    plain = ties([ct, sft], base=base, weight=[1, 1], density=[1, 1])
    assert torch.allclose(plain, T([10.0, -10.0, 5.05, -5.05]))
    # slack 0.5 protects sft's top-2 entries (0 and 1): the election there counts only sft
    out = ties_sv([ct, sft], base=base, weight=[1, 1], density=[1, 1], slack=[0.0, 0.5])
    assert torch.allclose(out, T([-1.0, 1.0, 5.05, -5.05]))


def test_ties_sv_election_among_several_protected_values():
    base = torch.zeros(2)
    a, b, c = T([4.0, 1.0]), T([-3.0, 1.0]), T([-2.0, -9.0])
    # protected: a's top half = entry 0 (4), b's = entry 0 (-3); c unprotected.
    # entry 0: protected sum 4 - 3 = 1 -> "+", only a agrees -> 4 (plain TIES: 4-3-2 = -1 -> mean(-3,-2) = -2.5)
    # entry 1: ordinary election 1 + 1 - 9 -> "-", only c agrees -> -9
    out = ties_sv([a, b, c], base=base, weight=[1, 1, 1], density=[1, 1, 1], slack=[0.5, 0.5, 0.0])
    assert torch.equal(out, T([4.0, -9.0]))
    assert torch.equal(ties([a, b, c], base=base, weight=[1, 1, 1], density=[1, 1, 1]), T([-2.5, -9.0]))


def test_ties_sv_with_zero_slack_equals_ties():
    torch.manual_seed(0)
    base = torch.randn(16, 8)
    models = [base + torch.randn(16, 8) * s for s in (0.1, 1.0, 0.5)]
    kw = dict(base=base, weight=[1.0, 0.3, 0.8], density=[0.3, 0.6, 0.9], lambda_=0.7)
    assert torch.equal(ties_sv(models, slack=[0, 0, 0], **kw), ties(models, **kw))


# ---------------------------------------------------------------- DARE
def test_dare_density_one_equals_undropped_method():
    torch.manual_seed(1)
    base, a, b = torch.randn(5, 5), torch.randn(5, 5), torch.randn(5, 5)
    kw = dict(base=base, weight=[0.5, 1.5], lambda_=0.9)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(dare_linear([a, b], density=[1, 1], generator=g, **kw), task_arithmetic([a, b], **kw))
    assert torch.equal(
        dare_ties([a, b], density=[1, 1], normalize=True, generator=g, **kw),
        ties([a, b], density=[1, 1], normalize=True, **kw),
    )


def test_dare_drops_and_rescales():
    base = torch.zeros(20000)
    tau = torch.ones(20000)
    out = dare_linear(
        [tau], base=base, weight=[1.0], density=[0.3], generator=torch.Generator().manual_seed(0)
    )
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.015
    assert torch.allclose(out[kept], torch.full((int(kept.sum()),), 1 / 0.3))
    # the expected value of every entry is preserved
    assert abs(out.mean().item() - 1.0) < 0.05


def _py_mix32(x: int) -> int:
    """The mask hash in plain Python integers (an independent implementation of ``dare.mix32``)."""
    x ^= x >> 16
    x = (x * 0x21F0AAAD) % 2**32
    x ^= x >> 15
    x = (x * 0x735A2D97) % 2**32
    return x ^ (x >> 15)


def _py_keep(i: int, key: tuple[int, int], density: float) -> bool:
    u = _py_mix32(_py_mix32((i % 2**32) ^ key[0]) ^ (i // 2**32) ^ key[1])
    return u < int(density * 2**32)


def test_dare_matches_an_independently_computed_mask():
    base, a, b = torch.zeros(50), torch.randn(50), torch.randn(50)
    out = dare_linear(
        [a, b], base=base, weight=[1, 1], density=[0.5, 0.25], generator=torch.Generator().manual_seed(9)
    )
    # the keys: two 32-bit integers per model, drawn from the seeded generator before any mask
    (ka, kb) = torch.randint(0, 2**32, (2, 2), generator=torch.Generator().manual_seed(9)).tolist()
    mask_a = torch.tensor([_py_keep(i, ka, 0.5) for i in range(50)])
    mask_b = torch.tensor([_py_keep(i, kb, 0.25) for i in range(50)])
    assert 10 < int(mask_a.sum()) < 40 and 2 < int(mask_b.sum()) < 25
    assert torch.equal(out, a * mask_a / 0.5 + b * mask_b / 0.25)


def test_dare_mask_beyond_two_to_the_32_entries():
    # the high word of the flat index enters the hash: entries 2^32 + i are not a copy of entries i
    key = (12345, 678)
    i = torch.tensor([0, 1, 2, 3, 2**32, 2**32 + 1, 2**32 + 5, 3 * 2**32 + 7], dtype=torch.int64)
    u = dare.mix32(dare.mix32((i & 0xFFFFFFFF) ^ key[0]) ^ (i >> 32) ^ key[1])
    expected = [_py_mix32(_py_mix32((int(j) % 2**32) ^ key[0]) ^ (int(j) >> 32) ^ key[1]) for j in i]
    assert u.tolist() == expected
    assert len(set(expected)) == len(expected)


def test_dare_masks_are_bernoulli():
    n, d = 1 << 20, 0.3
    keys = dare.drop_keys(2, torch.Generator().manual_seed(4))
    m0 = dare.keep_mask(torch.Size([n]), keys[0], d)
    m1 = dare.keep_mask(torch.Size([n]), keys[1], d)
    sd = (d * (1 - d) / n) ** 0.5
    assert abs(m0.float().mean().item() - d) < 5 * sd
    # no correlation between neighbours, between models, or with a row of 4096 entries
    assert abs((m0[1:] & m0[:-1]).float().mean().item() - d * d) < 5 * sd
    assert abs((m0 & m1).float().mean().item() - d * d) < 5 * sd
    rows = m0.view(-1, 4096).float().mean(dim=1)
    row_sd = (d * (1 - d) / 4096) ** 0.5
    assert abs(rows.std().item() - row_sd) < 0.15 * row_sd
    assert torch.equal(dare.keep_mask(torch.Size([64, 8]), keys[0], 1.0), torch.ones(64, 8, dtype=torch.bool))
    # a mask is a function of the flat index only: the first entries of a longer mask are the shorter one
    assert torch.equal(dare.keep_mask(torch.Size([1000]), keys[0], d), m0[:1000])


def test_dare_is_deterministic_under_a_seed():
    base, a, b = torch.zeros(300), torch.randn(300), torch.randn(300)

    def run(seed):
        return dare_ties(
            [a, b],
            base=base,
            weight=[1, 1],
            density=[0.4, 0.4],
            generator=torch.Generator().manual_seed(seed),
        )

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


# ---------------------------------------------------------------- Model Stock
def test_model_stock_closed_form():
    base = torch.zeros(2)
    # orthogonal offsets: cos = 0 -> ratio 0 -> base
    assert torch.equal(model_stock([T([1.0, 0.0]), T([0.0, 1.0])], base=base), base)
    # cos = 1/sqrt(2); ratio = 2c / (1 + c); result = ratio * mean([1,1], [1,0])
    c = 1 / math.sqrt(2)
    ratio = 2 * c / (1 + c)
    out = model_stock([T([1.0, 1.0]), T([1.0, 0.0])], base=base)
    assert torch.allclose(out, ratio * T([1.0, 0.5]), atol=1e-6)


def test_model_stock_three_models_with_base_offset():
    base = T([1.0, 1.0, 1.0])
    offs = [T([1.0, 0.0, 0.0]), T([1.0, 1.0, 0.0]), T([1.0, 0.0, 1.0])]
    cos = (1 / math.sqrt(2) + 1 / math.sqrt(2) + 0.5) / 3
    ratio = 3 * cos / (1 + 2 * cos)
    mean = base + sum(offs) / 3
    out = model_stock([base + o for o in offs], base=base)
    assert torch.allclose(out, ratio * mean + (1 - ratio) * base, atol=1e-6)
