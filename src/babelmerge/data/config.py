"""Configuration of the data pipeline: which sources, in which token shares, packed how.

Both models are pydantic with ``extra="forbid"`` so a misspelt key fails at load time, before any
file is read or any text is tokenized.
"""

from __future__ import annotations

import glob
import itertools
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SOURCES = 2**15 - 1  # ``PackedData.source`` is int16


class SourceConfig(BaseModel):
    """One text source of the mixture: a local file/folder/glob, or a Hugging Face dataset.

    Local formats (chosen by suffix): ``.txt`` (one document per non-blank line), ``.jsonl``
    (one JSON object per line, text in ``text_field``) and ``.parquet`` (column ``text_field``).
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    path: str | None = None
    hf_dataset: str | None = None
    hf_config: str | None = None
    split: str = "train"
    streaming: bool = False
    text_field: str = "text"
    ratio: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _one_origin(self) -> SourceConfig:
        if (self.path is None) == (self.hf_dataset is None):
            what = self.name or self.path or self.hf_dataset or "<unnamed>"
            raise ValueError(f"source {what!r}: set exactly one of 'path' or 'hf_dataset'")
        if self.name is not None and not self.name.strip():
            raise ValueError("source name must not be empty")
        return self

    @property
    def label(self) -> str:
        """The source's display name: ``name``, else the file stem / folder name, else the dataset name."""
        if self.name:
            return self.name
        if self.path is not None:
            p = Path(self.path)
            if glob.has_magic(self.path):  # "corpus/bg/*.txt" -> "bg": the last folder before any wildcard
                fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), p.parts))
                return fixed[-1] if fixed else self.path
            return p.stem if p.suffix else p.name or self.path
        assert self.hf_dataset is not None
        return self.hf_dataset if self.hf_config is None else f"{self.hf_dataset}/{self.hf_config}"


class DataConfig(BaseModel):
    """The mixture: sources with token ratios, the total token budget and the block length."""

    model_config = ConfigDict(extra="forbid")

    sources: list[SourceConfig] = Field(min_length=1, max_length=MAX_SOURCES)
    token_budget: int | None = Field(default=None, gt=0)
    block_size: int = Field(default=1024, ge=2)
    seed: int = 0
    cache_dir: str | None = None
    num_proc: int = Field(default=1, ge=1)
    batch_size: int = Field(default=1000, ge=1)

    @model_validator(mode="after")
    def _checks(self) -> DataConfig:
        seen: set[str] = set()
        for src in self.sources:
            if src.label in seen:
                raise ValueError(f"two sources are named {src.label!r}; give them distinct 'name's")
            seen.add(src.label)
        if self.token_budget is not None and self.token_budget < self.block_size:
            raise ValueError(
                f"token_budget {self.token_budget} is smaller than one block (block_size {self.block_size})"
            )
        return self

    @property
    def ratios(self) -> list[float]:
        """Source ratios normalised to sum to 1."""
        total = sum(s.ratio for s in self.sources)
        return [s.ratio / total for s in self.sources]

    def resolved_cache_dir(self) -> Path:
        """``cache_dir``, else ``$BABELMERGE_CACHE/data``, else ``~/.cache/babelmerge/data``."""
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        return default_cache_root() / "data"


def default_cache_root() -> Path:
    """Root of babelmerge's caches: ``$BABELMERGE_CACHE`` or ``~/.cache/babelmerge``."""
    env = os.environ.get("BABELMERGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "babelmerge"
