"""The data pipeline: load text sources, tokenize, pack into blocks, mix by token ratios, slice for BaM.

Typical use::

    from babelmerge.data import DataConfig, SourceConfig, prepare_data, make_slices, BlockDataset

    cfg = DataConfig(sources=[SourceConfig(path="en.txt", ratio=0.25), SourceConfig(path="bg.txt", ratio=0.75)],
                     token_budget=10_000_000, block_size=1024)
    data = prepare_data(cfg, tokenizer)          # PackedData, cached per source on disk
    slices = make_slices(data, n_slices=4)       # equal, disjoint, same mixture in each
    train_ds = BlockDataset(slices[0])           # for transformers.Trainer

Instruction data (conversations; loss on the assistant's tokens only) uses the same calls::

    cfg = DataConfig(format="chat", packing=True, block_size=2048,
                     sources=[SourceConfig(path="bg_sft.jsonl", ratio=3), SourceConfig(path="en_sft.jsonl", ratio=1)])
    data = prepare_data(cfg, tokenizer)          # labels -100 on prompts, position_ids per packed example

(train packed chat rows with ``model.config.use_cache = False``; see :class:`PackedData`).
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
