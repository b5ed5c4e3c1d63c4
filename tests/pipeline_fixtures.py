"""Shared setup of the pipeline tests: a tiny base model, "CT"/"SFT" stand-ins trained from it, unrelated models."""

from __future__ import annotations

from pathlib import Path

import yaml

from babelmerge.tiny import make_tiny_llama, perturb_checkpoint, train_tokenizer

EN = ["the cat sat on the mat", "the dog ran to the park", "a bird sang in the tree at dawn"]
BG = ["котката седна на постелката", "кучето тича към парка", "птица пее на дървото"]
SIZES = dict(hidden_size=32, intermediate_size=64, num_heads=2, num_layers=2, max_position_embeddings=64)


def make_models(root: Path) -> dict[str, Path]:
    """``base``; ``ct`` and ``sft`` (the base plus small seeded noise: models of that base); ``unrelated``
    (same architecture, another initialisation); ``wide`` (hidden size 48); ``en.txt``/``bg.txt``."""
    root.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer((EN + BG) * 4, root / "base", vocab_size=300)
    make_tiny_llama(root / "base", seed=0, vocab_size=300, **SIZES)
    for name, seed in (("ct", 1), ("sft", 2)):
        perturb_checkpoint(root / "base", root / name, seed=seed, scale=0.005)
        tok.save_pretrained(root / name)
    make_tiny_llama(root / "unrelated", seed=7, vocab_size=300, **SIZES)
    tok.save_pretrained(root / "unrelated")
    make_tiny_llama(root / "wide", seed=0, vocab_size=300, **{**SIZES, "hidden_size": 48})
    tok.save_pretrained(root / "wide")
    (root / "en.txt").write_text("\n".join(EN) + "\n", encoding="utf-8")
    (root / "bg.txt").write_text("\n".join(BG) + "\n", encoding="utf-8")
    return {p.name.split(".")[0]: p for p in root.iterdir()}


def recipe(m: dict[str, Path], out: Path) -> dict:
    """The low-resource recipe on fixture models: three merges of ct and sft, then an evaluation of every model."""

    def pair(**params) -> list[dict]:
        return [{"model": str(m["ct"]), "parameters": params}, {"model": str(m["sft"]), "parameters": params}]

    base = str(m["base"])
    return {
        "output_dir": str(out),
        "steps": {
            "ta": {
                "merge": {
                    "merge_method": "task_arithmetic",
                    "base_model": base,
                    "models": pair(weight=1.0),
                    "parameters": {"lambda": 1.0},
                }
            },
            "ties": {
                "merge": {
                    "merge_method": "ties",
                    "base_model": base,
                    "models": pair(weight=1.0, density=0.5),
                }
            },
            "ties_sv": {
                "merge": {
                    "merge_method": "ties_sv",
                    "base_model": base,
                    "models": pair(weight=1.0, density=0.5, slack=0.0),
                }
            },
            "eval": {
                "evaluate": {
                    "models": [
                        base,
                        str(m["ct"]),
                        "${steps.ta.output}",
                        "${steps.ties.output}",
                        "${steps.ties_sv.output}",
                    ],
                    "target": [str(m["bg"])],
                    "source": [str(m["en"])],
                    "reference": base,
                    "max_length": 32,
                    "batch_size": 4,
                }
            },
        },
    }


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path
