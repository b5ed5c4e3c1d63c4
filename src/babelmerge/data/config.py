"""Configuration of the data pipeline: which sources, in which token shares, packed how.

Both models are pydantic with ``extra="forbid"`` so a misspelt key fails at load time, before any
file is read or any text is tokenized.

``DataConfig.format`` picks the kind of data: ``"text"`` (continued pre-training on raw text, the
default) or ``"chat"`` (instruction tuning on conversations, see :mod:`babelmerge.data.conversations`).
"""

from __future__ import annotations

import glob
import itertools
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SOURCES = 2**15 - 1  # ``PackedData.source`` is int16


class SourceConfig(BaseModel):
    """One text source of the mixture: a local file/folder/glob, or a Hugging Face dataset.

    Local formats (chosen by suffix): ``.txt`` (one document per non-blank line), ``.jsonl``
    (one JSON object per line, text in ``text_field``) and ``.parquet`` (column ``text_field``).

    For ``format: chat`` data (``.jsonl``, ``.parquet`` or a Hugging Face dataset) every record holds
    either ``messages_field`` (a list of ``{"role", "content"}`` with roles system/user/assistant) or
    both ``prompt_field`` and ``response_field`` (one user turn and one assistant turn).
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    path: str | None = None
    hf_dataset: str | None = None
    hf_config: str | None = None
    split: str = "train"
    streaming: bool = False
    text_field: str = "text"
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    response_field: str = "response"
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
    """The mixture: sources with token ratios, the total token budget and the block length.

    ``format: text`` (default): documents are tokenized, EOS-separated and cut into full blocks of
    ``block_size`` tokens. ``format: chat``: every conversation becomes one example (rendered with the
    tokenizer's chat template, loss on assistant tokens only) of at most ``max_length`` tokens (default
    ``block_size``; longer ones are truncated and counted); rows are ``block_size`` tokens, either one
    example per row right-padded (``packing: false``) or several whole examples per row
    (``packing: true``, with ``position_ids`` restarting at 0 for each example). For chat data
    ``token_budget`` and the ratios count real tokens (prompt and response, not padding).
    """

    model_config = ConfigDict(extra="forbid")

    sources: list[SourceConfig] = Field(min_length=1, max_length=MAX_SOURCES)
    token_budget: int | None = Field(default=None, gt=0)
    block_size: int = Field(default=1024, ge=2)
    seed: int = 0
    cache_dir: str | None = None
    num_proc: int = Field(default=1, ge=1)
    batch_size: int = Field(default=1000, ge=1)
    format: Literal["text", "chat"] = "text"
    #: chat only: the longest example kept (longer ones are truncated); default ``block_size``.
    max_length: int | None = Field(default=None, ge=2)
    #: chat only: pack several whole examples per row instead of one padded example per row.
    packing: bool = False

    @model_validator(mode="after")
    def _checks(self) -> DataConfig:
        if self.format == "text" and (self.max_length is not None or self.packing):
            raise ValueError("'max_length' and 'packing' apply to format 'chat' only")
        if self.max_length is not None:
            if self.max_length > self.block_size:
                raise ValueError(
                    f"max_length {self.max_length} exceeds block_size {self.block_size} (the row length)"
                )
            if not self.packing and self.max_length != self.block_size:
                raise ValueError(
                    f"max_length {self.max_length} differs from block_size {self.block_size}: without packing "
                    "every row holds one example, so set only block_size (or enable packing)"
                )
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
    def example_max_length(self) -> int:
        """The longest chat example kept: ``max_length``, else ``block_size``."""
        return self.block_size if self.max_length is None else self.max_length

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
