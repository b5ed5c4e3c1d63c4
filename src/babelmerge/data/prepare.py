"""``prepare_data``: sources -> tokens -> per-source blocks (cached) -> the seeded mixture."""

from __future__ import annotations

import logging

import numpy as np

from babelmerge.errors import BabelmergeError

from .cache import cache_key, load_packed, save_packed
from .config import DataConfig, SourceConfig
from .mixture import draw_mixture, plan_mixture
from .packed import PackedData
from .packing import pack_blocks
from .sources import load_documents, source_identity
from .tokenization import eos_id, tokenize_documents, tokenizer_fingerprint

log = logging.getLogger(__name__)


def prepare_data(cfg: DataConfig, tokenizer) -> PackedData:
    """Build the packed training mixture described by ``cfg`` with ``tokenizer`` (a HF fast tokenizer).

    Every source is read, tokenized (EOS after each document) and packed into ``cfg.block_size``-token
    blocks on its own, so no block mixes sources; the packed blocks are cached on disk. Then
    ``token_budget // block_size`` blocks are drawn with per-source counts following the ratios, and
    shuffled, all seeded by ``cfg.seed``. ``result.cache_hit[name]`` says which sources came from the cache.
    """
    eos_id(tokenizer)  # fail before any work on a tokenizer without EOS
    fingerprint = tokenizer_fingerprint(tokenizer)
    # Resolving identities checks every local path before the first source is tokenized.
    keys = [cache_key(source_identity(src), fingerprint, cfg.block_size) for src in cfg.sources]
    cache_dir = cfg.resolved_cache_dir()

    names = [src.label for src in cfg.sources]
    blocks, labels, hits = [], [], {}
    for src, key in zip(cfg.sources, keys):
        cached = load_packed(cache_dir, key)
        hits[src.label] = cached is not None
        if cached is None:
            ids, lab, meta = _pack_source(src, tokenizer, cfg)
            save_packed(cache_dir, key, ids, lab, meta)
        else:
            ids, lab, meta = cached
        log.info(
            "source %r: %d blocks of %d tokens (%s)",
            src.label,
            len(ids),
            cfg.block_size,
            "cache hit" if cached is not None else "tokenized",
        )
        blocks.append(ids)
        labels.append(lab)

    counts = plan_mixture([len(b) for b in blocks], cfg.ratios, names, cfg.block_size, cfg.token_budget)
    data = draw_mixture(blocks, labels, counts, names, cfg.seed)
    data.cache_hit = hits
    return data


def _pack_source(src: SourceConfig, tokenizer, cfg: DataConfig) -> tuple[np.ndarray, None, dict]:
    """Read, tokenize and pack one source."""
    docs = load_documents(src)
    ids = tokenize_documents(docs, tokenizer, batch_size=cfg.batch_size, num_proc=cfg.num_proc)
    blocks, _ = pack_blocks(ids, cfg.block_size)
    if len(blocks) == 0:
        raise BabelmergeError(
            f"source {src.label!r} has only {len(ids)} tokens, less than one block of {cfg.block_size}"
        )
    meta = {
        "name": src.label,
        "n_documents": len(docs),
        "n_tokens": int(len(ids)),
        "n_blocks": int(len(blocks)),
        "block_size": cfg.block_size,
        "source": source_identity(src),
    }
    return blocks, None, meta
