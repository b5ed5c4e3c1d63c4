"""On-disk cache of each source's packed blocks, so a second run skips reading and tokenizing.

An entry is a folder ``<cache_dir>/<key>/`` holding one ``.npy`` per array (``input_ids.npy``, and
``labels.npy`` when the blocks carry labels; chat entries also ``position_ids.npy`` when packed and
``row_tokens.npy``) plus ``meta.json`` listing them; it is built under a temporary name and renamed
into place, so an entry that exists is complete. Arrays are plain ``.npy`` read with
``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from babelmerge.atomic import atomic_dir

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the packing or the file layout changes


def cache_key(
    source_identity: dict, tokenizer_fingerprint: str, block_size: int, extra: dict | None = None
) -> str:
    """Hash of everything that decides a source's packed blocks.

    ``extra`` holds further settings (for chat data: the template, ``max_length``, packing, pad id);
    ``None`` keeps the keys of text data as they always were.
    """
    payload = {
        "format": CACHE_FORMAT,
        "source": source_identity,
        "tokenizer": tokenizer_fingerprint,
        "block_size": block_size,
    }
    if extra is not None:
        payload["extra"] = extra
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def load_entry(cache_dir: Path, key: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """The cached ``(arrays, meta)`` for ``key`` (arrays memory-mapped), or None on a miss.

    Every array must be int32 with as many rows as ``input_ids`` (2-D arrays: its shape); anything
    else is treated as a miss (and logged), so a damaged entry is rebuilt rather than trusted.
    """
    entry = Path(cache_dir) / key
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        names = meta.get("arrays") or ["input_ids"] + (["labels"] if meta.get("has_labels") else [])
        arrays = {n: np.load(entry / f"{n}.npy", mmap_mode="r", allow_pickle=False) for n in names}
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable cache entry %s: %s", entry, e)
        return None
    ids = arrays.get("input_ids")
    ok = ids is not None and ids.ndim == 2
    for a in arrays.values():
        ok = (
            ok and a.dtype == np.int32 and (a.shape == ids.shape if a.ndim == 2 else a.shape == ids.shape[:1])
        )
    if not ok:
        log.warning("ignoring malformed cache entry %s", entry)
        return None
    return arrays, meta


def save_entry(cache_dir: Path, key: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write an entry of int32 ``arrays`` atomically; if another process wrote it first, keep theirs."""
    final = Path(cache_dir) / key
    try:
        with atomic_dir(final) as tmp:
            for name, a in arrays.items():
                np.save(tmp / f"{name}.npy", np.asarray(a, dtype=np.int32), allow_pickle=False)
            full_meta = {**meta, "arrays": list(arrays), "has_labels": "labels" in arrays}
            (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2) + "\n", encoding="utf-8")
    except OSError:  # FileExistsError, or ENOTEMPTY when another writer renamed first
        if not (final / "meta.json").is_file():
            raise
        log.info("cache entry %s was written concurrently; keeping the existing one", final)


def load_packed(cache_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray | None, dict] | None:
    """The cached ``(input_ids, labels, meta)`` for ``key`` (memory-mapped), or None on a miss."""
    found = load_entry(cache_dir, key)
    if found is None:
        return None
    arrays, meta = found
    return arrays["input_ids"], arrays.get("labels"), meta


def save_packed(
    cache_dir: Path, key: str, input_ids: np.ndarray, labels: np.ndarray | None, meta: dict
) -> None:
    """Write an entry of blocks (and labels) atomically; if another process wrote it first, keep theirs."""
    arrays = {"input_ids": input_ids} if labels is None else {"input_ids": input_ids, "labels": labels}
    save_entry(cache_dir, key, arrays, meta)
