"""Held-out evaluation during training: mean next-token loss of a model on given text files.

Each file is read and tokenized like training data (one document a line, EOS after each, packed into
``block_size`` blocks); the first ``max_blocks`` blocks are kept, once, and reused after every merge so
the numbers are comparable across iterations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from babelmerge.data import SourceConfig, pack_blocks
from babelmerge.data.sources import load_documents
from babelmerge.data.tokenization import tokenize_documents
from babelmerge.errors import BabelmergeError


class HeldoutSet:
    """Token blocks of each held-out file, and the model's mean loss on them."""

    def __init__(self, blocks: dict[str, np.ndarray], batch_size: int):
        self.blocks = blocks
        self.batch_size = batch_size

    @classmethod
    def from_files(cls, files: list[str], tokenizer, block_size: int, max_blocks: int, batch_size: int):
        blocks = {}
        for f in files:
            ids = tokenize_documents(load_documents(SourceConfig(path=f)), tokenizer)
            packed, _ = pack_blocks(ids, block_size)
            if len(packed) == 0:
                raise BabelmergeError(
                    f"eval file {f} has {len(ids)} tokens, less than one block of {block_size}"
                )
            blocks[Path(f).name if Path(f).name not in blocks else f] = packed[:max_blocks]
        return cls(blocks, batch_size)

    @torch.no_grad()
    def losses(self, model_dir: str | Path) -> dict[str, float]:
        """Mean token loss per file of the model in ``model_dir`` (float32, eval mode)."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        out = {}
        for name, blocks in self.blocks.items():
            total, count = 0.0, 0
            for start in range(0, len(blocks), self.batch_size):
                ids = torch.from_numpy(blocks[start : start + self.batch_size].astype(np.int64))
                loss = model(input_ids=ids, labels=ids).loss  # mean over the batch's predicted tokens
                n = ids.shape[0] * (ids.shape[1] - 1)
                total += float(loss) * n
                count += n
            out[name] = total / count
        return out
