"""Instruction tuning works: a tiny model tuned on "say: A B" → "A B" repeats unseen word pairs.

The training pairs and the held-out pairs share words but no pair: the model must learn to copy, not to
remember answers. Accuracy is exact match of greedy generation, through the same chat template as training.
"""

import itertools
import json
import random

from transformers import AutoModelForCausalLM, AutoTokenizer

from babelmerge.evaluation.instruction_accuracy import InstructionExample, instruction_accuracy
from babelmerge.tiny import make_tiny_llama, train_tokenizer
from babelmerge.training import train

WORDS = "sun moon star tree rock fish bird lake wind fire snow rain".split()


def test_tuned_model_learns_to_repeat_held_out_pairs(tmp_path):
    rng = random.Random(0)
    pairs = list(itertools.permutations(WORDS, 2))
    rng.shuffle(pairs)
    held_out, train_pairs = pairs[:24], pairs[24:]
    rows = [{"prompt": f"say: {a} {b}", "response": f"{a} {b}"} for a, b in train_pairs] * 36
    rng.shuffle(rows)
    data = tmp_path / "say.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    model_dir = tmp_path / "base"
    texts = [f"<|user|> say: {a} {b} <|assistant|> {a} {b}" for a, b in pairs]
    tok = train_tokenizer(texts, model_dir, vocab_size=300)
    make_tiny_llama(model_dir, seed=0, vocab_size=len(tok), hidden_size=64, num_layers=2)

    examples = [InstructionExample(f"say: {a} {b}", (f"{a} {b}",)) for a, b in held_out]
    before = instruction_accuracy(
        AutoModelForCausalLM.from_pretrained(model_dir), tok, examples, max_new_tokens=6
    )

    final = train(
        {
            "stage": "ift",
            "model": str(model_dir),
            "output_dir": str(tmp_path / "run"),
            "method": "standard",
            "n_slices": 1,
            "branches_per_iteration": 1,
            "progress": False,
            "data": {
                "sources": [{"path": str(data)}],
                "format": "chat",
                "packing": True,
                "block_size": 64,
                "cache_dir": str(tmp_path / "cache"),
            },
            "optim": {"lr": 3e-3, "warmup": 0.05, "per_device_batch_size": 8, "bf16": False},
        }
    )
    tuned = AutoModelForCausalLM.from_pretrained(final)
    after = instruction_accuracy(tuned, AutoTokenizer.from_pretrained(final), examples, max_new_tokens=6)
    assert before["accuracy"] == 0.0
    assert after["accuracy"] >= 0.75, after["samples"]
