"""The demo's synthetic corpus, and a cut-down demo end to end (``--quick``)."""

import json
import re

from babelmerge.cli import main
from babelmerge.demo import synthetic


def test_synthetic_languages_differ_in_script_vocabulary_and_order():
    src, tgt = synthetic.documents(50, seed=3)
    assert len(src) == len(tgt) == 50
    assert all(not re.search("[а-яА-Я]", d) for d in src)
    assert all(not re.search("[a-zA-Z]", d) for d in tgt)
    assert (
        synthetic.documents(5, seed=3) == (src[:5], tgt[:5]) or synthetic.documents(5, seed=3)[0] != src[:5]
    )
    clause = synthetic.Clause("cat", None, "sees", "fish", "red", None, "today")
    assert synthetic.render_source(clause) == "the cat sees a red fish today"
    # SOV, adjective after noun, time first
    assert synthetic.render_target(clause) == "днес мурка рибка червен гледа"
    examples = synthetic.instruction_examples(200, seed=1)
    assert all(
        e["response"] == e["prompt"].split(": ")[1] or e["prompt"].startswith("plural:") for e in examples
    )
    assert {"prompt": "plural: fish", "response": "fishes"} in examples or all(
        e["response"] != "fishs" for e in examples
    )


def test_quick_demo_end_to_end_and_cached_rerun(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "report" / "report.json").read_text())
    rows = {r["model"]: r for r in summary["rows"]}
    expected = {
        f"{m}{r}_{lr}" for m in ("standard", "bam") for r in ("", "_replay") for lr in ("lr_hi", "lr_lo")
    }
    expected |= {"base", "sft", "ct+sft_task_arithmetic", "ct+sft_ties", "ct+sft_ties_sv"}
    assert set(rows) == expected
    # adaptation learned the target language: every adapted run lowers target bits per byte
    for name in expected - {"base", "sft"}:
        if not name.startswith("ct+sft"):
            assert rows[name]["d_target"] < 0, name
    # replay forgets less than no replay at the same method and learning rate
    assert rows["standard_replay_lr_hi"]["d_source"] < rows["standard_lr_hi"]["d_source"]
    assert rows["base"]["weight_l2"] == 0.0
    assert summary["pareto_models"], "someone must be on the front"
    assert {"learning_vs_forgetting.png", "trajectory.png"} <= set(summary["figures"])
    assert "Pareto front" in printed and "report.md" in printed
    # the interpolation points were stored with the runs they belong to
    assert (out / "results" / "bam_lr_hi@0.5.json").exists()
    # a rerun reuses every artefact
    before = {p: p.stat().st_mtime for p in (out / "runs").rglob("model*.safetensors")}
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert before == {p: p.stat().st_mtime for p in (out / "runs").rglob("model*.safetensors")}
