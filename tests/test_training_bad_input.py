"""Bad configs and inputs fail before training with one clear line; a NaN loss stops training and keeps
the last good checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_training_fixtures import base_config, make_setup
from transformers import TrainerCallback

from babelmerge.errors import BabelmergeError
from babelmerge.tiny import make_tiny_llama
from babelmerge.training import load_config, train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(tmp_path_factory.mktemp("bad_setup"))


def fails(cfg, match):
    with pytest.raises(BabelmergeError, match=match) as info:
        train(cfg)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_source(setup, tmp_path):
    cfg = base_config(setup, tmp_path / "run", data={"sources": [{"path": str(tmp_path / "nope.txt")}]})
    msg = fails(cfg, "does not exist")
    assert "nope.txt" in msg and "data.sources[0]" in msg
    assert not (tmp_path / "run").exists()  # nothing written before the inputs are validated


def test_budget_exceeds_data(setup, tmp_path):
    cfg = base_config(setup, tmp_path / "run", data={"token_budget": 10_000_000})
    fails(cfg, r"token_budget 10000000 exceeds the data")
    assert not (tmp_path / "run" / "iter000").exists()


def test_slices_smaller_than_one_step(setup, tmp_path):
    cfg = base_config(setup, tmp_path / "run", optim={"per_device_batch_size": 32})
    fails(cfg, r"each of the 4 slices has 16 blocks, fewer than one optimiser step \(32 blocks")


def test_k_greater_than_n(setup, tmp_path):
    fails(base_config(setup, tmp_path / "run", branches_per_iteration=5), r"K=5\) exceeds n_slices \(N=4\)")


def test_slerp_needs_two_branches(setup, tmp_path):
    cfg = base_config(setup, tmp_path / "run", branches_per_iteration=3, merge={"method": "slerp"})
    fails(cfg, "slerp merges at most 2 models")


def test_unknown_keys_suggest_the_right_one(setup, tmp_path):
    cfg = base_config(setup, tmp_path / "run")
    cfg["n_slice"] = cfg.pop("n_slices")
    fails(cfg, "unknown key 'n_slice' .*did you mean 'n_slices'")
    cfg = base_config(setup, tmp_path / "run", optim={"lrr": 1e-3})
    fails(cfg, "unknown key 'optim.lrr' .*did you mean 'lr'")
    cfg = base_config(setup, tmp_path / "run", merge={"method": "slrep"})
    fails(cfg, "unknown merge method 'slrep'.*did you mean 'slerp'")
    cfg = base_config(setup, tmp_path / "run", training_args={"learning_rate": 1.0})
    fails(cfg, "training_args.learning_rate is set by babelmerge; use optim.lr")
    cfg = base_config(setup, tmp_path / "run", training_args={"fsdpp": "full_shard"})
    fails(cfg, "not a TrainingArguments field; did you mean 'fsdp'")


def test_yaml_file_errors(tmp_path):
    with pytest.raises(BabelmergeError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(BabelmergeError, match="invalid YAML"):
        load_config(bad)


def test_nonexistent_model(setup, tmp_path):
    fails(base_config(setup, tmp_path / "run", model=str(tmp_path / "no_model")), "no_model is not a folder")


def test_model_without_safetensors(setup, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text((setup["model"] / "config.json").read_text())
    fails(base_config(setup, tmp_path / "run", model=str(folder)), "has no \\*.safetensors weights")


def test_tokenizer_vocab_exceeds_model(setup, tmp_path):
    small = tmp_path / "small"
    make_tiny_llama(small, vocab_size=100, hidden_size=32, num_heads=2, intermediate_size=64)
    cfg = base_config(setup, tmp_path / "run", model=str(small), tokenizer=str(setup["model"]))
    fails(cfg, r"has 300 tokens but model .* has an embedding for only 100")


def test_missing_tokenizer(setup, tmp_path):
    cfg = base_config(setup, tmp_path / "run", tokenizer=str(tmp_path / "no_tok"))
    fails(cfg, "tokenizer: cannot load a tokenizer from")


def test_missing_eval_file(setup, tmp_path):
    fails(base_config(setup, tmp_path / "run", eval={"files": ["/no/such.txt"]}), "eval.files: /no/such.txt")


def test_stage_and_data_format_must_agree(setup, tmp_path):
    fails(base_config(setup, tmp_path / "run", stage="ift"), "stage ift trains on data.format 'chat'")
    cfg = base_config(setup, tmp_path / "run", data={"format": "chat"})
    fails(cfg, "stage cpt trains on data.format 'text', but data.format is 'chat'")


def _checkpoint_weights_finite(ckpt) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(ckpt / "model.safetensors").values())


def test_nan_loss_from_huge_lr_stops_and_keeps_checkpoint(setup, tmp_path):
    cfg = base_config(setup, tmp_path / "run", optim={"lr": 1e30, "warmup": 0}, save_steps=1)
    msg = fails(cfg, r"branch iter000/branch0: training loss became (nan|inf) at step 2 \(optim.lr=1e\+30\)")
    branch = tmp_path / "run" / "iter000" / "branch0"
    # Step 1 took the huge step (weights ~1e30, still finite, saved); step 2's loss is NaN: stop there.
    assert f"last good checkpoint kept: {branch / 'checkpoints' / 'checkpoint-1'}" in msg
    assert sorted(p.name for p in (branch / "checkpoints").iterdir()) == ["checkpoint-1"]
    assert _checkpoint_weights_finite(branch / "checkpoints" / "checkpoint-1")
    assert not (branch / "model").exists()


class InjectNaN(TrainerCallback):
    """Overwrites one weight with NaN at the end of step ``at``."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.at:
            with torch.no_grad():
                next(model.parameters())[0, 0] = float("nan")


