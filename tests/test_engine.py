"""The streaming merge engine end to end on tiny checkpoints: outputs equal the tensor functions."""

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from babelmerge import merge
from babelmerge.engine import tensor_generator
from babelmerge.methods import METHODS


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


PER_METHOD = {
    "linear": ({}, [{"weight": 1.0}, {"weight": 3.0}]),
    "slerp": ({"t": 0.3}, [{}, {}]),
    "task_arithmetic": ({"lambda": 0.7}, [{"weight": 1.0}, {"weight": 0.5}]),
    "ties": ({"lambda": 1.0}, [{"weight": 1.0, "density": 0.5}, {"weight": 0.6, "density": 0.8}]),
    "ties_sv": ({}, [{"density": 0.5, "slack": 0.1}, {"density": 0.8, "slack": 0.4}]),
    "dare_linear": ({}, [{"density": 0.6}, {"density": 0.9}]),
    "dare_ties": ({}, [{"density": 0.6}, {"density": 0.9}]),
    "model_stock": ({}, [{}, {}]),
}


def config_for(method, tiny_models):
    """A fresh config (tests may edit it without changing PER_METHOD for later tests)."""
    top, per_model = copy.deepcopy(PER_METHOD[method])
    cfg = {
        "merge_method": method,
        "models": [
            {"model": str(tiny_models["ft_a"]), "parameters": per_model[0]},
            {"model": str(tiny_models["ft_b"]), "parameters": per_model[1]},
        ],
        "parameters": top,
        "seed": 11,
    }
    if METHODS[method].needs_base:
        cfg["base_model"] = str(tiny_models["base"])
    return cfg


def expected_tensor(method, tiny_models, name, inputs):
    top, per_model = PER_METHOD[method]
    spec = METHODS[method]
    kwargs = {}
    for p in spec.params:
        if p.per_model:
            kwargs[p.kwarg] = [pm.get(p.name, p.default) for pm in per_model]
        else:
            kwargs[p.kwarg] = top.get(p.name, p.default)
    if spec.needs_base:
        kwargs["base"] = inputs["base"][name]
    if spec.uses_generator:
        kwargs["generator"] = tensor_generator(11, name)
    return spec.fn([inputs["ft_a"][name], inputs["ft_b"][name]], **kwargs)


