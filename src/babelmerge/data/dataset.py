"""``BlockDataset``: packed blocks as a ``torch.utils.data.Dataset`` for the Hugging Face ``Trainer``."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .packed import PackedData


class BlockDataset(Dataset):
    """Item ``i`` is ``{"input_ids", "labels"}``: int64 tensors of ``block_size`` tokens.

    Labels are the input ids unless ``data.labels`` masks some positions with ``-100``; the model
    shifts them for next-token prediction. Blocks are full, so no attention mask or padding is needed.
    """

    def __init__(self, data: PackedData):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(self.data.input_ids[i].astype("int64"))
        if self.data.labels is None:
            labels = ids.clone()
        else:
            labels = torch.from_numpy(self.data.labels[i].astype("int64"))
        return {"input_ids": ids, "labels": labels}
