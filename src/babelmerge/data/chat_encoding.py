"""Turning conversations into token ids with labels on the assistant's tokens only.

A conversation is rendered with :func:`babelmerge.chat.render` (the tokenizer's chat template, or
babelmerge's documented default for base models without one), and tokenized once as a whole without
adding special tokens (the template writes BOS/EOS itself), i.e. exactly the ids that
``apply_chat_template(..., tokenize=True)`` gives.

Finding the assistant tokens: for assistant turn ``i`` the template is rendered twice more, for the
messages before it with the generation prompt (``add_generation_prompt=True``) and for the messages up to
and including it. Both must be prefixes of the full rendering (a template that rewrites earlier turns
cannot be trained turn by turn and is rejected); the turn's span of characters lies between their
ends. Labelled are the tokens overlapping that span (character offsets from the fast tokenizer), up
to and including the first EOS in it: the assistant content plus the closing EOS, while anything the
template writes after EOS (the default template's newline) stays masked, as does every system, user
and template token. A token straddling the span's start (possible when a template ends the
generation prompt with a space that BPE merges into the first content word) counts as assistant
token. If the template puts no EOS into the turn, the whole span is labelled (e.g. ChatML's
``<|im_end|>``, which is then what the model learns to stop with). Every assistant turn is trained.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from babelmerge.chat import render
from babelmerge.errors import BabelmergeError

from .conversations import Conversation
from .packed import IGNORE_INDEX


class TemplateError(Exception):
    """The template cannot render a conversation, or renders it inconsistently (turned into a
    :class:`BabelmergeError` that names the source by :func:`encode_conversations`)."""


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the ``[start, end)`` character span of each assistant turn."""
    try:
        text = render(tokenizer, messages)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            head = render(tokenizer, messages[:i], add_generation_prompt=True)
            upto = text if i == len(messages) - 1 else render(tokenizer, messages[: i + 1])
            if not (text.startswith(upto) and upto.startswith(head)):
                raise TemplateError(
                    f"the rendering up to assistant message {i} is not a prefix of the whole conversation "
                    "(the template rewrites earlier turns), so the assistant tokens cannot be located"
                )
            if len(upto) == len(head):
                raise TemplateError(f"the template renders no text for assistant message {i}")
            spans.append((len(head), len(upto)))
    except TemplateError:
        raise
    except Exception as e:  # jinja2 TemplateError (incl. raise_exception), TypeError, ValueError, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise TemplateError(f"{type(e).__name__}: {msg}" if msg else type(e).__name__) from None
    return text, spans


PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def check_template(tokenizer) -> None:
    """Render a two-turn probe conversation, so that a broken template fails before any source is read."""
    try:
        assistant_spans(tokenizer, PROBE)
    except TemplateError as e:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise BabelmergeError(
            f"the chat template of tokenizer {name!r} cannot render a user/assistant exchange ({e})"
        ) from None


def assistant_labels(
    ids: np.ndarray, offsets: np.ndarray, spans: Sequence[tuple[int, int]], eos: int
) -> np.ndarray:
    """Labels for one tokenized conversation: ``ids`` on assistant tokens (see the module docstring),
    ``-100`` elsewhere. ``offsets`` is ``[n_tokens, 2]`` character ``[start, end)`` per token."""
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
    starts, ends = offsets[:, 0], offsets[:, 1]
    for a, b in spans:
        idx = np.flatnonzero((starts < b) & (ends > a))
        stop = np.flatnonzero(ids[idx] == eos)
        if len(stop):
            idx = idx[: stop[0] + 1]
        labels[idx] = ids[idx]
    return labels


def encode_conversations(
    convs: Sequence[Conversation],
    tokenizer,
    eos: int,
    *,
    source: str,
    batch_size: int = 1000,
    num_proc: int = 1,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(input_ids, labels)`` int32 arrays per conversation, in order.

    Rendering is Python (jinja, the slow part), tokenization goes through the Rust backend in batches of
    ``batch_size``. ``num_proc`` worker processes (``datasets.Dataset.map``) are used only when every
    worker gets at least one full batch; the result is the same either way.
    """
    procs = num_proc if num_proc > 1 and len(convs) >= num_proc * batch_size else None
    if procs is None:
        return _encode_serial(convs, tokenizer, eos, source=source, batch_size=batch_size)
    import datasets

    table = datasets.Dataset.from_dict(
        {"where": [c.where for c in convs], "messages": [json.dumps(c.messages) for c in convs]}
    )
    encoded = table.map(
        _encode_batch,
        batched=True,
        batch_size=batch_size,
        num_proc=procs,
        remove_columns=table.column_names,
        fn_kwargs={"tokenizer": tokenizer, "eos": eos, "source": source},
        features=datasets.Features(
            {
                "input_ids": datasets.List(datasets.Value("int32")),
                "labels": datasets.List(datasets.Value("int32")),
            }
        ),
        keep_in_memory=True,
        load_from_cache_file=False,
        desc="render and tokenize",
    )
    columns = [_ragged(encoded.data.column(name)) for name in ("input_ids", "labels")]
    return list(zip(*columns))


def _ragged(column) -> list[np.ndarray]:
    """An arrow ``list<int32>`` column as one numpy array per row (views into one flat array)."""
    flat = column.combine_chunks()
    offsets = flat.offsets.to_numpy()
    values = flat.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def _encode_batch(batch: dict, tokenizer, eos: int, source: str) -> dict:
    convs = [Conversation(w, json.loads(m)) for w, m in zip(batch["where"], batch["messages"])]
    pairs = _encode_serial(convs, tokenizer, eos, source=source, batch_size=len(convs))
    return {"input_ids": [p[0] for p in pairs], "labels": [p[1] for p in pairs]}


def _encode_serial(
    convs: Sequence[Conversation], tokenizer, eos: int, *, source: str, batch_size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    backend = tokenizer.backend_tokenizer
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for lo in range(0, len(convs), batch_size):
        batch = convs[lo : lo + batch_size]
        texts, spans = [], []
        for conv in batch:
            try:
                text, sp = assistant_spans(tokenizer, conv.messages)
            except TemplateError as e:
                raise BabelmergeError(
                    f"source {source!r}, {conv.where}: the chat template cannot render the conversation ({e})"
                ) from None
            texts.append(text)
            spans.append(sp)
        for enc, sp in zip(backend.encode_batch(texts, add_special_tokens=False), spans):
            ids = np.asarray(enc.ids, dtype=np.int32)
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            out.append((ids, assistant_labels(ids, offsets, sp, eos)))
    return out
