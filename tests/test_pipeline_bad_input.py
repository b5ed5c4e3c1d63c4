"""Bad pipeline input fails up front, before any step runs, with one line naming the step and key at fault."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from pipeline_fixtures import make_models, recipe, write_yaml

from babelmerge.errors import BabelmergeError
from babelmerge.pipeline import run_pipeline


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("pipeline_bad_models"))


def fails(cfg: dict, tmp_path: Path, *fragments: str) -> str:
    """Run ``cfg`` (written as YAML); assert it raises naming every fragment and that nothing was written."""
    config = write_yaml(tmp_path / "pipeline.yaml", cfg)
    with pytest.raises(BabelmergeError) as err:
        run_pipeline(config, progress=False)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    assert not Path(cfg.get("output_dir", tmp_path / "out")).exists()
    return message


def test_models_from_another_base_are_refused_before_merging(models, tmp_path):
    cfg = recipe(models, tmp_path / "out")
    cfg["steps"]["ties"]["merge"]["models"][1]["model"] = str(models["unrelated"])
    msg = fails(
        cfg,
        tmp_path,
        "steps.ties.merge",
        f"model '{models['unrelated']}'",
        "does not look trained from base_model",
    )
    distance = float(msg.split("= ")[1].split(" ")[0])
    assert 1.2 < distance < 1.6  # two independent initialisations: about sqrt(2)


def test_models_of_another_architecture_name_the_tensor(models, tmp_path):
    cfg = recipe(models, tmp_path / "out")
    cfg["steps"]["ta"]["merge"]["models"][0]["model"] = str(models["wide"])
    fails(
        cfg,
        tmp_path,
        "steps.ta.merge",
        "does not have the architecture",
        "tensor 'lm_head.weight' has shape [300, 48], but [300, 32]",
    )


def test_distance_threshold_is_configurable(models, tmp_path):
    cfg = recipe(models, tmp_path / "out")
    cfg["max_base_distance"] = 0.1  # ct and sft are 0.25 from the base
    fails(cfg, tmp_path, "exceeds max_base_distance 0.1")
    cfg["steps"]["ta"]["merge"]["models"][0]["model"] = str(models["unrelated"])
    cfg["max_base_distance"] = None  # check off: the unrelated model passes validation (architecture matches)
    del cfg["steps"]["eval"], cfg["steps"]["ties"], cfg["steps"]["ties_sv"]
    assert [r.action for r in run_pipeline(cfg, dry_run=True)] == ["run"]


def test_base_check_runs_when_the_input_is_produced_by_an_earlier_step(models, tmp_path):
    """An input made by a step cannot be checked up front; the merge using it checks it before merging."""
    out = tmp_path / "out"
    cfg = {
        "output_dir": str(out),
        "steps": {
            "other": {  # a model of another base, produced by a step
                "merge": {
                    "merge_method": "linear",
                    "base_model": str(models["unrelated"]),
                    "models": [str(models["unrelated"])],
                }
            },
            "ta": {
                "merge": {
                    "merge_method": "task_arithmetic",
                    "base_model": str(models["base"]),
                    "models": [str(models["ct"]), "${steps.other.output}"],
                }
            },
        },
    }
    with pytest.raises(BabelmergeError, match="steps.ta.merge: model '.*other/model' does not look trained"):
        run_pipeline(cfg, progress=False)
    assert (out / "other" / "model" / "model.safetensors").is_file()
    assert not (out / "ta" / "model").exists()


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (lambda c: c.update(step=c.pop("steps")), ["unknown key 'step'", "did you mean 'steps'"]),
        (
            lambda c: c["steps"]["ta"].update(merg=c["steps"]["ta"].pop("merge")),
            ["steps.ta: unknown key 'merg' (did you mean 'merge'?)"],
        ),
        (lambda c: c["steps"]["ta"].update(evaluate={"models": []}), ["steps.ta", "exactly one of"]),
        (lambda c: c["steps"].update({"a.b": c["steps"].pop("ta")}), ["step name 'a.b'"]),
        (
            lambda c: c["steps"]["eval"]["evaluate"]["models"].append("${steps.tie.output}"),
            ["steps.eval.evaluate.models[5]", "no step named 'tie'", "did you mean 'ties'"],
        ),
        (
            lambda c: c["steps"]["eval"]["evaluate"]["models"].append("${steps.ta.model}"),
            ["cannot resolve '${steps.ta.model}'"],
        ),
        (lambda c: c["steps"]["ta"].update(after=["evl"]), ["steps.ta.after", "did you mean 'eval'"]),
        (
            lambda c: c["steps"]["ta"]["merge"]["models"].append("${steps.eval.output}"),
            ["pipeline.yaml: steps depend on each other in a cycle: ta -> eval -> ta"],
        ),
        (lambda c: c["steps"]["ta"]["merge"].pop("base_model"), ["steps.ta.merge: base_model is required"]),
        (
            lambda c: c["steps"]["ties"]["merge"]["models"][0]["parameters"].update(densty=0.5),
            ["steps.ties.merge", "densty"],
        ),
        (lambda c: c["steps"]["ta"]["merge"].update(merge_method="tie"), ["unknown merge_method 'tie'"]),
        (
            lambda c: c["steps"]["eval"]["evaluate"].update(out="x"),
            ["steps.eval.evaluate.out is set by the pipeline"],
        ),
        (
            lambda c: c["steps"]["eval"]["evaluate"].update(target=["missing.txt"]),
            ["steps.eval.evaluate", "missing.txt does not exist"],
        ),
        (
            lambda c: c["steps"]["ta"]["merge"].update(base_model="./no/such/model"),
            ["steps.ta.merge", "./no/such/model does not exist"],
        ),
        (lambda c: c.update(max_base_distance=-1), ["max_base_distance"]),
    ],
)
def test_bad_config_is_refused_up_front(models, tmp_path, edit, fragments):
    cfg = copy.deepcopy(recipe(models, tmp_path / "out"))
    edit(cfg)
    fails(cfg, tmp_path, *fragments)


def test_train_step_config_is_validated_and_output_dir_is_managed(models, tmp_path):
    cfg = recipe(models, tmp_path / "out")
    train = {
        "model": str(models["base"]),
        "data": {"sources": [{"path": str(models["bg"])}], "block_size": 32},
    }
    cfg["steps"]["ct"] = {"train": {**train, "output_dir": "x"}}
    fails(cfg, tmp_path, "steps.ct.train.output_dir is set by the pipeline")
    cfg["steps"]["ct"] = {"train": {**train, "n_slice": 2}}
    fails(cfg, tmp_path, "steps.ct.train", "unknown key 'n_slice'", "did you mean 'n_slices'")
    cfg["steps"]["ct"] = {"train": {**train, "data": {"sources": [{"path": "nope.txt"}], "block_size": 32}}}
    fails(cfg, tmp_path, "steps.ct.train", "nope.txt")


def test_a_folder_not_written_by_the_pipeline_is_not_overwritten(models, tmp_path):
    out = tmp_path / "out"
    (out / "ta").mkdir(parents=True)
    (out / "ta" / "notes.txt").write_text("mine")
    with pytest.raises(
        BabelmergeError, match="steps.ta.merge: .* exists but was not written by this pipeline"
    ):
        run_pipeline(recipe(models, out), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["ta"]


def test_a_train_step_from_another_base_fails_before_training(models, tmp_path):
    """The merge input does not exist yet, but the model its train step starts from does: that is checked."""
    cfg = recipe(models, tmp_path / "out")
    data = {"sources": [{"path": str(models["bg"])}], "block_size": 32, "token_budget": 256}
    cfg["steps"]["ct"] = {"train": {"model": str(models["unrelated"]), "data": data, "method": "standard"}}
    cfg["steps"]["ta"]["merge"]["models"][0]["model"] = "${steps.ct.output}"
    fails(
        cfg,
        tmp_path,
        "steps.ta.merge",
        f"model '{models['unrelated']}' (the starting point of {tmp_path / 'out' / 'ct' / 'run' / 'final'})",
        "does not look trained from base_model",
    )
    cfg["steps"]["ct"]["train"]["model"] = str(models["base"])  # trained from the base: fine
    assert [r.action for r in run_pipeline(cfg, dry_run=True)] == ["run"] * 5
