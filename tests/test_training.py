"""Branch-and-Merge and standard training end to end on a tiny Llama, plus the pure math of the loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training_fixtures import BLOCK, base_config, make_setup, weights

from babelmerge.training import load_config, outer_step, train
from babelmerge.training.bam import merge_branches
from babelmerge.training.branch import BranchSpec, run_branch
from babelmerge.training.metrics import UpdateStats


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(tmp_path_factory.mktemp("train_setup"))


@pytest.fixture(scope="module")
def bam_run(setup, tmp_path_factory):
    """One uninterrupted BaM run (N=4, K=2) with held-out evaluation; shared by several tests."""
    out = tmp_path_factory.mktemp("bam") / "run"
    cfg = base_config(setup, out, keep_branch_checkpoints=True, eval={"files": [str(setup["heldout"])]})
    return train(cfg)


def records(final: Path) -> list[dict]:
    lines = (final.parent / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_bam_completes_with_budgeted_steps(bam_run, setup):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recs = records(bam_run)
    branches = [r for r in recs if r["event"] == "branch"]
    # 64 blocks / 4 slices = 16 blocks per slice; batch 4 -> 4 steps per branch; 16 steps = the budget.
    assert [(r["iteration"], r["branch"], r["slice"]) for r in branches] == [
        (0, 0, 0),
        (0, 1, 1),
        (1, 0, 2),
        (1, 1, 3),
    ]
    assert [r["steps"] for r in branches] == [4, 4, 4, 4]
    assert sum(r["tokens"] for r in branches) == 64 * BLOCK
    merges = [r for r in recs if r["event"] == "merge"]
    assert [m["tokens_seen"] for m in merges] == [32 * BLOCK, 64 * BLOCK]
    steps = [r for r in recs if r["event"] == "train" and r["iteration"] == 0 and r["branch"] == 0]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert steps[-1]["tokens_seen"] == 4 * 4 * BLOCK
    # One warmup step (logged lr is the one used: 0), then the peak and cosine decay over the branch.
    assert steps[0]["lr"] == 0 and steps[1]["lr"] == pytest.approx(3e-3)
    assert steps[1]["lr"] > steps[2]["lr"] > steps[3]["lr"] > 0

    # The recorded distance from the initial model is the true L2 distance of the final weights.
    init, final = weights(setup["model"]), weights(bam_run)
    dist = math.sqrt(sum(float((final[k] - init[k]).double().square().sum()) for k in init))
    assert merges[-1]["l2_from_initial"] == pytest.approx(dist, rel=1e-5)
    # For a linear merge of two branches: ||(u0 + u1) / 2||^2 = (n0^2 + n1^2 + 2 cos n0 n1) / 4.
    for m in merges:
        n0, n1 = m["branch_update_l2"]
        cos = m["branch_update_cosine"][0][1]
        expected = 0.5 * math.sqrt(n0**2 + n1**2 + 2 * cos * n0 * n1)
        assert m["merged_update_l2"] == pytest.approx(expected, rel=1e-4)
        assert -1 <= cos <= 1

    # Held-out loss is recorded before training and after each merge, and training lowers it.
    evals = [r for r in recs if r["event"] == "eval"]
    assert [e["iteration"] for e in evals] == [-1, 0, 1]
    assert evals[-1]["loss"] < evals[0]["loss"]

    # The final folder is a normal HF checkpoint with the tokenizer.
    model = AutoModelForCausalLM.from_pretrained(bam_run)
    tok = AutoTokenizer.from_pretrained(bam_run)
    ids = tok("the cat runs", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits).all()
    state = json.loads((bam_run.parent / "state.json").read_text())
    assert state["final"] == "final" and set(state["iterations"]) == {"0", "1"}


def test_rerun_of_finished_run_returns_final(bam_run, setup):
    before = (bam_run / "model.safetensors").stat().st_mtime_ns
    cfg = base_config(
        setup, bam_run.parent, keep_branch_checkpoints=True, eval={"files": [str(setup["heldout"])]}
    )
    assert train(cfg) == bam_run
    assert (bam_run / "model.safetensors").stat().st_mtime_ns == before


def test_identical_branches_merge_to_that_branch(setup, tmp_path, bam_run):
    """Two branches with the same slice and seed are identical, and their linear merge equals them (torch.equal)."""
    cfg = load_config(base_config(setup, tmp_path / "unused"))
    slice_file = bam_run.parent / "slices" / "slice000.npz"
    specs = [
        BranchSpec(
            name=f"twin{k}",
            base_model=str(setup["model"]),
            tokenizer=str(setup["model"]),
            slice_files=[str(slice_file)],
            out_dir=str(tmp_path / f"twin{k}"),
            max_steps=4,
            tokens_per_step=4 * BLOCK,
            seed=0,
            optim=cfg.optim.model_dump(),
            save_steps=100,
            logging_steps=1,
            progress=False,
        )
        for k in range(2)
    ]
    for spec in specs:
        run_branch(spec)
    a, b = weights(specs[0].model_dir), weights(specs[1].model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The twins also equal the BaM run's first branch (same base, slice, seed): branches are deterministic.
    first = weights(bam_run.parent / "iter000" / "branch0" / "model")
    assert all(torch.equal(a[k], first[k]) for k in a)
    merged = merge_branches(
        cfg.merge, setup["model"], [s.model_dir for s in specs], tmp_path / "merged", seed=0
    )
    m = weights(merged)
    assert set(m) == set(a) and all(torch.equal(m[k], a[k]) for k in a)
    assert not all(torch.equal(a[k], weights(setup["model"])[k]) for k in a)  # training changed the weights


def test_outer_step_with_eta_one_is_plain_bam(setup, tmp_path, bam_run):
    """BaM with an outer step of lr 1 and no momentum ends where plain BaM does (tolerance 1e-6: the outer
    step computes base - (base - merged), which may round differently from merged)."""
    cfg = base_config(setup, tmp_path / "run", outer={"lr": 1.0, "momentum": 0.0})
    final = train(cfg)
    a, b = weights(final), weights(bam_run)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert (tmp_path / "run" / "iter001" / "base").is_dir()


def test_standard_sees_same_tokens_and_steps(setup, tmp_path, bam_run):
    final = train(base_config(setup, tmp_path / "run", method="standard"))
    recs = records(final)
    (branch,) = [r for r in recs if r["event"] == "branch"]
    bam_branches = [r for r in records(bam_run) if r["event"] == "branch"]
    assert branch["steps"] == sum(r["steps"] for r in bam_branches) == 16
    assert branch["tokens"] == sum(r["tokens"] for r in bam_branches) == 64 * BLOCK
    lrs = [r["lr"] for r in recs if r["event"] == "train"]
    assert (
        len(lrs) == 16 and lrs[0] == 0 and lrs[1] == pytest.approx(3e-3)
    )  # warmup, then cosine over the run
    assert all(x > y for x, y in zip(lrs[1:], lrs[2:]))
    # Standard and BaM start from the same model on the same data, but end at different weights.
    a, b = weights(final), weights(bam_run)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_branch_with_bf16_accumulation_and_checkpointing(setup, tmp_path, bam_run):
    """bf16 autocast, gradient accumulation and gradient checkpointing: 16 blocks / (2 x 2) = 4 steps."""
    cfg = load_config(
        base_config(
            setup,
            tmp_path / "unused",
            optim={
                "bf16": True,
                "per_device_batch_size": 2,
                "gradient_accumulation_steps": 2,
                "gradient_checkpointing": True,
                "min_lr_ratio": 0.1,
            },
        )
    )
    spec = BranchSpec(
        name="opts",
        base_model=str(setup["model"]),
        tokenizer=str(setup["model"]),
        slice_files=[str(bam_run.parent / "slices" / "slice000.npz")],
        out_dir=str(tmp_path / "opts"),
        max_steps=4,
        tokens_per_step=2 * 2 * BLOCK,
        seed=0,
        optim=cfg.optim.model_dump(),
        save_steps=100,
        logging_steps=1,
        progress=False,
    )
    result = run_branch(spec)
    assert result["steps"] == 4 and result["tokens"] == 4 * 2 * 2 * BLOCK
    lrs = [e["learning_rate"] for e in result["log_history"] if "loss" in e]
    assert lrs[-1] == pytest.approx(
        3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))
    )  # min_lr_ratio
    trained, init = weights(spec.model_dir), weights(setup["model"])
    assert all(torch.isfinite(t).all() for t in trained.values())
    assert any(not torch.equal(trained[k], init[k]) for k in init)
    assert not spec.checkpoint_dir.exists()  # Trainer checkpoints are removed once the branch is published


def test_example_config_is_valid():
    cfg = load_config(Path(__file__).parents[1] / "examples" / "bam_cpt.yaml")
    assert (cfg.method, cfg.n_slices, cfg.branches_per_iteration, cfg.n_iterations) == ("bam", 8, 2, 4)
    assert cfg.iteration_slices(3) == [6, 7]


def test_ift_stage_trains_on_chat_data(setup, tmp_path):
    """stage: ift with BaM on prompt/response pairs: loss only on assistant tokens, chat template shipped."""
    import random

    from transformers import AutoTokenizer

    from babelmerge.data import DataConfig, prepare_data

    rng = random.Random(1)
    words = "the cat dog runs far away sun moon star home".split()
    pairs = [
        {"prompt": " ".join(rng.choices(words, k=2)), "response": " ".join(rng.choices(words, k=3))}
        for _ in range(120)
    ]
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    data = {
        "sources": [{"path": str(chat)}],
        "format": "chat",
        "packing": True,
        "block_size": 64,
        "token_budget": 2400,
    }
    cfg = base_config(
        setup, tmp_path / "run", stage="ift", n_slices=2, data=data, optim={"per_device_batch_size": 2}
    )
    final = train(cfg)

    packed = prepare_data(
        DataConfig.model_validate(cfg["data"]), AutoTokenizer.from_pretrained(setup["model"])
    )
    assert packed.labels is not None and (packed.labels == -100).any()  # prompts are masked
    steps_per_branch = (len(packed) // 2) // 2
    recs = records(final)
    assert [r["steps"] for r in recs if r["event"] == "branch"] == [steps_per_branch] * 2
    slice0 = np.load(final.parent / "slices" / "slice000.npz")
    assert {"labels", "position_ids", "row_tokens"} <= set(slice0.files)  # kept through the run directory
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.chat_template  # the template the data was rendered with
    assert json.loads((final / "config.json").read_text())["use_cache"] is True


# -- pure functions ---------------------------------------------------------------------------------


def test_outer_step_nesterov_closed_form():
    base = torch.tensor([1.0, -2.0, 0.5])
    merged = [torch.tensor([0.5, -1.0, 0.5]), torch.tensor([0.0, 0.0, 1.5])]
    lr, mu = 0.7, 0.9
    # Iteration 1: g1 = base - m1 = [0.5, -1, 0]; buf1 = g1; d1 = g1 + mu*buf1 = 1.9 g1.
    new1, buf1 = outer_step(base, merged[0], None, lr=lr, momentum=mu, nesterov=True)
    g1 = torch.tensor([0.5, -1.0, 0.0])
    torch.testing.assert_close(buf1, g1)
    torch.testing.assert_close(new1, base - lr * 1.9 * g1)
    # Iteration 2: g2 = new1 - m2; buf2 = mu*g1 + g2; d2 = g2 + mu*buf2 = (1 + mu) g2 + mu^2 g1.
    new2, buf2 = outer_step(new1, merged[1], buf1, lr=lr, momentum=mu, nesterov=True)
    g2 = new1 - merged[1]
    torch.testing.assert_close(buf2, mu * g1 + g2)
    torch.testing.assert_close(new2, new1 - lr * ((1 + mu) * g2 + mu**2 * g1))
    # Heavy ball: d = buf.
    hb, _ = outer_step(new1, merged[1], buf1, lr=lr, momentum=mu, nesterov=False)
    torch.testing.assert_close(hb, new1 - lr * (mu * g1 + g2))
    # lr = 1, no momentum: the merge itself; lr = 0.5: halfway.
    plain, none = outer_step(base, merged[0], None, lr=1.0)
    assert none is None
    torch.testing.assert_close(plain, merged[0])
    half, _ = outer_step(base, merged[0], None, lr=0.5)
    torch.testing.assert_close(half, (base + merged[0]) / 2)


def test_update_stats_closed_form():
    init = torch.zeros(2, 2)
    base = torch.ones(2, 2)
    u0 = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    u1 = torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    u2 = torch.tensor([[-3.0, 0.0], [0.0, 0.0]])
    new = base + (u0 + u1) / 2
    stats = UpdateStats(3)
    # Split into two "tensors" to check the accumulation across tensors.
    for rows in (slice(0, 1), slice(1, 2)):
        stats.add(init[rows], base[rows], [(base + u)[rows] for u in (u0, u1, u2)], new[rows])
    out = stats.result()
    assert out["branch_update_l2"] == pytest.approx([3.0, 4.0, 3.0])
    assert out["branch_update_cosine"] == [[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]]
    assert out["merged_update_l2"] == pytest.approx(2.5)
    assert out["l2_from_initial"] == pytest.approx(math.sqrt(float((new - init).square().sum())))