def test_injected_nan_keeps_last_good_checkpoint(setup, tmp_path):
    cfg = base_config(setup, tmp_path / "run", save_steps=1)
    with pytest.raises(BabelmergeError) as info:
        train(cfg, callbacks=[InjectNaN(at=2)])
    msg = str(info.value)
    branch = tmp_path / "run" / "iter000" / "branch0"
    # Step 2's checkpoint would hold the NaN: it is refused, checkpoint-1 is kept and named.
    assert "weights became non-finite (NaN/inf) at step 2" in msg
    assert f"last good checkpoint kept: {branch / 'checkpoints' / 'checkpoint-1'}" in msg
    assert sorted(p.name for p in (branch / "checkpoints").iterdir()) == ["checkpoint-1"]
    assert _checkpoint_weights_finite(branch / "checkpoints" / "checkpoint-1")
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["iterations"] == {} and state.get("final") is None


def test_ray_backend_without_ray_is_a_clear_error(setup, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # makes ``import ray`` fail
    cfg = base_config(setup, tmp_path / "run", backend={"type": "ray"})
    fails(cfg, r"backend: ray needs the 'ray' package; install it with: pip install 'babelmerge\[ray\]'")
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_cli_train_subcommand(tmp_path, setup):
    import argparse

    import yaml

    from babelmerge.training.cli import register

    parser = argparse.ArgumentParser(prog="babelmerge")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", str(tmp_path / "missing.yaml"), "--no-progress"])
    assert args.command == "train" and args.no_progress
    with pytest.raises(BabelmergeError, match="no such config file"):
        args.func(args)
    cfg_file = tmp_path / "k_gt_n.yaml"
    cfg_file.write_text(yaml.safe_dump(base_config(setup, tmp_path / "run", branches_per_iteration=9)))
    args = parser.parse_args(["train", str(cfg_file), "--output-dir", str(tmp_path / "other")])
    with pytest.raises(BabelmergeError, match=r"K=9\) exceeds n_slices"):
        args.func(args)