@pytest.mark.parametrize("method", sorted(PER_METHOD))
def test_merge_equals_tensor_functions_and_loads(method, tiny_models, tmp_path):
    out = merge(config_for(method, tiny_models), tmp_path / "out", progress=False)
    merged = load_folder(out)
    inputs = {k: load_folder(tiny_models[k]) for k in ("base", "ft_a", "ft_b")}
    assert set(merged) == set(inputs["base"])
    for name, tensor in merged.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, expected_tensor(method, tiny_models, name, inputs)), name
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("the cat", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert generated.shape == (1, ids.shape[1] + 5)
    # the model's own weights are the merged ones
    assert torch.equal(model.state_dict()["model.norm.weight"], merged["model.norm.weight"])


def test_linear_merge_is_not_a_copy_of_either_input(tiny_models, tmp_path):
    out = merge(config_for("linear", tiny_models), tmp_path / "out", progress=False)
    name = "model.layers.0.mlp.up_proj.weight"
    a, b = load_folder(tiny_models["ft_a"])[name], load_folder(tiny_models["ft_b"])[name]
    got = load_folder(out)[name]
    assert torch.allclose(got, 0.25 * a + 0.75 * b, atol=1e-7)
    assert not torch.allclose(got, a) and not torch.allclose(got, b)


def test_sharded_output_with_index_and_bf16(tiny_models, tmp_path):
    cfg = config_for("task_arithmetic", tiny_models)
    out = merge(cfg, tmp_path / "out", shard_size="30KB", dtype="bfloat16", progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == set(shards)
    merged = load_folder(out)
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in merged.values())
    fp32 = load_folder(merge(cfg, tmp_path / "fp32", progress=False))
    for name, t in merged.items():
        assert t.dtype == torch.bfloat16
        assert torch.equal(t, fp32[name].to(torch.bfloat16))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


def test_per_tensor_override_first_match_wins(tiny_models, tmp_path):
    cfg = config_for("ties", tiny_models)
    cfg["models"][0]["parameters"]["density"] = [
        {"filter": "mlp", "value": 0.2},
        {"filter": "layers.0", "value": 0.9},  # never reached for mlp tensors
        {"value": 0.5},
    ]
    out = merge(cfg, tmp_path / "out", progress=False)
    merged = load_folder(out)
    inputs = {k: load_folder(tiny_models[k]) for k in ("base", "ft_a", "ft_b")}

    def ties_with(name, d0):
        return METHODS["ties"].fn(
            [inputs["ft_a"][name], inputs["ft_b"][name]],
            base=inputs["base"][name],
            weight=[1.0, 0.6],
            density=[d0, 0.8],
            lambda_=1.0,
        )

    for name, d0 in [
        ("model.layers.0.mlp.up_proj.weight", 0.2),
        ("model.layers.1.mlp.down_proj.weight", 0.2),
        ("model.layers.0.self_attn.q_proj.weight", 0.9),
        ("model.layers.1.self_attn.q_proj.weight", 0.5),
    ]:
        assert torch.equal(merged[name], ties_with(name, d0)), name
    assert not torch.equal(
        merged["model.layers.0.mlp.up_proj.weight"], ties_with("model.layers.0.mlp.up_proj.weight", 0.5)
    )


def test_dare_seed_determinism(tiny_models, tmp_path):
    cfg = config_for("dare_ties", tiny_models)
    a = load_folder(merge(cfg, tmp_path / "a", progress=False))
    b = load_folder(merge(cfg, tmp_path / "b", progress=False))
    c = load_folder(merge(cfg, tmp_path / "c", seed=12, progress=False))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_output_folder_contents_and_rerun_from_recorded_config(tiny_models, tmp_path):
    out = merge(config_for("ties_sv", tiny_models), tmp_path / "out", progress=False)
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "babelmerge_config.yaml",
        "model.safetensors",
    } <= names
    card = (out / "README.md").read_text()
    assert "ties_sv" in card and str(tiny_models["ft_b"]) in card
    recorded = yaml.safe_load((out / "babelmerge_config.yaml").read_text())
    assert recorded["merge_method"] == "ties_sv"
    again = merge(out / "babelmerge_config.yaml", tmp_path / "again", progress=False)
    first, second = load_folder(out), load_folder(again)
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_mergekit_yaml_shape_and_tokenizer_source(tiny_models, tmp_path):
    # base model listed among the models, as mergekit users often do; int8_mask accepted for compatibility.
    text = f"""
merge_method: ties
base_model: {tiny_models["base"]}
models:
  - model: {tiny_models["base"]}
  - model: {tiny_models["ft_a"]}
    parameters:
      weight: 1.0
      density: 0.5
  - model: {tiny_models["ft_b"]}
    parameters:
      weight: 1.0
      density: 0.5
parameters:
  normalize: true
  int8_mask: true
dtype: float32
tokenizer_source: {tmp_path / "tok"}
"""
    path = tmp_path / "merge.yaml"
    path.write_text(text)
    (tmp_path / "tok").mkdir()
    tok_config = json.loads((tiny_models["base"] / "tokenizer_config.json").read_text())
    (tmp_path / "tok" / "tokenizer_config.json").write_text(
        json.dumps({**tok_config, "model_max_length": 77})
    )
    (tmp_path / "tok" / "tokenizer.json").write_text((tiny_models["base"] / "tokenizer.json").read_text())
    out = merge(path, tmp_path / "out", progress=False)
    merged = load_folder(out)
    inputs = {k: load_folder(tiny_models[k]) for k in ("base", "ft_a", "ft_b")}
    name = "model.embed_tokens.weight"
    exp = METHODS["ties"].fn(
        [inputs["ft_a"][name], inputs["ft_b"][name]],
        base=inputs["base"][name],
        weight=[1.0, 1.0],
        density=[0.5, 0.5],
    )
    assert torch.equal(merged[name], exp)
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 77
    assert AutoTokenizer.from_pretrained(out).model_max_length == 77


def test_slerp_base_model_is_the_t0_end(tiny_models, tmp_path):
    cfg = {
        "merge_method": "slerp",
        "base_model": str(tiny_models["ft_b"]),
        "models": [{"model": str(tiny_models["ft_a"])}, {"model": str(tiny_models["ft_b"])}],
        "parameters": {"t": 0.0},
    }
    merged = load_folder(merge(cfg, tmp_path / "out", progress=False))
    ft_b = load_folder(tiny_models["ft_b"])
    assert all(torch.equal(merged[n], ft_b[n]) for n in ft_b)


