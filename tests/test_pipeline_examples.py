"""The example pipelines in ``examples/`` load and validate (structure and every step's config), without running."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from babelmerge.pipeline import load_pipeline

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BASE = "meta-llama/Llama-3.1-8B"


def ift_available() -> bool:
    from babelmerge.training import TrainConfig

    try:
        TrainConfig.model_validate(
            {"stage": "ift", "model": "m", "output_dir": "o", "data": {"sources": [{"path": "x.jsonl"}]}}
        )
    except Exception as err:
        return "not implemented yet" not in str(err)
    return True


def load(name: str):
    """The example pipeline. While ``stage: ift`` is not implemented, its ift steps are validated as cpt steps
    (chat-only data keys dropped) so that everything else in the example is still checked."""
    raw = yaml.safe_load((EXAMPLES / name).read_text())
    data = copy.deepcopy(raw)
    if not ift_available():
        for step in data["steps"].values():
            train = step.get("train")
            if train and train.get("stage") == "ift":
                train["stage"] = "cpt"
                train["data"] = {k: v for k, v in train["data"].items() if k not in ("format", "packing")}
    return load_pipeline(data), raw


def test_low_resource_recipe_structure():
    pipe, raw = load("low_resource_recipe.yaml")
    assert pipe.order == ["ct", "sft", "task_arithmetic", "ties", "ties_sv", "evaluate"]
    steps = pipe.steps
    assert steps["ct"].config.stage == "cpt" and raw["steps"]["sft"]["train"]["stage"] == "ift"
    # CT and SFT start from the same base, and every merge names exactly that base and merges exactly them
    assert steps["ct"].config.model == steps["sft"].config.model == BASE
    for name, method in (("task_arithmetic", "task_arithmetic"), ("ties", "ties"), ("ties_sv", "ties_sv")):
        merge = steps[name].config
        assert merge.merge_method == method and merge.base_model == BASE
        assert [m.model for m in merge.models] == [str(steps["ct"].output), str(steps["sft"].output)]
        assert steps[name].deps == ["ct", "sft"]
    evaluate = steps["evaluate"].config
    assert evaluate.labels == ["Llama-3.1-8B", "ct", "sft", "task_arithmetic", "ties", "ties_sv"]
    assert evaluate.reference == BASE and evaluate.target and evaluate.source


def test_ct_then_sft_baseline_structure():
    pipe, raw = load("ct_then_sft.yaml")
    assert pipe.order == ["ct", "ct_sft", "evaluate"]
    assert pipe.steps["ct"].config.model == BASE
    assert pipe.steps["ct_sft"].config.model == str(pipe.steps["ct"].output)
    assert raw["steps"]["ct_sft"]["train"]["stage"] == "ift"
    # evaluated on the same text as the recipe, so the two are comparable
    recipe = load("low_resource_recipe.yaml")[0].steps["evaluate"].config
    baseline = pipe.steps["evaluate"].config
    assert (baseline.target, baseline.source, baseline.instruct) == (
        recipe.target,
        recipe.source,
        recipe.instruct,
    )
