"""Shared fixtures: tiny checkpoints built offline (no Hub access)."""

from pathlib import Path

import pytest

from babelmerge.tiny import make_tiny_llama, perturb_checkpoint, train_tokenizer

TEXTS = [
    "the cat sat on the mat and the dog sat on the log",
    "котката седна на постелката и кучето седна на дървото",
] * 4


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama base (with tokenizer) and two fine-tuned stand-ins; ``ft_b`` is saved in 6 shards."""
    root = tmp_path_factory.mktemp("models")
    tok = train_tokenizer(TEXTS, root / "base", vocab_size=300)
    make_tiny_llama(root / "base", seed=0, vocab_size=len(tok), hidden_size=32, intermediate_size=64)
    perturb_checkpoint(root / "base", root / "ft_a", seed=1, scale=0.02)
    perturb_checkpoint(root / "base", root / "ft_b", seed=2, scale=0.05, max_shard_size="20KB")
    tok.save_pretrained(root / "ft_a")
    tok.save_pretrained(root / "ft_b")
    return {"base": root / "base", "ft_a": root / "ft_a", "ft_b": root / "ft_b", "root": root}
