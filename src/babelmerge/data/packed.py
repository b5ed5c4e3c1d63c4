"""``PackedData``: fixed-length token rows (blocks), each tagged with the source it was cut from."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = -100  # label value the loss ignores (Hugging Face convention)


@dataclass(eq=False)
class PackedData:
    """Blocks of ``block_size`` tokens ready for causal-LM training.

    ``input_ids``: int32 ``[n_blocks, block_size]``. ``source``: int16 ``[n_blocks]``, the index into
    ``source_names`` of the source the block was cut from (a block never mixes sources).
    ``labels``: int32 like ``input_ids`` with ``-100`` where no loss is taken, or ``None`` meaning the
    labels are the ``input_ids``. ``cache_hit`` (set by :func:`prepare_data`) tells per source whether
    its blocks were read from the on-disk cache instead of being tokenized; ``stats`` (also set by
    :func:`prepare_data`) holds per source the counts of its preparation (documents/tokens/blocks for
    text; examples, truncated and dropped examples, rows and tokens for chat). Compare instances array
    by array (``==`` is identity, as numpy arrays have no single truth value).

    Chat (instruction) data also sets:

    - ``row_tokens``: int32 ``[n_blocks]``, the real tokens at the start of each row; the rest of the
      row is padding (pad id, label -100). ``None`` means every row is full (text data).
    - ``position_ids``: int32 like ``input_ids`` when several examples are packed into one row: each
      example's positions restart at 0 (the padding tail forms its own run from 0). transformers then
      builds a block-diagonal causal mask so packed examples do not see each other -- provided the model
      runs without ``attention_mask`` and without a KV cache (``model.config.use_cache = False``:
      with a cache, even an empty one, transformers skips the packed-sequence detection). ``None``
      means positions ``0..block_size-1`` (the model's default).
    """

    input_ids: np.ndarray
    source: np.ndarray
    source_names: list[str]
    labels: np.ndarray | None = None
    cache_hit: dict[str, bool] = field(default_factory=dict)
    position_ids: np.ndarray | None = None
    row_tokens: np.ndarray | None = None
    stats: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input_ids = np.asarray(self.input_ids, dtype=np.int32)
        self.source = np.asarray(self.source, dtype=np.int16)
        if self.input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [n_blocks, block_size], got shape {self.input_ids.shape}")
        if self.source.shape != (len(self.input_ids),):
            raise ValueError(f"source has shape {self.source.shape}, expected ({len(self.input_ids)},)")
        if len(self.source) and (self.source.min() < 0 or self.source.max() >= len(self.source_names)):
            raise ValueError(f"source indices out of range for {len(self.source_names)} source names")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int32)
            if self.labels.shape != self.input_ids.shape:
                raise ValueError(
                    f"labels shape {self.labels.shape} differs from input_ids {self.input_ids.shape}"
                )
        if self.position_ids is not None:
            self.position_ids = np.asarray(self.position_ids, dtype=np.int32)
            if self.position_ids.shape != self.input_ids.shape:
                raise ValueError(
                    f"position_ids shape {self.position_ids.shape} differs from input_ids {self.input_ids.shape}"
                )
        if self.row_tokens is not None:
            self.row_tokens = np.asarray(self.row_tokens, dtype=np.int32)
            if self.row_tokens.shape != (len(self.input_ids),):
                raise ValueError(
                    f"row_tokens has shape {self.row_tokens.shape}, expected ({len(self.input_ids)},)"
                )

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def block_size(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens: all of ``input_ids`` unless ``row_tokens`` says otherwise."""
        return int(self.input_ids.size) if self.row_tokens is None else int(self.row_tokens.sum())

    def subset(self, idx: np.ndarray) -> PackedData:
        """The blocks at ``idx`` (integer indices or boolean mask), in that order."""
        idx = np.asarray(idx)
        return PackedData(
            input_ids=self.input_ids[idx],
            source=self.source[idx],
            source_names=list(self.source_names),
            labels=None if self.labels is None else self.labels[idx],
            position_ids=None if self.position_ids is None else self.position_ids[idx],
            row_tokens=None if self.row_tokens is None else self.row_tokens[idx],
        )

    def source_token_shares(self) -> dict[str, float]:
        """Fraction of the real tokens coming from each source (for full blocks: of the blocks); 0.0 for
        absent sources."""
        weights = None if self.row_tokens is None else self.row_tokens.astype(np.int64)
        counts = np.bincount(self.source.astype(np.int64), weights=weights, minlength=len(self.source_names))
        total = max(int(counts.sum()), 1)
        return {name: int(c) / total for name, c in zip(self.source_names, counts)}

    def label_array(self) -> np.ndarray:
        """The labels, materialised: ``labels`` or a copy of ``input_ids``."""
        return self.input_ids.copy() if self.labels is None else self.labels
