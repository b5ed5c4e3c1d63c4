"""Tiny models and tokenizers built offline, for the self-test, the demo and the test suite.

Nothing here touches the Hugging Face Hub: a byte-level BPE tokenizer is trained with ``tokenizers``
on the texts given, and a randomly initialised Llama is built from a ``LlamaConfig``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 512):
    """Train a byte-level BPE tokenizer on ``texts`` and save it as a HF fast tokenizer in ``out_dir``.

    Returns the :class:`transformers.PreTrainedTokenizerFast`. BOS is ``<s>``, EOS ``</s>``, PAD ``<pad>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def tiny_llama_config(
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 256,
    tie_word_embeddings: bool = False,
):
    """A ``LlamaConfig`` for a tiny model (about 100k parameters with the defaults)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )


def make_tiny_llama(out_dir: str | Path | None = None, *, seed: int = 0, config=None, **config_kwargs):
    """Build a randomly initialised tiny Llama (seeded); save it with safetensors when ``out_dir`` is given.

    Returns the model (in eval mode). ``config_kwargs`` go to :func:`tiny_llama_config`.
    """
    import torch
    from transformers import LlamaForCausalLM

    config = config or tiny_llama_config(**config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    if out_dir is not None:
        model.save_pretrained(out_dir, safe_serialization=True)
    return model


def perturb_checkpoint(base_dir: str | Path, out_dir: str | Path, *, seed: int, scale: float, **save_kwargs):
    """Save a copy of the checkpoint in ``base_dir`` with seeded Gaussian noise (std ``scale``) added to every
    parameter: a stand-in for a fine-tuned model of the same base. ``save_kwargs`` go to ``save_pretrained``
    (e.g. ``max_shard_size="100KB"`` for a sharded checkpoint)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out_dir, **save_kwargs)
    return model
