"""Pure mixture arithmetic and drawing: block counts per source, feasibility, seeded draws."""

import numpy as np
import pytest

from babelmerge.data import PackedData, pack_blocks
from babelmerge.data.mixture import allocate_blocks, draw_mixture, max_total_blocks, plan_mixture
from babelmerge.errors import BabelmergeError


@pytest.mark.parametrize(
    "n_total, ratios, expected",
    [
        (40, [0.75, 0.25], [30, 10]),
        (10, [1, 1, 1], [4, 3, 3]),  # the remainder goes to the earliest tied source
        (7, [3, 1], [5, 2]),  # exact 5.25 / 1.75: the larger remainder (0.75) gets the block
        (0, [1, 2], [0, 0]),
    ],
)
def test_allocate_blocks_closed_form(n_total, ratios, expected):
    assert allocate_blocks(n_total, ratios) == expected


def test_allocate_blocks_sums_and_stays_within_one_block():
    rng = np.random.default_rng(0)
    for _ in range(200):
        ratios = rng.uniform(0.01, 1, size=rng.integers(1, 6)).tolist()
        n = int(rng.integers(0, 1000))
        counts = allocate_blocks(n, ratios)
        assert sum(counts) == n
        exact = np.asarray(ratios) / sum(ratios) * n
        assert np.all(np.abs(np.asarray(counts) - exact) < 1)


def test_max_total_blocks_is_the_largest_feasible_total():
    assert max_total_blocks([100, 10], [0.75, 0.25]) == 40  # bg limits: 10 blocks are 25 %
    assert max_total_blocks([30, 100], [0.75, 0.25]) == 40  # en limits: 30 blocks are 75 %
    assert max_total_blocks([5, 5, 5], [1, 1, 1]) == 15
    rng = np.random.default_rng(1)
    for _ in range(200):
        k = int(rng.integers(1, 5))
        avail = rng.integers(0, 200, size=k).tolist()
        ratios = rng.uniform(0.05, 1, size=k).tolist()
        n = max_total_blocks(avail, ratios)
        assert all(c <= a for c, a in zip(allocate_blocks(n, ratios), avail))
        # one more block would need more than some source has (allowing the rounding of one block)
        exact_next = np.asarray(ratios) / sum(ratios) * (n + 2)
        assert np.any(exact_next > np.asarray(avail))


def test_plan_mixture_budget_too_large_names_sources_and_maximum():
    with pytest.raises(BabelmergeError) as err:
        plan_mixture([100, 10], [3, 1], ["en", "bg"], block_size=16, token_budget=16 * 41)
    msg = str(err.value)
    assert "'en' has 1600 packed tokens" in msg and "'bg' has 160 packed tokens" in msg
    assert "maximum budget is 640 tokens" in msg and "limited by 'bg'" in msg
    assert "\n" not in msg
    assert plan_mixture([100, 10], [3, 1], ["en", "bg"], 16, 16 * 40) == [30, 10]
    assert plan_mixture([100, 10], [3, 1], ["en", "bg"], 16, 16 * 40 + 15) == [30, 10]  # budget // block
    assert plan_mixture([100, 10], [3, 1], ["en", "bg"], 16, None) == [30, 10]


def _source_blocks(n_blocks: int, offset: int, block_size: int = 4):
    """Blocks whose every token is a unique block id (offset + row), to trace which blocks were drawn."""
    return np.repeat(np.arange(offset, offset + n_blocks, dtype=np.int32)[:, None], block_size, axis=1)


def test_draw_mixture_counts_determinism_and_no_duplicates():
    blocks = [_source_blocks(50, 0), _source_blocks(20, 1000)]
    a = draw_mixture(blocks, [None, None], [30, 10], ["en", "bg"], seed=3)
    b = draw_mixture(blocks, [None, None], [30, 10], ["en", "bg"], seed=3)
    c = draw_mixture(blocks, [None, None], [30, 10], ["en", "bg"], seed=4)
    assert len(a) == 40 and np.bincount(a.source).tolist() == [30, 10]
    ids = a.input_ids[:, 0]
    assert len(np.unique(ids)) == 40  # without replacement
    assert np.all((ids < 1000) == (a.source == 0))  # the tag matches where the block came from
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    assert not np.array_equal(a.input_ids, c.input_ids)
    assert a.labels is None
    assert a.source_token_shares() == {"en": 0.75, "bg": 0.25}


def test_draw_mixture_carries_labels():
    ids = _source_blocks(6, 0)
    labels = ids.copy()
    labels[:, :2] = -100
    out = draw_mixture([ids, _source_blocks(6, 100)], [labels, None], [3, 3], ["sft", "pt"], seed=0)
    assert out.labels is not None
    sft = out.source == 0
    assert np.all(out.labels[sft, :2] == -100) and np.all(out.labels[sft, 2:] == out.input_ids[sft, 2:])
    np.testing.assert_array_equal(out.labels[~sft], out.input_ids[~sft])  # no labels: labels = ids


def test_pack_blocks_drops_remainder_and_keeps_labels_aligned():
    ids = np.arange(10)
    labels = np.where(ids < 3, -100, ids)
    blocks, lab = pack_blocks(ids, 4, labels)
    np.testing.assert_array_equal(blocks, [[0, 1, 2, 3], [4, 5, 6, 7]])
    np.testing.assert_array_equal(lab, [[-100, -100, -100, 3], [4, 5, 6, 7]])
    assert blocks.dtype == np.int32 and lab.dtype == np.int32
    assert pack_blocks(ids, 11)[0].shape == (0, 11)


def test_packed_data_subset_and_shares():
    data = PackedData(
        input_ids=_source_blocks(5, 0),
        source=np.array([0, 0, 1, 1, 1]),
        source_names=["a", "b", "c"],
        labels=np.full((5, 4), -100),
    )
    assert len(data) == 5 and data.n_tokens == 20
    assert data.source_token_shares() == {"a": 0.4, "b": 0.6, "c": 0.0}
    sub = data.subset(np.array([4, 0]))
    assert sub.input_ids[:, 0].tolist() == [4, 0] and sub.source.tolist() == [1, 0]
    assert sub.labels is not None and sub.labels.shape == (2, 4) and np.all(sub.labels == -100)
    assert sub.source.dtype == np.int16 and sub.input_ids.dtype == np.int32
    with pytest.raises(ValueError):
        PackedData(input_ids=_source_blocks(2, 0), source=np.array([0, 5]), source_names=["a"])
