"""The data pipeline: load text sources, tokenize, pack into blocks, mix by token ratios, slice for BaM.

Typical use::

    from babelmerge.data import DataConfig, SourceConfig, prepare_data, make_slices, BlockDataset

    cfg = DataConfig(sources=[SourceConfig(path="en.txt", ratio=0.25), SourceConfig(path="bg.txt", ratio=0.75)],
                     token_budget=10_000_000, block_size=1024)
    data = prepare_data(cfg, tokenizer)          # PackedData, cached per source on disk
    slices = make_slices(data, n_slices=4)       # equal, disjoint, same mixture in each
    train_ds = BlockDataset(slices[0])           # for transformers.Trainer
"""

from .config import DataConfig, SourceConfig
from .dataset import BlockDataset
from .packed import IGNORE_INDEX, PackedData
from .packing import pack_blocks
from .prepare import prepare_data
from .slicing import make_slices

__all__ = [
    "IGNORE_INDEX",
    "BlockDataset",
    "DataConfig",
    "PackedData",
    "SourceConfig",
    "make_slices",
    "pack_blocks",
    "prepare_data",
]
