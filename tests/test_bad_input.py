"""Every bad input: exit code 2, one line naming the culprit, and no output folder left behind."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from babelmerge.cli import main


def base_config(m):
    return {
        "merge_method": "ties",
        "base_model": str(m["base"]),
        "models": [
            {"model": str(m["ft_a"]), "parameters": {"weight": 1.0, "density": 0.5}},
            {"model": str(m["ft_b"]), "parameters": {"weight": 1.0, "density": 0.5}},
        ],
    }


def copy_model(src: Path, dst: Path, edit=None) -> Path:
    """Copy a single-file tiny checkpoint, optionally editing its tensors dict."""
    shutil.copytree(src, dst)
    if edit is not None:
        tensors = load_file(dst / "model.safetensors")
        edit(tensors)
        save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def run_cli(tmp_path, cfg, capsys, extra=()):
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg) if isinstance(cfg, dict) else cfg)
    out = tmp_path / "out"
    code = main(["merge", str(path), str(out), "--no-progress", *extra])
    err = capsys.readouterr().err.strip()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out") or p.name == "out"]
    return code, err, leftovers


def expect_error(tmp_path, cfg, capsys, *fragments, extra=()):
    code, err, leftovers = run_cli(tmp_path, cfg, capsys, extra)
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("babelmerge: error: ")
    for fragment in fragments:
        assert fragment in err, err
    assert leftovers == [], leftovers


def test_missing_model_path(tiny_models, tmp_path, capsys):
    cfg = base_config(tiny_models)
    cfg["models"][1]["model"] = str(tmp_path / "nope")
    expect_error(tmp_path, cfg, capsys, f"model '{tmp_path / 'nope'}'", "no such folder")


def test_missing_config_file(tmp_path, capsys):
    code = main(["merge", str(tmp_path / "missing.yaml"), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "missing.yaml: no such config file" in err


def test_unreachable_hub_id_is_reported_per_model(tiny_models, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = base_config(tiny_models)
    cfg["models"][0]["model"] = "no-such-org/no-such-model"
    expect_error(tmp_path, cfg, capsys, "model 'no-such-org/no-such-model'", "Hugging Face Hub")


def test_folder_that_is_not_a_checkpoint(tiny_models, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    cfg = base_config(tiny_models)
    cfg["models"][0]["model"] = str(tmp_path / "notes")
    expect_error(tmp_path, cfg, capsys, "notes", "not a Hugging Face checkpoint (no config.json)")


def test_checkpoint_without_weights(tiny_models, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    shutil.copy(tiny_models["base"] / "config.json", tmp_path / "empty" / "config.json")
    cfg = base_config(tiny_models)
    cfg["models"][0]["model"] = str(tmp_path / "empty")
    expect_error(tmp_path, cfg, capsys, "empty", "no weights")


def test_pickle_only_checkpoint_is_refused(tiny_models, tmp_path, capsys):
    import torch

    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_models["base"] / "config.json", folder / "config.json")
    torch.save(load_file(tiny_models["ft_a"] / "model.safetensors"), folder / "pytorch_model.bin")
    cfg = base_config(tiny_models)
    cfg["models"][0]["model"] = str(folder)
    expect_error(tmp_path, cfg, capsys, "pickled", "pytorch_model.bin", "--allow-pickle")


def test_corrupt_safetensors(tiny_models, tmp_path, capsys):
    bad = copy_model(tiny_models["ft_a"], tmp_path / "corrupt")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    cfg = base_config(tiny_models)
    cfg["models"][0]["model"] = str(bad)
    expect_error(tmp_path, cfg, capsys, "corrupt", "truncated")


def test_tensor_names_differ(tiny_models, tmp_path, capsys):
    bad = copy_model(tiny_models["ft_a"], tmp_path / "fewer", lambda t: t.pop("model.norm.weight"))
    cfg = base_config(tiny_models)
    cfg["models"][0]["model"] = str(bad)
    expect_error(tmp_path, cfg, capsys, "tensor 'model.norm.weight'", "not in model", "fewer")


def test_tensor_shapes_differ(tiny_models, tmp_path, capsys):
    def grow(t):
        t["model.norm.weight"] = t["model.norm.weight"].repeat(2)

    bad = copy_model(tiny_models["ft_a"], tmp_path / "wider", grow)
    cfg = base_config(tiny_models)
    cfg["models"][0]["model"] = str(bad)
    expect_error(tmp_path, cfg, capsys, "tensor 'model.norm.weight'", "[32]", "[64]", "wider")


def test_non_finite_input(tiny_models, tmp_path, capsys):
    def poison(t):
        t["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")

    bad = copy_model(tiny_models["ft_a"], tmp_path / "nan_model", poison)
    cfg = base_config(tiny_models)
    cfg["models"][0]["model"] = str(bad)
    expect_error(tmp_path, cfg, capsys, "nan_model", "model.layers.1.mlp.up_proj.weight", "non-finite")


@pytest.mark.parametrize(
    "mutate, fragments",
    [
        (lambda c: c.update(merge_method="tise"), ["unknown merge_method 'tise'", "did you mean 'ties'"]),
        (
            lambda c: c.update(merge_methd="ties"),
            ["unknown key 'merge_methd'", "did you mean 'merge_method'"],
        ),
        (
            lambda c: c["models"][0].update(paramters={}),
            ["unknown key 'models[0].paramters'", "'parameters'"],
        ),
        (
            lambda c: c["models"][0]["parameters"].update(densty=0.5),
            ["unknown parameter 'densty'", "'density'"],
        ),
        (lambda c: c["models"][0]["parameters"].update(density=0.0), ["'density' must be > 0.0"]),
        (lambda c: c["models"][1]["parameters"].update(density=1.5), ["'density' must be <= 1.0"]),
        (
            lambda c: c["models"][1]["parameters"].update(
                density=[{"filter": "mlp", "value": 2.0}, {"value": 0.5}]
            ),
            ["'density' must be <= 1.0, got 2.0"],
        ),
        (lambda c: c["models"][0]["parameters"].update({"lambda": 0.5}), ["'lambda' is a global parameter"]),
        (lambda c: c.update(base_model=None), ["ties needs a base_model"]),
        (lambda c: c.update(models=[]), ["ties needs at least 1 model (besides the base model), got 0"]),
        (lambda c: c.update(slices=[]), ["'slices'", "not supported"]),
        (lambda c: c.update(dtype="float8"), ["merge.yaml: dtype: Input should be", "'bfloat16'"]),
        (
            lambda c: c["models"][0]["parameters"].update(weight="abc"),
            ["models[0].parameters.weight: expected a number, true/false or a list", "'abc'"],
        ),
    ],
)
def test_bad_config(tiny_models, tmp_path, capsys, mutate, fragments):
    cfg = base_config(tiny_models)
    mutate(cfg)
    expect_error(tmp_path, cfg, capsys, *fragments)


def test_slack_outside_its_range(tiny_models, tmp_path, capsys):
    cfg = base_config(tiny_models)
    cfg["merge_method"] = "ties_sv"
    cfg["models"][0]["parameters"]["slack"] = 0.7  # density is 0.5
    expect_error(tmp_path, cfg, capsys, "slack (0.7) must not exceed density (0.5)")
    cfg["models"][0]["parameters"]["slack"] = -0.1
    expect_error(tmp_path, cfg, capsys, "'slack' must be >= 0.0")


def test_slerp_parameter_and_model_count(tiny_models, tmp_path, capsys):
    cfg = {
        "merge_method": "slerp",
        "models": [{"model": str(tiny_models[k])} for k in ("base", "ft_a", "ft_b")],
        "parameters": {"t": 0.5},
    }
    expect_error(tmp_path, cfg, capsys, "slerp needs exactly 2 models, got 3")
    cfg["models"] = cfg["models"][:2]
    cfg["parameters"]["t"] = 1.5
    expect_error(tmp_path, cfg, capsys, "'t' must be <= 1.0")
    cfg["parameters"] = {}
    expect_error(tmp_path, cfg, capsys, "slerp needs parameter 't'")


def test_weights_summing_to_zero_with_normalize(tiny_models, tmp_path, capsys):
    cfg = {
        "merge_method": "linear",
        "models": [
            {"model": str(tiny_models["ft_a"]), "parameters": {"weight": 1.0}},
            {
                "model": str(tiny_models["ft_b"]),
                "parameters": {"weight": [{"filter": "mlp", "value": -1.0}, {"value": 1.0}]},
            },
        ],
    }
    expect_error(tmp_path, cfg, capsys, "tensor 'model.layers.0.mlp", "weights sum to zero")


def test_invalid_yaml(tmp_path, capsys):
    expect_error(tmp_path, "merge_method: [ties\n", capsys, "merge.yaml", "invalid YAML")


def test_existing_output_is_not_touched(tiny_models, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(base_config(tiny_models)))
    code = main(["merge", str(path), str(tmp_path / "out"), "--no-progress"])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_cli_success_exit_code_and_message(tiny_models, tmp_path, capsys):
    code, err, leftovers = run_cli(tmp_path, base_config(tiny_models), capsys, extra=["--dtype", "bf16"])
    assert code == 0 and leftovers == ["out"]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
