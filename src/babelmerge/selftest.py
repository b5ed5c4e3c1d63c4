"""``babelmerge selftest``: an offline end-to-end check of the merge engine on tiny models it builds itself.

It trains a tiny tokenizer, builds a tiny Llama "base" and two "fine-tuned" variants (the base plus different
seeded perturbations, one saved sharded), merges them with every registered method, reloads each merge with
``AutoModelForCausalLM``, generates a few tokens, and checks every merged tensor against the method's tensor
function applied directly. Prints a table; exit status 0 only if every check passed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .methods import METHODS

SAMPLE_TEXT = [
    "the cat sat on the mat and the dog sat on the log",
    "a merge of two models keeps what each of them learned",
    "котката седна на постелката и кучето седна на дървото",
    "сливането на два модела запазва наученото от всеки",
]

METHOD_PARAMS: dict[str, tuple[dict, dict]] = {
    # method: (top-level parameters, per-model parameters)
    "linear": ({}, {"weight": 1.0}),
    "slerp": ({"t": 0.3}, {}),
    "task_arithmetic": ({"lambda": 0.8}, {"weight": 1.0}),
    "ties": ({}, {"weight": 1.0, "density": 0.5}),
    "ties_sv": ({}, {"weight": 1.0, "density": 0.5, "slack": 0.1}),
    "dare_linear": ({}, {"weight": 1.0, "density": 0.7}),
    "dare_ties": ({}, {"weight": 1.0, "density": 0.7}),
    "model_stock": ({}, {}),
}


def _config_for(method: str, root: Path) -> dict:
    top, per_model = METHOD_PARAMS[method]
    spec = METHODS[method]
    models = [{"model": str(root / name), "parameters": dict(per_model)} for name in ("ft_a", "ft_b")]
    cfg = {"merge_method": method, "models": models, "parameters": dict(top), "seed": 7}
    if spec.needs_base:
        cfg["base_model"] = str(root / "base")
    return cfg


def _expected(method: str, cfg: dict, name: str) -> torch.Tensor:
    from safetensors import safe_open

    def load(folder: str) -> torch.Tensor:
        folder_path = Path(folder)
        for f in sorted(folder_path.glob("*.safetensors")):
            with safe_open(f, "pt") as h:
                if name in h.keys():
                    return h.get_tensor(name).float()
        raise KeyError(name)

    spec = METHODS[method]
    kwargs = {p.kwarg: cfg["parameters"].get(p.name, p.default) for p in spec.params if not p.per_model}
    for p in spec.params:
        if p.per_model:
            kwargs[p.kwarg] = [m["parameters"].get(p.name, p.default) for m in cfg["models"]]
    if spec.needs_base:
        kwargs["base"] = load(cfg["base_model"])
    if spec.uses_generator:
        from .engine import tensor_generator

        kwargs["generator"] = tensor_generator(cfg["seed"], name)
    return spec.fn([load(m["model"]) for m in cfg["models"]], **kwargs)


def run_selftest(out: str | None = None) -> int:
    from rich.console import Console
    from rich.table import Table
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from .engine import merge
    from .tiny import make_tiny_llama, perturb_checkpoint, train_tokenizer

    console = Console()
    root = Path(out) if out else Path(tempfile.mkdtemp(prefix="babelmerge-selftest-"))
    root.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(SAMPLE_TEXT * 4, root / "base", vocab_size=320)
    make_tiny_llama(root / "base", seed=0, vocab_size=len(tok))
    perturb_checkpoint(root / "base", root / "ft_a", seed=1, scale=0.02)
    perturb_checkpoint(root / "base", root / "ft_b", seed=2, scale=0.02, max_shard_size="100KB")

    table = Table(title=f"babelmerge selftest ({root})")
    for col in ("method", "tensors checked", "max |Δ| vs tensor function", "generated", "result"):
        table.add_column(col)
    failures = 0
    prompt = tok("the cat", return_tensors="pt").input_ids
    for method in METHODS:
        cfg = _config_for(method, root)
        merged = merge(cfg, root / f"merged_{method}", progress=False, overwrite=True)
        tensors: dict[str, torch.Tensor] = {}
        for f in sorted(merged.glob("*.safetensors")):
            tensors.update(load_file(f))
        worst = max(float((tensors[n].float() - _expected(method, cfg, n)).abs().max()) for n in tensors)
        model = AutoModelForCausalLM.from_pretrained(merged)
        ids = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        ok = worst == 0.0 and ids.shape[1] == prompt.shape[1] + 8
        failures += not ok
        table.add_row(
            method,
            str(len(tensors)),
            f"{worst:.1e}",
            repr(tok.decode(ids[0, prompt.shape[1] :])),
            "[green]ok[/]" if ok else "[red]FAIL[/]",
        )
    console.print(table)
    console.print("all merges match their tensor functions" if not failures else f"[red]{failures} failed[/]")
    return 0 if not failures else 1