def test_allow_pickle_loads_bin_with_weights_only(tiny_models, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    state = load_folder(tiny_models["ft_a"])
    torch.save(state, pickled / "pytorch_model.bin")
    (pickled / "config.json").write_text((tiny_models["ft_a"] / "config.json").read_text())
    cfg = {"merge_method": "linear", "models": [{"model": str(pickled)}, {"model": str(tiny_models["ft_a"])}]}
    merged = load_folder(merge(cfg, tmp_path / "out", allow_pickle=True, progress=False))
    assert all(torch.equal(merged[n], state[n]) for n in state)


def test_overwrite_replaces_only_when_done(tiny_models, tmp_path):
    out = tmp_path / "out"
    merge(config_for("linear", tiny_models), out, progress=False)
    merge(config_for("model_stock", tiny_models), out, overwrite=True, progress=False)
    assert yaml.safe_load((out / "babelmerge_config.yaml").read_text())["merge_method"] == "model_stock"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failing_write_stops_the_merge_and_leaves_nothing(tiny_models, tmp_path, monkeypatch):
    """Writes run on a background thread: its error must reach the caller and the temporary folder must go."""
    from babelmerge import safetensors_stream

    written: list[str] = []
    real_write = safetensors_stream.StreamingWriter.write

    def failing_write(self, name, tensor):
        if len(written) == 3:
            raise OSError(28, "No space left on device")
        written.append(name)
        real_write(self, name, tensor)

    monkeypatch.setattr(safetensors_stream.StreamingWriter, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        merge(config_for("ties", tiny_models), tmp_path / "out", progress=False)
    assert len(written) == 3
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", ["linear", "task_arithmetic"])
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_elementwise_methods_computed_in_blocks_equal_whole_tensors(
    method, dtype, tiny_models, tmp_path, monkeypatch
):
    """With a block far smaller than the tensors (and not dividing them), every tensor goes through the blocks."""
    from babelmerge import engine

    assert METHODS[method].elementwise
    monkeypatch.setattr(engine, "BLOCK", 97)
    out = merge(config_for(method, tiny_models), tmp_path / "out", dtype=dtype, progress=False)
    merged = load_folder(out)
    inputs = {k: load_folder(tiny_models[k]) for k in ("base", "ft_a", "ft_b")}
    assert max(t.numel() for t in merged.values()) > 20 * 97
    for name, tensor in merged.items():
        expected = expected_tensor(method, tiny_models, name, inputs)
        assert torch.equal(tensor, expected.to(tensor.dtype)), name


def test_mapped_input_tensors_are_copy_on_write(tiny_models):
    """Tensors are memory-mapped from the checkpoint; writing to one never reaches the file."""
    from babelmerge.checkpoint import open_checkpoint

    path = tiny_models["ft_a"]
    name = "model.layers.0.mlp.up_proj.weight"
    before = load_folder(path)[name]
    t = open_checkpoint(str(path), allow_pickle=False, path=path).read(name)
    assert torch.equal(t, before)
    t.fill_(7.0)
    assert torch.equal(load_folder(path)[name], before)
    assert torch.equal(open_checkpoint(str(path), allow_pickle=False, path=path).read(name), before)


@pytest.mark.parametrize("method", ["ties", "ties_sv", "dare_ties"])
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_kernel_merges_equal_the_torch_definition(method, dtype, tiny_models, tmp_path, monkeypatch):
    """With the size cut-off lowered, every float tensor goes through the fused kernel: same bytes as torch's."""
    from babelmerge import engine

    monkeypatch.setattr(engine, "KERNEL_MIN_NUMEL", 1)
    calls = []
    kernel = METHODS[method].kernel
    monkeypatch.setitem(
        METHODS,
        method,
        dataclasses.replace(
            METHODS[method], kernel=lambda *a, **k: calls.append(a[0][0].shape) or kernel(*a, **k)
        ),
    )
    with_kernel = load_folder(
        merge(config_for(method, tiny_models), tmp_path / "k", dtype=dtype, progress=False)
    )
    monkeypatch.setenv("BABELMERGE_KERNELS", "0")
    n_calls = len(calls)
    without = load_folder(merge(config_for(method, tiny_models), tmp_path / "t", dtype=dtype, progress=False))
    # one warm-up call on 16-entry inputs (numba loaded while the first tensors are read), then every float tensor
    assert calls[0] == (16,) and len(calls) == n_calls
    assert n_calls - 1 == sum(t.is_floating_point() for t in with_kernel.values())
    inputs = {k: load_folder(tiny_models[k]) for k in ("base", "ft_a", "ft_b")}
    assert with_kernel.keys() == without.keys()
    for name, tensor in with_kernel.items():
        assert torch.equal(tensor, without[name]), name
        assert torch.equal(tensor, expected_tensor(method, tiny_models, name, inputs).to(tensor.dtype)), name
