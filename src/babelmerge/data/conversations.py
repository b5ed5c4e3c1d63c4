"""Reading the conversations of one chat source: records -> validated ``messages`` lists.

A record is a JSON object (a ``.jsonl`` line, a ``.parquet`` row or a Hugging Face dataset row) with
either ``messages_field`` -- ``[{"role": ..., "content": ...}, ...]``, the chat convention with roles
``system``/``user``/``assistant`` -- or both ``prompt_field`` and ``response_field``, which become one
user turn and one assistant turn. Every conversation must contain an assistant turn (the only tokens
trained) with non-blank content, and may not start with one (there would be nothing to respond to).
A violation raises :class:`BabelmergeError` naming the record (``file:line``, ``file row i`` or
``dataset 'x' row i``). Blank ``.jsonl`` lines are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from babelmerge.errors import BabelmergeError

from .config import SourceConfig
from .sources import jsonl_records, load_hf_dataset, resolve_files

ROLES = ("system", "user", "assistant")
CHAT_SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class Conversation:
    """One validated conversation: ``messages`` (``role``/``content`` dicts) and where it was read (``where``)."""

    where: str
    messages: list[dict[str, str]]


def load_conversations(src: SourceConfig) -> list[Conversation]:
    """All conversations of ``src`` (local ``.jsonl``/``.parquet`` files or a Hugging Face dataset), validated."""
    convs = [Conversation(where, to_messages(record, src, where)) for where, record in _records(src)]
    if not convs:
        where = src.path if src.path is not None else f"dataset {src.hf_dataset!r}"
        raise BabelmergeError(f"source {src.label!r}: no conversation in {where}")
    return convs


def check_chat_files(src: SourceConfig) -> None:
    """Fail early if a local chat source holds a file that is not ``.jsonl``/``.parquet``."""
    if src.path is None:
        return
    for path in resolve_files(src):
        if path.suffix not in CHAT_SUFFIXES:
            raise BabelmergeError(
                f"source {src.label!r}: {path} is not a chat file (format 'chat' reads {', '.join(CHAT_SUFFIXES)})"
            )


def to_messages(record, src: SourceConfig, where: str) -> list[dict[str, str]]:
    """The conversation of one record as a list of ``{"role", "content"}``; see the module docstring."""
    if not isinstance(record, dict):
        raise BabelmergeError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if record.get(src.messages_field) is not None:
        raw = record[src.messages_field]
        if not isinstance(raw, list) or not raw:
            raise BabelmergeError(
                f"{where}: field {src.messages_field!r} must be a non-empty list of messages"
            )
        messages = [_message(m, j, src, where) for j, m in enumerate(raw)]
    elif src.prompt_field in record and src.response_field in record:
        messages = []
        for role, key in (("user", src.prompt_field), ("assistant", src.response_field)):
            if not isinstance(record[key], str):
                raise BabelmergeError(
                    f"{where}: field {key!r} is a {type(record[key]).__name__}, not a string"
                )
            messages.append({"role": role, "content": record[key]})
    else:
        keys = ", ".join(list(record)[:10]) or "none"
        raise BabelmergeError(
            f"{where}: no field {src.messages_field!r} and not both {src.prompt_field!r} and "
            f"{src.response_field!r} (keys: {keys})"
        )
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise BabelmergeError(f"{where}: the conversation has no assistant turn (roles: {', '.join(roles)})")
    if roles[0] == "assistant":
        raise BabelmergeError(
            f"{where}: the conversation starts with an assistant turn (nothing to respond to)"
        )
    for j, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip():
            raise BabelmergeError(f"{where}: empty response (assistant message {j})")
    return messages


def _message(m, j: int, src: SourceConfig, where: str) -> dict[str, str]:
    field = f"{src.messages_field}[{j}]"
    if not isinstance(m, dict) or "role" not in m or "content" not in m:
        raise BabelmergeError(f"{where}: {field} must be an object with 'role' and 'content'")
    if m["role"] not in ROLES:
        raise BabelmergeError(f"{where}: {field} has unknown role {m['role']!r} (use {', '.join(ROLES)})")
    if not isinstance(m["content"], str):
        raise BabelmergeError(f"{where}: {field} content is a {type(m['content']).__name__}, not a string")
    return {"role": m["role"], "content": m["content"]}


def _records(src: SourceConfig) -> Iterator[tuple[str, dict]]:
    """``(where, record)`` for every record of the source, in file order."""
    if src.hf_dataset is not None:
        yield from _hf_records(src)
        return
    for path in resolve_files(src):
        if path.suffix == ".jsonl":
            yield from _jsonl_records(path)
        elif path.suffix == ".parquet":
            yield from _parquet_records(src, path)
        else:
            raise BabelmergeError(
                f"source {src.label!r}: {path} is not a chat file (format 'chat' reads {', '.join(CHAT_SUFFIXES)})"
            )


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict]]:
    for lineno, obj in jsonl_records(path):
        yield f"{path}:{lineno}", obj


def _chat_columns(src: SourceConfig, names: list[str], what: str) -> list[str]:
    """The columns of a table that a chat source reads; an error if it has neither layout."""
    wanted = [c for c in (src.messages_field, src.prompt_field, src.response_field) if c in names]
    has_pair = src.prompt_field in names and src.response_field in names
    if src.messages_field not in names and not has_pair:
        raise BabelmergeError(
            f"{what}: no column {src.messages_field!r} and not both {src.prompt_field!r} and "
            f"{src.response_field!r} (columns: {', '.join(names)})"
        )
    return wanted


def _parquet_records(src: SourceConfig, path: Path) -> Iterator[tuple[str, dict]]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise BabelmergeError(f"{path}: not a readable parquet file ({e})") from None
    columns = _chat_columns(src, pf.schema_arrow.names, str(path))
    row = 0
    for batch in pf.iter_batches(batch_size=10_000, columns=columns):
        for record in batch.to_pylist():
            yield f"{path} row {row}", record
            row += 1


def _hf_records(src: SourceConfig) -> Iterator[tuple[str, dict]]:
    ds = load_hf_dataset(src)
    what = f"source {src.label!r}: dataset {src.hf_dataset!r}"
    if ds.column_names is not None:
        ds = ds.select_columns(_chat_columns(src, ds.column_names, what))
    for i, record in enumerate(ds):
        yield f"dataset {src.hf_dataset!r} row {i}", record
