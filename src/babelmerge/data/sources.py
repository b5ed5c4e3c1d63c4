"""Reading the documents of one source into a ``datasets.Dataset`` with a single ``text`` column.

Local files are parsed here (not by ``datasets.load_dataset``) so that a bad line is reported as
``file:line``. Blank documents are dropped; a source left without any text is an error.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from babelmerge.errors import BabelmergeError

from .config import SourceConfig

SUFFIXES = (".txt", ".jsonl", ".parquet")
_CHUNK = 50_000  # documents per arrow chunk while reading


def resolve_files(src: SourceConfig) -> list[Path]:
    """The files of a local source, sorted: the file itself, the supported files of a folder, or a glob's matches."""
    assert src.path is not None
    path = Path(src.path).expanduser()
    if glob.has_magic(src.path):
        files = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
        if not files:
            raise BabelmergeError(f"source {src.label!r}: no file matches {src.path!r}")
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise BabelmergeError(
                f"source {src.label!r}: folder {src.path} holds no {'/'.join(SUFFIXES)} file"
            )
    elif path.is_file():
        files = [path]
    else:
        raise BabelmergeError(f"source {src.label!r}: path {src.path} does not exist")
    for f in files:
        if f.suffix not in SUFFIXES:
            raise BabelmergeError(
                f"source {src.label!r}: {f} has an unsupported suffix (use {', '.join(SUFFIXES)})"
            )
    return files


def source_identity(src: SourceConfig, format: str = "text") -> dict:
    """What determines a source's text, for the cache key: files with size and mtime, or the dataset id,
    and the fields read (``text_field``; for ``format="chat"`` the messages/prompt/response fields)."""
    if src.path is not None:
        files = [
            {"file": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            for f in resolve_files(src)
            for st in [f.stat()]
        ]
        identity = {"files": files}
    else:
        identity = {"hf_dataset": src.hf_dataset, "hf_config": src.hf_config, "split": src.split}
    if format == "chat":
        identity["fields"] = [src.messages_field, src.prompt_field, src.response_field]
    else:
        identity["text_field"] = src.text_field
    return identity


def load_documents(src: SourceConfig):
    """All non-blank documents of ``src`` as a ``datasets.Dataset`` with one string column ``text``."""
    import datasets

    if src.path is not None:
        chunks = [c for f in resolve_files(src) for c in _read_file(src, f)]
    else:
        chunks = list(_read_hf(src))
    chunks = [c for c in (_drop_blank(c) for c in chunks) if len(c)]
    if not chunks:
        where = src.path if src.path is not None else f"dataset {src.hf_dataset!r}"
        raise BabelmergeError(f"source {src.label!r}: no text in {where}")
    return datasets.Dataset.from_dict({"text": pa.chunked_array(chunks, type=pa.string())})


def _drop_blank(arr: pa.Array) -> pa.Array:
    """Remove null and whitespace-only strings."""
    arr = pc.drop_null(arr)
    return arr.filter(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0))


def _batched(items: Iterable[str]) -> Iterator[pa.Array]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == _CHUNK:
            yield pa.array(batch, type=pa.string())
            batch = []
    if batch:
        yield pa.array(batch, type=pa.string())


def _read_file(src: SourceConfig, path: Path) -> Iterator[pa.Array]:
    if path.suffix == ".parquet":
        yield from _read_parquet(src, path)
    elif path.suffix == ".jsonl":
        yield from _batched(_jsonl_texts(src, path))
    else:
        yield from _batched(_txt_lines(path))


def _txt_lines(path: Path) -> Iterator[str]:
    """One document per line, line ends (``\\n`` or ``\\r\\n``) removed; a non-UTF-8 line is an error."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError as e:
                raise BabelmergeError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from None
            yield line


def jsonl_records(path: Path) -> Iterator[tuple[int, object]]:
    """``(line number, parsed JSON)`` for every non-blank line; a bad line is an error naming ``file:line``."""
    for lineno, line in enumerate(_txt_lines(path), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise BabelmergeError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def _jsonl_texts(src: SourceConfig, path: Path) -> Iterator[str]:
    """The ``text_field`` of every JSON object, one per line; blank lines are skipped."""
    for lineno, obj in jsonl_records(path):
        if not isinstance(obj, dict):
            raise BabelmergeError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        if src.text_field not in obj:
            keys = ", ".join(list(obj)[:10]) or "none"
            raise BabelmergeError(f"{path}:{lineno}: no field {src.text_field!r} (keys: {keys})")
        text = obj[src.text_field]
        if text is None:
            continue
        if not isinstance(text, str):
            raise BabelmergeError(
                f"{path}:{lineno}: field {src.text_field!r} is a {type(text).__name__}, not a string"
            )
        yield text


def _read_parquet(src: SourceConfig, path: Path) -> Iterator[pa.Array]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise BabelmergeError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if src.text_field not in names:
        raise BabelmergeError(f"{path}: no column {src.text_field!r} (columns: {', '.join(names)})")
    col_type = pf.schema_arrow.field(src.text_field).type
    if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
        raise BabelmergeError(f"{path}: column {src.text_field!r} has type {col_type}, not string")
    for batch in pf.iter_batches(batch_size=_CHUNK, columns=[src.text_field]):
        yield batch.column(0).cast(pa.string())


def load_hf_dataset(src: SourceConfig):
    """``datasets.load_dataset`` for a source with ``hf_dataset`` (a ``Dataset``, or an ``IterableDataset``
    when ``streaming``); any failure becomes a one-line :class:`BabelmergeError` naming the dataset."""
    import datasets

    try:
        return datasets.load_dataset(src.hf_dataset, src.hf_config, split=src.split, streaming=src.streaming)
    except Exception as e:  # datasets raises many types; all mean "cannot load this dataset"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BabelmergeError(
            f"source {src.label!r}: cannot load dataset {src.hf_dataset!r} "
            f"(config {src.hf_config!r}, split {src.split!r}): {msg}"
        ) from None


def _read_hf(src: SourceConfig) -> Iterator[pa.Array]:
    """Documents of a Hugging Face dataset (downloaded or streamed); only ``text_field`` is kept."""
    import datasets

    ds = load_hf_dataset(src)
    columns = ds.column_names
    if columns is not None and src.text_field not in columns:
        raise BabelmergeError(
            f"source {src.label!r}: dataset {src.hf_dataset!r} has no field {src.text_field!r} "
            f"(fields: {', '.join(columns)})"
        )
    if isinstance(ds, datasets.Dataset):
        # arrow batches honour any row selection (indices mapping) the dataset carries
        for table in ds.select_columns([src.text_field]).with_format("arrow").iter(batch_size=_CHUNK):
            yield table.column(0).combine_chunks().cast(pa.string())
        return

    def texts() -> Iterator[str]:
        for i, row in enumerate(ds):
            if src.text_field not in row:
                raise BabelmergeError(
                    f"source {src.label!r}: row {i} of dataset {src.hf_dataset!r} has no field {src.text_field!r}"
                )
            if row[src.text_field] is not None:
                yield str(row[src.text_field])

    yield from _batched(texts())
