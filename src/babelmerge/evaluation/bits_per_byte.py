"""Bits per byte of a causal LM on held-out text, with sliding windows for long documents.

Each document (one line of a text file) is scored on all of its tokens, the first one predicted from a start
token (BOS, or EOS when the tokenizer has no BOS). Its cost is the summed negative log-likelihood in nats;
bits per byte = Σ NLL / ln 2 / Σ UTF-8 bytes. Unlike loss per token it does not depend on the tokenizer, so it
compares languages, scripts and models with different vocabularies.

A document longer than ``max_length`` tokens is scored in windows of ``max_length`` tokens; every window after
the first scores only its last ``stride`` tokens and uses the tokens before them as context, so each token is
scored exactly once with at least ``max_length − stride`` tokens of context.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch


@dataclass
class TextScore:
    """Summed NLL (nats) over ``tokens`` tokens covering ``bytes`` UTF-8 bytes in ``docs`` documents."""

    nll: float
    tokens: int
    bytes: int
    docs: int

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes

    @property
    def loss(self) -> float:
        """Mean NLL per token (nats)."""
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def as_dict(self) -> dict:
        return {**asdict(self), "bpb": self.bits_per_byte, "loss": self.loss, "ppl": self.perplexity}


@dataclass(frozen=True)
class Window:
    """Token ids fed to the model, of which the last ``n_scored`` are scored."""

    ids: tuple[int, ...]
    n_scored: int


def windows_for(ids: Sequence[int], max_length: int, stride: int) -> list[Window]:
    """Split one document's ids (start token first) into scoring windows; every id after the first is scored once."""
    if not 0 < stride <= max_length - 1:
        raise ValueError(f"stride must be in [1, max_length - 1], got {stride} with max_length {max_length}")
    n = len(ids)
    out: list[Window] = []
    pos = 1  # index of the next token to score
    end = min(max_length, n)
    while pos < n:
        begin = max(0, end - max_length)
        out.append(Window(tuple(ids[begin:end]), end - pos))
        pos = end
        end = min(pos + stride, n)
    return out


def start_token(tokenizer) -> int:
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start documents with")
    return tid


@torch.no_grad()
def score_windows(
    model, windows: Sequence[Window], *, batch_size: int = 8, pad_id: int = 0, bf16: bool = False
) -> float:
    """Σ NLL (nats) of the scored tokens of every window. Windows are batched by length (right padding)."""
    device = next(model.parameters()).device
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].ids), reverse=True)
    total = 0.0
    for start in range(0, len(order), batch_size):
        batch = [windows[i] for i in order[start : start + batch_size]]
        width = max(len(w.ids) for w in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, w in enumerate(batch):
            n = len(w.ids)
            ids[row, :n] = torch.tensor(w.ids)
            mask[row, :n] = 1
            labels[row, n - w.n_scored : n] = ids[row, n - w.n_scored : n]
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, attention_mask=mask).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        target = labels[:, 1:]
        scored = target != -100
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total += float(-(picked * scored).sum())
    return total


def score_texts(
    model,
    tokenizer,
    docs: Iterable[str],
    *,
    max_length: int = 1024,
    stride: int | None = None,
    batch_size: int = 8,
    bf16: bool = False,
) -> TextScore:
    """Score documents (strings); empty ones are skipped. ``stride`` defaults to ``max_length // 2``."""
    stride = stride or max(1, max_length // 2)
    start = start_token(tokenizer)
    windows: list[Window] = []
    n_tokens = n_bytes = n_docs = 0
    for doc in docs:
        if not doc:
            continue
        ids = [start] + tokenizer(doc, add_special_tokens=False).input_ids
        windows.extend(windows_for(ids, max_length, stride))
        n_tokens += len(ids) - 1
        n_bytes += len(doc.encode("utf-8"))
        n_docs += 1
    if not n_docs:
        raise ValueError("no non-empty documents to score")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
    nll = score_windows(model, windows, batch_size=batch_size, pad_id=pad, bf16=bf16)
    return TextScore(nll=nll, tokens=n_tokens, bytes=n_bytes, docs=n_docs)
