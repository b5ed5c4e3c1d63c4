"""A pipeline with a real (tiny) continued-pretraining step: train, merge with an "SFT" model, evaluate; resume."""

from __future__ import annotations

import json
import random

import torch
from pipeline_fixtures import SIZES
from safetensors.torch import load_file

from babelmerge.checkpoint import open_checkpoint
from babelmerge.pipeline import run_pipeline
from babelmerge.pipeline.base_check import matrix_distance
from babelmerge.pipeline.markers import read_marker
from babelmerge.tiny import make_tiny_llama, perturb_checkpoint, train_tokenizer

WORDS = "котката седна на постелката и кучето тича към гората a cat and a dog".split()


def test_train_merge_evaluate_end_to_end_then_resume(tmp_path):
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) for _ in range(300)]
    (tmp_path / "bg.txt").write_text("\n".join(lines[:250]) + "\n", encoding="utf-8")
    (tmp_path / "bg_heldout.txt").write_text("\n".join(lines[250:]) + "\n", encoding="utf-8")
    tok = train_tokenizer(lines, tmp_path / "base", vocab_size=300)
    make_tiny_llama(tmp_path / "base", seed=0, vocab_size=300, **SIZES)
    perturb_checkpoint(tmp_path / "base", tmp_path / "sft", seed=3, scale=0.005)
    tok.save_pretrained(tmp_path / "sft")
    base = str(tmp_path / "base")
    out = tmp_path / "out"
    cfg = {
        "output_dir": str(out),
        "steps": {
            "ct": {
                "train": {
                    "model": base,
                    "method": "standard",
                    "n_slices": 1,
                    "branches_per_iteration": 1,
                    "data": {
                        "sources": [{"path": str(tmp_path / "bg.txt")}],
                        "token_budget": 24 * 32,
                        "block_size": 32,
                        "cache_dir": str(tmp_path / "cache"),
                    },
                    "optim": {"lr": 3e-3, "per_device_batch_size": 4, "warmup": 1, "bf16": False},
                    "progress": False,
                }
            },
            "ta": {
                "merge": {
                    "merge_method": "task_arithmetic",
                    "base_model": base,
                    "models": ["${steps.ct.output}", str(tmp_path / "sft")],
                }
            },
            "eval": {
                "evaluate": {
                    "models": [base, "${steps.ct.output}", "${steps.ta.output}"],
                    "target": [str(tmp_path / "bg_heldout.txt")],
                    "reference": base,
                    "max_length": 32,
                }
            },
        },
    }
    reports = run_pipeline(cfg, progress=False)
    assert [(r.name, r.action) for r in reports] == [("ct", "run"), ("ta", "run"), ("eval", "run")]

    ct = out / "ct" / "run" / "final"
    assert (ct / "model.safetensors").is_file() and (ct / "tokenizer.json").is_file()
    # training moved the model, but it is still a model of the base (what the merge step checked)
    distance = matrix_distance(open_checkpoint(str(ct)), open_checkpoint(base))[0]
    assert 0 < distance < 0.5
    w_base, w_ct = load_file(tmp_path / "base" / "model.safetensors"), load_file(ct / "model.safetensors")
    w_sft, w_ta = (
        load_file(tmp_path / "sft" / "model.safetensors"),
        load_file(out / "ta" / "model" / "model.safetensors"),
    )
    for name in w_base:
        torch.testing.assert_close(w_ta[name], w_ct[name] + w_sft[name] - w_base[name], rtol=0, atol=1e-6)
    # learning: continued pretraining lowered bits per byte on held-out target-language text
    results = {p.stem: json.loads(p.read_text()) for p in (out / "eval" / "results").glob("*.json")}
    assert set(results) == {"base", "ct", "ta"}
    assert results["ct"]["target_bpb"] < results["base"]["target_bpb"]

    run_ids = {n: read_marker(out / n)["run_id"] for n in ("ct", "ta", "eval")}
    assert [r.action for r in run_pipeline(cfg, progress=False)] == ["skip", "skip", "skip"]
    assert {n: read_marker(out / n)["run_id"] for n in ("ct", "ta", "eval")} == run_ids

    # a changed training config retrains (the old run is kept aside) and re-runs everything downstream
    cfg["steps"]["ct"]["train"]["optim"]["lr"] = 1e-3
    assert [r.action for r in run_pipeline(cfg, progress=False)] == ["rerun", "rerun", "rerun"]
    superseded = list((out / ".superseded").iterdir())
    assert len(superseded) == 1 and (superseded[0] / "run" / "final" / "model.safetensors").is_file()
    assert not torch.equal(load_file(ct / "model.safetensors")["lm_head.weight"], w_ct["lm_head.weight"])
