"""The pure parts of the pipeline: dependency order, references, the base-distance measure."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from babelmerge.checkpoint import open_checkpoint
from babelmerge.errors import BabelmergeError
from babelmerge.pipeline.base_check import matrix_distance
from babelmerge.pipeline.graph import find_cycle, topological_order
from babelmerge.pipeline.references import referenced_steps, sole_reference, substitute


def test_topological_order_respects_dependencies_then_declaration_order():
    # declared out of order: 'merge' before the two trainings it uses; 'report' independent of 'eval'
    deps = {"merge": ["ct", "sft"], "eval": ["merge", "ct"], "ct": [], "report": [], "sft": []}
    order = topological_order(deps)
    assert order == ["ct", "report", "sft", "merge", "eval"]
    for step, needs in deps.items():
        assert all(order.index(d) < order.index(step) for d in needs)


def test_cycles_are_found_and_named():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]
    assert find_cycle({"a": [], "b": ["a"]}) is None
    with pytest.raises(BabelmergeError, match="cycle: a -> b -> a"):
        topological_order({"a": ["b"], "b": ["a"]})


def test_references_are_found_and_substituted_anywhere():
    cfg = {
        "models": [{"model": "${steps.ct.output}"}, "x/${ steps.sft.dir }/y"],
        "base": "${steps.ct.output}",
        "n": 3,
    }
    assert referenced_steps(cfg, "w", ["ct", "sft"]) == ["ct", "sft"]
    out = substitute(cfg, "w", ["ct", "sft"], lambda name, attr: f"/o/{name}/{attr}")
    assert out == {"models": [{"model": "/o/ct/output"}, "x//o/sft/dir/y"], "base": "/o/ct/output", "n": 3}
    assert cfg["base"] == "${steps.ct.output}"  # the input is not modified
    assert sole_reference(" ${steps.ct.output} ") == "ct"
    assert sole_reference("${steps.ct.dir}") is None and sole_reference("a/${steps.ct.output}") is None
    with pytest.raises(BabelmergeError, match=r"w\.models\[1\]: '\$\{steps\.sf\.dir\}' refers to no step"):
        referenced_steps({"models": ["a", "${steps.sf.dir}"]}, "w", ["ct", "sft"])


def test_matrix_distance_closed_form(tmp_path):
    """θ = θ_base + δ on the matrices only: relative distance ‖δ‖/‖θ_base‖ exactly; vectors are left out."""
    g = torch.Generator().manual_seed(0)
    base = {
        "a.weight": torch.randn(4, 6, generator=g),
        "b.weight": torch.randn(3, 3, generator=g),
        "norm": torch.ones(5),
    }
    delta = {"a.weight": 0.1 * torch.randn(4, 6, generator=g), "b.weight": torch.zeros(3, 3)}
    model = {
        "a.weight": base["a.weight"] + delta["a.weight"],
        "b.weight": base["b.weight"],
        "norm": torch.full((5,), 9.0),
    }
    for name, tensors in (("base", base), ("model", model)):
        (tmp_path / name).mkdir()
        save_file(tensors, tmp_path / name / "model.safetensors")
        (tmp_path / name / "config.json").write_text("{}")
    distance, worst, worst_value = matrix_distance(
        open_checkpoint(str(tmp_path / "model")), open_checkpoint(str(tmp_path / "base"))
    )
    base_norm = math.sqrt(sum(float(torch.sum(base[n].double() ** 2)) for n in ("a.weight", "b.weight")))
    d_norm = float(torch.linalg.norm(delta["a.weight"].double()))
    assert distance == pytest.approx(d_norm / base_norm, rel=1e-6)
    assert worst == "a.weight"
    assert worst_value == pytest.approx(
        d_norm / float(torch.linalg.norm(base["a.weight"].double())), rel=1e-6
    )
