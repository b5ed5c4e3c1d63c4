"""``prepare_data``: sources -> tokens -> per-source blocks (cached) -> the seeded mixture.

Text data (``format: text``) becomes full blocks of EOS-separated documents; chat data (``format: chat``)
becomes rows of whole examples with labels on the assistant tokens only (see :func:`prepare_data`).
"""

from __future__ import annotations

import logging

import numpy as np

from babelmerge.chat import chat_template
from babelmerge.errors import BabelmergeError

from .cache import cache_key, load_entry, load_packed, save_entry, save_packed
from .chat_encoding import check_template, encode_conversations
from .config import DataConfig, SourceConfig
from .conversations import check_chat_files, load_conversations
from .mixture import draw_mixture, draw_rows, plan_mixture, token_targets
from .packed import PackedData
from .packing import pack_blocks, pack_examples, pad_examples, truncate_examples
from .sources import load_documents, source_identity
from .tokenization import eos_id, tokenize_documents, tokenizer_fingerprint

CHAT_FORMAT = 1  # bump when the chat rendering, masking or row layout changes

log = logging.getLogger(__name__)


def prepare_data(cfg: DataConfig, tokenizer) -> PackedData:
    """Build the packed training mixture described by ``cfg`` with ``tokenizer`` (a HF fast tokenizer).

    Every source is read, tokenized (EOS after each document) and packed into ``cfg.block_size``-token
    blocks on its own, so no block mixes sources; the packed blocks are cached on disk. Then
    ``token_budget // block_size`` blocks are drawn with per-source counts following the ratios, and
    shuffled, all seeded by ``cfg.seed``. ``result.cache_hit[name]`` says which sources came from the cache.

    Chat data (``cfg.format == "chat"``): every conversation is rendered with the tokenizer's chat template
    (or :data:`babelmerge.chat.DEFAULT_CHAT_TEMPLATE`) and tokenized; ``labels`` keep the assistant tokens
    (content + closing EOS) and are -100 elsewhere; examples longer than ``cfg.example_max_length`` are
    truncated (counted in ``result.stats[name]["n_truncated"]``; those left without any assistant token
    are dropped, ``"n_dropped"``). Rows are ``block_size`` tokens: one right-padded example each, or
    (``cfg.packing``) whole examples bin-packed with ``position_ids`` restarting per example. Padding uses
    the tokenizer's pad id (else EOS) with label -100; ``row_tokens`` counts each row's real tokens.
    ``token_budget`` and the ratios count real tokens (see :mod:`babelmerge.data.mixture`). The cache key
    covers the template, ``max_length``, ``packing`` and the pad id.
    """
    if cfg.format == "chat":
        return _prepare_chat(cfg, tokenizer)
    eos_id(tokenizer)  # fail before any work on a tokenizer without EOS
    fingerprint = tokenizer_fingerprint(tokenizer)
    # Resolving identities checks every local path before the first source is tokenized.
    keys = [cache_key(source_identity(src), fingerprint, cfg.block_size) for src in cfg.sources]
    cache_dir = cfg.resolved_cache_dir()

    names = [src.label for src in cfg.sources]
    blocks, labels, hits, stats = [], [], {}, {}
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
        stats[src.label] = {k: meta[k] for k in ("n_documents", "n_tokens", "n_blocks") if k in meta}

    counts = plan_mixture([len(b) for b in blocks], cfg.ratios, names, cfg.block_size, cfg.token_budget)
    data = draw_mixture(blocks, labels, counts, names, cfg.seed)
    data.cache_hit = hits
    data.stats = stats
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


