"""``BlockDataset``: packed blocks as a ``torch.utils.data.Dataset`` for the Hugging Face ``Trainer``."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .packed import PackedData


class BlockDataset(Dataset):
    """Item ``i`` is ``{"input_ids", "labels"}`` (plus ``"position_ids"`` when ``data.position_ids`` is
    set): int64 tensors of ``block_size`` tokens.

    Labels are the input ids unless ``data.labels`` masks some positions with ``-100``; the model
    shifts them for next-token prediction. No attention mask is needed: text blocks are full, and chat
    rows are right-padded (real tokens never attend to the later padding in a causal LM, and padding
    carries label -100). Packed chat rows rely on ``position_ids`` for the per-example attention mask,
    which transformers applies only when the model runs without a KV cache (``model.config.use_cache =
    False``); see :class:`PackedData`.
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
        item = {"input_ids": ids, "labels": labels}
        if self.data.position_ids is not None:
            item["position_ids"] = torch.from_numpy(self.data.position_ids[i].astype("int64"))
        return item
