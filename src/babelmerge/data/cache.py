"""On-disk cache of each source's packed blocks, so a second run skips reading and tokenizing.

An entry is a folder ``<cache_dir>/<key>/`` holding ``input_ids.npy`` (and ``labels.npy`` when the
blocks carry labels) plus ``meta.json``; it is built under a temporary name and renamed into place,
so an entry that exists is complete. Arrays are plain ``.npy`` read with ``allow_pickle=False``.
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


def cache_key(source_identity: dict, tokenizer_fingerprint: str, block_size: int) -> str:
    """Hash of everything that decides a source's packed blocks."""
    payload = {
        "format": CACHE_FORMAT,
        "source": source_identity,
        "tokenizer": tokenizer_fingerprint,
        "block_size": block_size,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def load_packed(cache_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray | None, dict] | None:
    """The cached ``(input_ids, labels, meta)`` for ``key`` (memory-mapped), or None on a miss."""
    entry = Path(cache_dir) / key
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        ids = np.load(entry / "input_ids.npy", mmap_mode="r", allow_pickle=False)
        labels = None
        if meta.get("has_labels"):
            labels = np.load(entry / "labels.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable cache entry %s: %s", entry, e)
        return None
    if ids.dtype != np.int32 or ids.ndim != 2 or (labels is not None and labels.shape != ids.shape):
        log.warning("ignoring malformed cache entry %s", entry)
        return None
    return ids, labels, meta


def save_packed(
    cache_dir: Path, key: str, input_ids: np.ndarray, labels: np.ndarray | None, meta: dict
) -> None:
    """Write an entry atomically; if another process wrote the same entry first, keep theirs."""
    final = Path(cache_dir) / key
    try:
        with atomic_dir(final) as tmp:
            np.save(tmp / "input_ids.npy", np.asarray(input_ids, dtype=np.int32), allow_pickle=False)
            if labels is not None:
                np.save(tmp / "labels.npy", np.asarray(labels, dtype=np.int32), allow_pickle=False)
            (tmp / "meta.json").write_text(
                json.dumps({**meta, "has_labels": labels is not None}, indent=2) + "\n", encoding="utf-8"
            )
    except OSError:  # FileExistsError, or ENOTEMPTY when another writer renamed first
        if not (final / "meta.json").is_file():
            raise
        log.info("cache entry %s was written concurrently; keeping the existing one", final)
