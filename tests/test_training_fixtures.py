"""Shared setup of the training tests: a tiny Llama, its tokenizer and small text files, all built offline.

The other ``test_training_*`` modules import :func:`make_setup` and :func:`base_config` from here.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from safetensors.torch import load_file

from babelmerge.tiny import make_tiny_llama, train_tokenizer

WORDS = (
    "the quick brown fox jumps over a lazy dog while the cat runs far away from home to see sun moon and star "
    "котката седна на постелката и кучето тича към гората"
).split()
BLOCK = 32


def make_setup(root: Path) -> dict[str, Path]:
    """Write ``model/`` (tiny Llama + tokenizer), ``train.txt`` and ``heldout.txt`` under ``root``."""
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))) for _ in range(500)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text("\n".join(lines[:400]) + "\n", encoding="utf-8")
    (root / "heldout.txt").write_text("\n".join(lines[400:]) + "\n", encoding="utf-8")
    tok = train_tokenizer(lines, root / "model", vocab_size=300)
    make_tiny_llama(
        root / "model",
        seed=0,
        vocab_size=300,
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        num_layers=2,
    )
    assert len(tok) <= 300
    return {
        "root": root,
        "model": root / "model",
        "train": root / "train.txt",
        "heldout": root / "heldout.txt",
    }


def base_config(setup: dict[str, Path], out: Path, **overrides) -> dict:
    """A BaM config: N=4 slices of 16 blocks, K=2, batch 4 -> 4 optimiser steps per branch, bf16 off."""
    cfg = {
        "model": str(setup["model"]),
        "output_dir": str(out),
        "method": "bam",
        "n_slices": 4,
        "branches_per_iteration": 2,
        "seed": 0,
        "data": {
            "sources": [{"path": str(setup["train"])}],
            "token_budget": 64 * BLOCK,
            "block_size": BLOCK,
            "cache_dir": str(setup["root"] / "cache"),
        },
        "optim": {"lr": 3e-3, "per_device_batch_size": 4, "warmup": 1, "bf16": False},
        "save_steps": 2,
        "logging_steps": 1,
        "progress": False,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file safetensors checkpoint."""
    return load_file(folder / "model.safetensors")


def test_setup_is_consistent(tmp_path):
    setup = make_setup(tmp_path)
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(setup["model"])
    assert len(tok) <= AutoConfig.from_pretrained(setup["model"]).vocab_size
    n_tokens = len(tok(setup["train"].read_text())["input_ids"])
    assert n_tokens >= 64 * BLOCK  # the budget of base_config fits the data
