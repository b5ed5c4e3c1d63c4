"""Instruction accuracy: greedy generation on prompts with expected answers, scored offline.

Input: a JSONL file, one example per line, ``{"prompt": "...", "answer": "..."}`` (or ``"answers": [...]``, any of
which counts). The prompt is rendered as a user turn with the tokenizer's chat template (or babelmerge's default,
:mod:`babelmerge.chat`) and the model generates greedily. ``match="exact"`` compares the stripped generation with
the answer; ``match="contains"`` looks for the answer inside it; ``ignore_case`` compares case-folded text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..chat import render
from ..data.sources import jsonl_records
from ..errors import BabelmergeError


@dataclass(frozen=True)
class InstructionExample:
    prompt: str
    answers: tuple[str, ...]


def load_instruction_examples(path: str | Path) -> list[InstructionExample]:
    """Read prompts and expected answers; errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise BabelmergeError(f"{path}: no such file")
    out = []
    for i, row in jsonl_records(path):
        if not isinstance(row, dict) or "prompt" not in row or not ("answer" in row or "answers" in row):
            raise BabelmergeError(f"{path}:{i}: expected an object with 'prompt' and 'answer' (or 'answers')")
        answers = row.get("answers", [row.get("answer")])
        out.append(InstructionExample(str(row["prompt"]), tuple(str(a) for a in answers)))
    if not out:
        raise BabelmergeError(f"{path}: no examples")
    return out


def is_match(
    generated: str, answers: tuple[str, ...], *, match: str = "exact", ignore_case: bool = False
) -> bool:
    g = generated.strip()
    if ignore_case:
        g = g.casefold()
    for a in answers:
        a = a.strip().casefold() if ignore_case else a.strip()
        if (match == "exact" and g == a) or (match == "contains" and a in g):
            return True
    return False


@torch.no_grad()
def generate_answers(
    model, tokenizer, prompts: list[str], *, max_new_tokens: int = 32, batch_size: int = 8
) -> list[str]:
    """Greedy generations (new text only) for user-turn prompts, batched with left padding."""
    device = next(model.parameters()).device
    texts = [render(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        encoded = [
            tokenizer(t, add_special_tokens=False).input_ids for t in texts[start : start + batch_size]
        ]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, width - len(e) :] = torch.tensor(e)
            mask[row, width - len(e) :] = 1
        generated = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row in generated[:, width:]:
            out.append(tokenizer.decode(row, skip_special_tokens=True))
    return out


def instruction_accuracy(
    model,
    tokenizer,
    examples: list[InstructionExample],
    *,
    match: str = "exact",
    ignore_case: bool = False,
    max_new_tokens: int = 32,
    batch_size: int = 8,
) -> dict:
    """``{"accuracy", "correct", "total", "samples": [first few {prompt, generated, answers, correct}]}``."""
    if match not in ("exact", "contains"):
        raise BabelmergeError(f"match must be 'exact' or 'contains', got {match!r}")
    generated = generate_answers(
        model, tokenizer, [e.prompt for e in examples], max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    correct = [
        is_match(g, e.answers, match=match, ignore_case=ignore_case) for g, e in zip(generated, examples)
    ]
    samples = [
        {"prompt": e.prompt, "generated": g, "answers": list(e.answers), "correct": c}
        for e, g, c in list(zip(examples, generated, correct))[:5]
    ]
    return {
        "accuracy": sum(correct) / len(correct),
        "correct": sum(correct),
        "total": len(correct),
        "samples": samples,
    }