def pad_id(tokenizer) -> int:
    """The id chat rows are padded with: the tokenizer's pad token, else EOS (padding is never trained)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return eos_id(tokenizer) if pad is None else int(pad)


def _chat_settings(cfg: DataConfig, tokenizer) -> dict:
    """Everything besides the source and the tokenizer's vocabulary that decides a chat source's rows."""
    return {
        "chat_format": CHAT_FORMAT,
        "template": chat_template(tokenizer),
        "special_tokens": [tokenizer.bos_token, tokenizer.eos_token],
        "max_length": cfg.example_max_length,
        "packing": cfg.packing,
        "pad_id": pad_id(tokenizer),
    }


def _prepare_chat(cfg: DataConfig, tokenizer) -> PackedData:
    """``prepare_data`` for ``format: chat``: per-source example rows (cached), then the token mixture."""
    eos_id(tokenizer)
    fingerprint = tokenizer_fingerprint(tokenizer)
    settings = _chat_settings(cfg, tokenizer)
    check_template(tokenizer)  # checks before the first source is read
    for src in cfg.sources:
        check_chat_files(src)
    keys = [
        cache_key(source_identity(src, "chat"), fingerprint, cfg.block_size, settings) for src in cfg.sources
    ]
    cache_dir = cfg.resolved_cache_dir()
    parts, hits, stats = [], {}, {}
    for src, key in zip(cfg.sources, keys):
        cached = load_entry(cache_dir, key)
        if cached is not None and not {"labels", "row_tokens"} <= set(cached[0]):
            cached = None  # not a complete chat entry: rebuild it
        hits[src.label] = cached is not None
        if cached is None:
            arrays, meta = _chat_rows(src, tokenizer, cfg, settings["pad_id"])
            save_entry(cache_dir, key, arrays, meta)
        else:
            arrays, meta = cached
        stats[src.label] = {k: meta[k] for k in _CHAT_STATS}
        log.info(
            "source %r: %d examples (%d truncated to %d tokens, %d dropped) in %d rows (%s)",
            src.label,
            meta["n_examples"],
            meta["n_truncated"],
            cfg.example_max_length,
            meta["n_dropped"],
            meta["n_rows"],
            "cache hit" if cached is not None else "tokenized",
        )
        parts.append(
            PackedData(source=np.zeros(len(arrays["input_ids"])), source_names=[src.label], **arrays)
        )

    names = [src.label for src in cfg.sources]
    targets = token_targets([p.n_tokens for p in parts], cfg.ratios, names, cfg.token_budget)
    data = draw_rows(parts, targets, names, cfg.seed)
    data.cache_hit = hits
    data.stats = stats
    return data


_CHAT_STATS = ("n_examples", "n_truncated", "n_dropped", "n_rows", "n_tokens", "n_label_tokens")


def _chat_rows(src: SourceConfig, tokenizer, cfg: DataConfig, pad: int) -> tuple[dict[str, np.ndarray], dict]:
    """Read, render, tokenize, truncate and lay out one chat source in rows."""
    convs = load_conversations(src)
    examples = encode_conversations(
        convs,
        tokenizer,
        eos_id(tokenizer),
        source=src.label,
        batch_size=cfg.batch_size,
        num_proc=cfg.num_proc,
    )
    kept, n_truncated, n_dropped = truncate_examples(examples, cfg.example_max_length)
    if not kept:
        raise BabelmergeError(
            f"source {src.label!r}: all {len(examples)} examples lose their response when truncated to "
            f"max_length {cfg.example_max_length}"
        )
    layout = pack_examples if cfg.packing else pad_examples
    rows = layout(kept, cfg.block_size, pad)
    arrays = {"input_ids": rows.input_ids, "labels": rows.labels, "row_tokens": rows.row_tokens}
    if rows.position_ids is not None:
        arrays["position_ids"] = rows.position_ids
    meta = {
        "name": src.label,
        "n_examples": len(examples),
        "n_truncated": n_truncated,
        "n_dropped": n_dropped,
        "n_rows": len(rows.input_ids),
        "n_tokens": int(rows.row_tokens.sum()),
        "n_label_tokens": int((rows.labels != -100).sum()),
        "block_size": cfg.block_size,
        "source": source_identity(src, "chat"),
    }
    return arrays, meta
