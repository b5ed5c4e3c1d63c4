"""Reports render from stored results: files exist, rows match the JSON, plots are PNGs, the front is right."""

import json

import pytest

from babelmerge.cli import main
from babelmerge.report import dominates, make_report, pareto_front


def test_dominance_and_front():
    assert dominates((1.0, 1.0), (1.0, 2.0))
    assert not dominates((1.0, 2.0), (1.0, 2.0))
    assert not dominates((0.5, 3.0), (1.0, 2.0))
    pts = [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0), (2.5, 2.5), (1.0, 3.5), (2.0, 2.0)]
    # (2.5, 2.5) is dominated by (2, 2); (1, 3.5) by (1, 3); equal points do not dominate each other
    assert pareto_front(pts) == [0, 1, 2, 5]


def write_result(folder, label, target, source, *, alpha=None, of=None, l2=None, acc=None):
    data = {
        "babelmerge_eval": "0.1.0",
        "label": label,
        "model": f"/models/{of or label}",
        "alpha": alpha,
        "target_bpb": target,
        "source_bpb": source,
        "texts": {},
    }
    if of:
        data["of"] = of
    if l2 is not None:
        data["weight_change"] = {"l2": l2, "relative": l2 / 100, "per_layer": {}}
    if acc is not None:
        data["instruct"] = {"accuracy": acc, "correct": 0, "total": 0, "samples": []}
    name = label.replace("@", "_at_")
    (folder / f"{name}.json").write_text(json.dumps(data))


@pytest.fixture()
def results_dir(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    write_result(d, "base", 3.0, 1.0, l2=0.0)
    write_result(d, "standard", 2.0, 1.5, l2=4.0, acc=0.5)
    write_result(d, "bam", 2.2, 1.3, l2=3.0)
    write_result(d, "low_lr", 2.5, 1.6, l2=1.0)  # dominated by bam (2.2 < 2.5 and 1.3 < 1.6)
    write_result(d, "standard@0.5", 2.1, 1.25, alpha=0.5, of="standard", l2=2.0)  # dominates bam
    write_result(d, "standard@0", 3.0, 1.0, alpha=0.0, of="standard", l2=0.0)
    (d / "unrelated.json").write_text('{"hello": 1}')
    return d


def test_report_from_stored_results(results_dir, tmp_path):
    report = make_report([str(results_dir)], tmp_path / "report")
    folder = tmp_path / "report"
    md = (folder / "report.md").read_text()
    summary = json.loads((folder / "report.json").read_text())
    assert summary["baseline"] == "base"
    rows = {r["model"]: r for r in summary["rows"]}
    assert set(rows) == {
        "base",
        "standard",
        "bam",
        "low_lr",
    }  # interpolation points are plotted, not tabulated
    assert rows["standard"]["d_target"] == pytest.approx(-1.0)
    assert rows["standard"]["d_source"] == pytest.approx(0.5)
    assert rows["bam"]["weight_l2"] == 3.0
    assert "| standard | 2.0000 | 1.5000 | -1.0000 | +0.5000 | 4.000 | 0.500 | ★ |" in md
    assert "| low_lr | 2.5000 | 1.6000 | -0.5000 | +0.6000 | 1.000 | — |  |" in md
    # bam is dominated by an interpolation of standard; base (best source) and standard (best target) are not
    assert report.front == ["base", "standard"]
    assert summary["pareto_points"] == ["standard@0.5", "standard@0"]
    assert "`base`, `standard`" in md
    for name in summary["figures"]:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    assert set(summary["figures"]) == {"learning_vs_forgetting.png", "forgetting_vs_weight_change.png"}


def test_report_trajectory_from_training_metrics(results_dir, tmp_path):
    run = tmp_path / "run_bam"
    run.mkdir()
    lines = [{"event": "train", "loss": 3.0}]
    lines += [{"event": "eval", "iteration": i, "file": "bg.txt", "loss": 3.0 - 0.1 * i} for i in range(3)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{cut")
    make_report([str(results_dir), str(run)], tmp_path / "report")
    assert "trajectory.png" in json.loads((tmp_path / "report" / "report.json").read_text())["figures"]


def test_report_cli_and_errors(results_dir, tmp_path, capsys):
    assert main(["report", str(results_dir), "--out", str(tmp_path / "r"), "--baseline", "bam"]) == 0
    summary = json.loads((tmp_path / "r" / "report.json").read_text())
    assert {r["model"]: r["d_target"] for r in summary["rows"]}["bam"] == 0.0
    capsys.readouterr()
    assert main(["report", str(results_dir), "--out", str(tmp_path / "r2"), "--baseline", "nope"]) == 2
    assert "baseline 'nope' is not among the results" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r3")]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()
