"""Branch-and-Merge slices (equal, disjoint, covering; iid keeps ratios, ordered follows sources) and BlockDataset."""

import numpy as np
import pytest
import torch

from babelmerge.data import BlockDataset, PackedData, make_slices


def _data(counts, block_size=4, seed=0, labels=False):
    """Shuffled blocks from len(counts) sources; block i holds the token i everywhere (traceable)."""
    source = np.concatenate([np.full(c, s) for s, c in enumerate(counts)])
    source = np.random.default_rng(seed).permutation(source)
    n = len(source)
    ids = np.repeat(np.arange(n)[:, None], block_size, axis=1)
    lab = np.where(np.arange(block_size) < 1, -100, ids) if labels else None
    return PackedData(ids, source, [f"s{i}" for i in range(len(counts))], lab)


@pytest.mark.parametrize("mode", ["iid", "ordered"])
@pytest.mark.parametrize("counts, n_slices", [([30, 10], 4), ([31, 7, 5], 3), ([12, 12, 12], 3), ([9], 2)])
def test_slices_are_equal_disjoint_and_cover(mode, counts, n_slices):
    data = _data(counts)
    slices = make_slices(data, n_slices, mode=mode, seed=1)
    n = len(data)
    assert len(slices) == n_slices
    assert {len(s) for s in slices} == {n // n_slices}
    taken = np.concatenate([s.input_ids[:, 0] for s in slices])
    assert len(np.unique(taken)) == len(taken)  # disjoint
    assert len(taken) == n - n % n_slices  # covering, minus the remainder only
    for s in slices:  # each block keeps its source tag
        np.testing.assert_array_equal(s.source, data.source[s.input_ids[:, 0]])


@pytest.mark.parametrize(
    "counts, n_slices", [([30, 10], 4), ([31, 7, 5], 3), ([100, 33, 17], 8), ([5, 5], 3)]
)
def test_iid_slices_keep_mixture_within_one_block(counts, n_slices):
    data = _data(counts)
    slices = make_slices(data, n_slices, mode="iid", seed=2)
    per_slice = np.array([np.bincount(s.source, minlength=len(counts)) for s in slices])
    assert np.all(per_slice.max(axis=0) - per_slice.min(axis=0) <= 1)
    expected = np.asarray(counts) / sum(counts) * len(slices[0])
    assert np.all(np.abs(per_slice - expected) <= 1)


def test_ordered_slices_follow_source_order():
    data = _data([12, 12, 12])
    slices = make_slices(data, 3, mode="ordered")
    assert [np.unique(s.source).tolist() for s in slices] == [[0], [1], [2]]  # one source per slice
    uneven = make_slices(_data([10, 5, 3]), 4, mode="ordered")
    flat = np.concatenate([s.source for s in uneven])
    assert np.all(np.diff(flat) >= 0)  # source 0 first, then 1, then 2
    assert flat.tolist().count(2) == 3 - (18 % 4)  # the remainder is dropped from the end


def test_slices_are_deterministic_and_seed_dependent():
    data = _data([40, 21])
    a = make_slices(data, 3, seed=5)
    b = make_slices(data, 3, seed=5)
    c = make_slices(data, 3, seed=6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.input_ids, y.input_ids)
    assert any(not np.array_equal(x.input_ids, y.input_ids) for x, y in zip(a, c))


def test_slices_keep_labels():
    data = _data([8, 4], labels=True)
    for mode in ("iid", "ordered"):
        for s in make_slices(data, 2, mode=mode):
            assert s.labels is not None
            np.testing.assert_array_equal(s.labels[:, 0], -100)
            np.testing.assert_array_equal(s.labels[:, 1:], s.input_ids[:, 1:])


def test_make_slices_rejects_bad_arguments():
    data = _data([3])
    with pytest.raises(ValueError):
        make_slices(data, 4)
    with pytest.raises(ValueError):
        make_slices(data, 0)
    with pytest.raises(ValueError):
        make_slices(data, 2, mode="random")


def test_block_dataset_items_and_collation():
    data = _data([3, 2], block_size=5)
    ds = BlockDataset(data)
    assert len(ds) == 5
    item = ds[2]
    assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (5,)
    assert torch.equal(item["input_ids"], torch.full((5,), 2))
    assert torch.equal(item["labels"], item["input_ids"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["input_ids"].shape == (4, 5) and batch["labels"].shape == (4, 5)

    masked = BlockDataset(_data([3, 2], block_size=5, labels=True))[1]
    assert masked["labels"][0].item() == -100
    assert torch.equal(masked["labels"][1:], masked["input_ids"][1:])
