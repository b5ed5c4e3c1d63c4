"""Tokenizing documents into one flat token stream, with EOS after every document.

Batches go through the fast (Rust) tokenizer; ``datasets.Dataset.map`` spreads them over ``num_proc``
processes when the input is big enough to pay for the processes. No BOS or other special token is
added: documents are separated by EOS only, the usual layout for packed causal-LM pre-training.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa

from babelmerge.errors import BabelmergeError


def eos_id(tokenizer) -> int:
    """The tokenizer's EOS id; a tokenizer without one cannot separate packed documents."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise BabelmergeError(f"tokenizer {name!r} has no EOS token; set tokenizer.eos_token")
    return int(eos)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides the token ids: the backend tokenizer's JSON and the EOS id."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise BabelmergeError(
            f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer (no backend JSON)"
        )
    payload = json.dumps({"backend": backend.to_str(), "eos": eos_id(tokenizer)}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _encode_batch(batch: dict, tokenizer, eos: int) -> dict:
    # The Rust backend directly (what ``tokenizer(...)`` calls too, minus the Python wrapping); the
    # ``_fast`` variant skips computing character offsets, which packing does not need.
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return {"input_ids": [enc.ids + [eos] for enc in encode(batch["text"], add_special_tokens=False)]}


def tokenize_documents(docs, tokenizer, *, batch_size: int = 1000, num_proc: int = 1) -> np.ndarray:
    """Token ids of all documents of ``docs`` (a ``datasets.Dataset`` with a ``text`` column), each
    followed by EOS, concatenated in document order into one int32 array.

    ``num_proc`` worker processes are used only when every worker gets at least one full batch.
    """
    import datasets

    eos = eos_id(tokenizer)
    procs = num_proc if num_proc > 1 and len(docs) >= num_proc * batch_size else None
    encoded = docs.map(
        _encode_batch,
        batched=True,
        batch_size=batch_size,
        num_proc=procs,
        remove_columns=docs.column_names,
        fn_kwargs={"tokenizer": tokenizer, "eos": eos},
        features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))}),
        keep_in_memory=True,
        load_from_cache_file=False,
        desc="tokenize",
    )
    column = encoded.data.column("input_ids")
    if column.num_chunks == 0:
        return np.zeros(0, dtype=np.int32)
    flat = pa.concat_arrays([chunk.flatten() for chunk in column.chunks])
    return flat.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
