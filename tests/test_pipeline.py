"""``babelmerge pipeline``: merge + evaluate pipelines end to end on tiny models, resuming, re-running."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from pipeline_fixtures import make_models, recipe, write_yaml
from safetensors.torch import load_file

from babelmerge.errors import BabelmergeError
from babelmerge.evaluation import weight_change
from babelmerge.pipeline import load_pipeline, plan, run_pipeline
from babelmerge.pipeline.cli import register
from babelmerge.pipeline.markers import read_marker


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("pipeline_models"))


@pytest.fixture(scope="module")
def finished(models, tmp_path_factory):
    """The recipe pipeline run once; returns (config path, output dir, reports)."""
    out = tmp_path_factory.mktemp("pipeline_run") / "out"
    config = write_yaml(out.parent / "pipeline.yaml", recipe(models, out))
    return config, out, run_pipeline(config, progress=False)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def actions(reports) -> dict[str, str]:
    return {r.name: r.action for r in reports}


def test_runs_every_step_in_order_with_correct_outputs(models, finished):
    _, out, reports = finished
    assert [r.name for r in reports] == ["ta", "ties", "ties_sv", "eval"]
    assert set(actions(reports).values()) == {"run"}

    # task arithmetic with unit weights and lambda: θ = θ_ct + θ_sft − θ_base, tensor by tensor
    base, ct, sft = tensors(models["base"]), tensors(models["ct"]), tensors(models["sft"])
    ta = tensors(out / "ta" / "model")
    assert set(ta) == set(base)
    for name in base:
        torch.testing.assert_close(ta[name], ct[name] + sft[name] - base[name], rtol=0, atol=1e-6)
    # TIES with slack 0 is TIES exactly; density 0.5 makes it differ from task arithmetic
    ties, ties_sv = tensors(out / "ties" / "model"), tensors(out / "ties_sv" / "model")
    for name in base:
        torch.testing.assert_close(ties_sv[name], ties[name], rtol=0, atol=0)
    assert any(not torch.allclose(ties[n], ta[n]) for n in base)

    # evaluation: one result per model, labelled by step name for step outputs, weight change from the base
    results = {p.stem: json.loads(p.read_text()) for p in (out / "eval" / "results").glob("*.json")}
    assert set(results) == {"base", "ct", "ta", "ties", "ties_sv"}
    for label, r in results.items():
        assert math.isfinite(r["target_bpb"]) and math.isfinite(r["source_bpb"]), label
    assert results["base"]["weight_change"]["l2"] == 0.0
    expected = weight_change(str(out / "ta" / "model"), str(models["base"]))["relative"]
    assert results["ta"]["weight_change"]["relative"] == pytest.approx(expected, rel=1e-9)
    assert results["ta"]["model"] == str(out / "ta" / "model")

    for name in ("ta", "ties", "ties_sv", "eval"):
        marker = read_marker(out / name)
        assert marker["status"] == "complete" and len(marker["run_id"]) == 32
    assert read_marker(out / "eval")["inputs"] == {
        n: read_marker(out / n)["run_id"] for n in ("ta", "ties", "ties_sv")
    }


def test_second_invocation_skips_every_finished_step(finished):
    config, out, _ = finished
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    reports = run_pipeline(config, progress=False)
    assert actions(reports) == {"ta": "skip", "ties": "skip", "ties_sv": "skip", "eval": "skip"}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_a_moved_pipeline_folder_is_still_up_to_date(finished, tmp_path):
    import shutil

    config, out, _ = finished
    shutil.copytree(out, tmp_path / "moved")
    reports = run_pipeline(config, output_dir=str(tmp_path / "moved"), dry_run=True)
    assert set(actions(reports).values()) == {"skip"}
    assert reports[0].output == tmp_path / "moved" / "ta" / "model"


def test_changed_step_reruns_with_its_dependants_only(models, tmp_path):
    out = tmp_path / "out"
    cfg = recipe(models, out)
    cfg["steps"]["eval"]["evaluate"]["models"] = ["${steps.ta.output}", "${steps.ties.output}"]
    run_pipeline(cfg, progress=False)
    ties_before = tensors(out / "ties" / "model")
    run_ids = {n: read_marker(out / n)["run_id"] for n in ("ta", "ties", "ties_sv", "eval")}

    for spec in cfg["steps"]["ties"]["merge"]["models"]:
        spec["parameters"]["density"] = 0.9
    decisions = plan(load_pipeline(cfg))
    assert decisions["ties"].reason == "its config changed since it ran"
    assert decisions["eval"].reason == "input step 'ties' runs again"
    reports = run_pipeline(cfg, progress=False)
    assert actions(reports) == {"ta": "skip", "ties": "rerun", "ties_sv": "skip", "eval": "rerun"}
    assert any(not torch.equal(ties_before[n], t) for n, t in tensors(out / "ties" / "model").items())
    assert read_marker(out / "ta")["run_id"] == run_ids["ta"]
    assert read_marker(out / "ties")["run_id"] != run_ids["ties"]
    assert read_marker(out / "eval")["inputs"]["ties"] == read_marker(out / "ties")["run_id"]

    # --force re-runs a step that is up to date, and the steps using it
    assert actions(run_pipeline(cfg, force=["ta"], progress=False)) == {
        "ta": "rerun",
        "ties": "skip",
        "ties_sv": "skip",
        "eval": "rerun",
    }
    # a deleted output is rebuilt; an interrupted step (marker 'started') is resumed
    import shutil

    shutil.rmtree(out / "ties_sv" / "model")
    marker = read_marker(out / "ta")
    (out / "ta" / ".babelmerge_step.json").write_text(json.dumps({**marker, "status": "started"}))
    decisions = plan(load_pipeline(cfg))
    assert (decisions["ta"].action, decisions["ties_sv"].action) == ("resume", "rerun")
    assert decisions["ties_sv"].reason.startswith("its output") and decisions["ties"].action == "skip"
    assert actions(run_pipeline(cfg, progress=False))["eval"] == "rerun"
    assert actions(run_pipeline(cfg, progress=False)) == dict.fromkeys(
        ("ta", "ties", "ties_sv", "eval"), "skip"
    )


def test_dry_run_validates_and_runs_nothing(models, tmp_path):
    out = tmp_path / "out"
    reports = run_pipeline(recipe(models, out), dry_run=True)
    assert actions(reports) == dict.fromkeys(("ta", "ties", "ties_sv", "eval"), "run")
    assert not out.exists()
    with pytest.raises(BabelmergeError, match="--force: no step named 'tax'"):
        run_pipeline(recipe(models, out), dry_run=True, force=["tax"])


def test_cli_runs_and_prints_table(models, tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    cfg = recipe(models, tmp_path / "ignored")
    del cfg["steps"]["eval"], cfg["steps"]["ties"], cfg["steps"]["ties_sv"]
    config = write_yaml(tmp_path / "p.yaml", cfg)
    args = parser.parse_args(["pipeline", str(config), "--output-dir", str(tmp_path / "o"), "--no-progress"])
    assert args.func(args) == 0
    assert (tmp_path / "o" / "ta" / "model" / "model.safetensors").is_file()
    assert not (tmp_path / "ignored").exists()
    args = parser.parse_args(["pipeline", str(config), "--output-dir", str(tmp_path / "o"), "--dry-run"])
    assert args.func(args) == 0
    assert "skip" in capsys.readouterr().out
