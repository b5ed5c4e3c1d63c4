"""``PackedData``: fixed-length token blocks, each tagged with the source it was cut from."""

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
    its blocks were read from the on-disk cache instead of being tokenized. Compare instances
    array by array (``==`` is identity, as numpy arrays have no single truth value).
    """

    input_ids: np.ndarray
    source: np.ndarray
    source_names: list[str]
    labels: np.ndarray | None = None
    cache_hit: dict[str, bool] = field(default_factory=dict)

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

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def block_size(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.size)

    def subset(self, idx: np.ndarray) -> PackedData:
        """The blocks at ``idx`` (integer indices or boolean mask), in that order."""
        idx = np.asarray(idx)
        return PackedData(
            input_ids=self.input_ids[idx],
            source=self.source[idx],
            source_names=list(self.source_names),
            labels=None if self.labels is None else self.labels[idx],
        )

    def source_token_shares(self) -> dict[str, float]:
        """Fraction of the tokens (equivalently blocks) coming from each source; 0.0 for absent sources."""
        counts = np.bincount(self.source.astype(np.int64), minlength=len(self.source_names))
        total = max(int(counts.sum()), 1)
        return {name: int(c) / total for name, c in zip(self.source_names, counts)}

    def label_array(self) -> np.ndarray:
        """The labels, materialised: ``labels`` or a copy of ``input_ids``."""
        return self.input_ids.copy() if self.labels is None else self.labels
