"""``babelmerge demo``: the whole method on a laptop CPU, offline, in minutes.

1. A corpus: the synthetic bilingual one (default) or real text (``--data DIR``).
2. A byte-level BPE tokenizer trained on it.
3. A tiny Llama pretrained on the source language with ~2 % target text (real LLMs have seen a little of most
   languages; without it the target's tokens are untrained and dominate every result).
4. Adaptation to the target language with standard continued pretraining and with Branch-and-Merge, on the same
   data and budget, with and without 25 % source replay, at two learning rates.
5. A source-language instruction-tuned (SFT) model from the same base, merged with the continually trained (CT)
   model by task arithmetic, TIES and TIES-SV (the low-resource recipe of Tao et al.).
6. Evaluation of every model (bits per byte on held-out source and target text, instruction accuracy on
   `say: X` / `кажи: X` prompts — half source, half target language — and weight change), interpolation curves for the two high-learning-rate runs, and a report.

Every stage writes into ``out_dir`` and is skipped when its output is complete, so a rerun is fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..engine import merge
from ..evaluation import evaluate
from ..report import make_report
from ..report.report import print_table
from .corpus import Corpus, real_corpus, synthetic_corpus


@dataclass(frozen=True)
class Budget:
    """Sizes of the demo: model, data and token budgets."""

    hidden: int
    layers: int
    vocab: int
    block: int
    pretrain_tokens: int
    adapt_tokens: int
    sft_tokens: int
    source_docs: int
    target_docs: int
    heldout_docs: int
    sft_examples: int
    batch: int
    pretrain_lr: float
    lrs: tuple[float, float]
    n_slices: int


FULL = Budget(
    hidden=128,
    layers=4,
    vocab=1024,
    block=128,
    pretrain_tokens=1_600_000,
    adapt_tokens=240_000,
    sft_tokens=160_000,
    source_docs=32_000,
    target_docs=8_000,
    heldout_docs=300,
    sft_examples=12_000,
    batch=16,
    pretrain_lr=2e-3,
    lrs=(1e-3, 2.5e-4),
    n_slices=4,
)
QUICK = Budget(
    hidden=48,
    layers=2,
    vocab=400,
    block=64,
    pretrain_tokens=120_000,
    adapt_tokens=32_768,
    sft_tokens=24_000,
    source_docs=3_000,
    target_docs=1_000,
    heldout_docs=40,
    sft_examples=2_000,
    batch=8,
    pretrain_lr=3e-3,
    lrs=(2e-3, 5e-4),
    n_slices=2,
)
REPLAY = 0.25
TARGET_SHARE_IN_PRETRAINING = 0.02


def _train(cfg: dict) -> Path:
    from ..training import train

    return train(cfg)


def _optim(b: Budget, lr: float) -> dict:
    return {"lr": lr, "warmup": 0.05, "per_device_batch_size": b.batch, "weight_decay": 0.01, "bf16": "auto"}


def _tokenizer(work: Path, corpus: Corpus, b: Budget) -> Path:
    from ..tiny import make_tiny_llama, train_tokenizer

    init = work / "init"
    if not (init / "config.json").exists():

        def sample(paths: list[Path], n_chars: int) -> list[str]:
            lines: list[str] = []
            for p in paths:
                lines += p.read_text(encoding="utf-8")[:n_chars].splitlines()
            return lines

        texts = sample(corpus.source_train, 2_000_000) + sample(corpus.target_train, 2_000_000)
        tmp = work / "init.tmp"
        tok = train_tokenizer(texts, tmp, vocab_size=b.vocab)
        make_tiny_llama(
            tmp,
            seed=0,
            vocab_size=len(tok),
            hidden_size=b.hidden,
            num_layers=b.layers,
            num_heads=4,
            max_position_embeddings=max(256, b.block),
        )
        tmp.rename(init)
    return init


def _data(
    sources: list[tuple[Path, float]], tokens: int, b: Budget, seed: int, cache: Path, fmt: str = "text"
) -> dict:
    return {
        "sources": [{"path": str(p), "ratio": r, "name": p.stem} for p, r in sources if r > 0],
        "token_budget": tokens,
        "block_size": b.block,
        "seed": seed,
        "cache_dir": str(cache),
        "format": fmt,
    }


def run_demo(
    out_dir: str | Path = "babelmerge-demo",
    *,
    data: str | None = None,
    manifest: str | None = None,
    quick: bool = False,
    seed: int = 0,
    console: Console | None = None,
) -> Path:
    """Run (or resume) the demo; return the report folder."""
    console = console or Console()
    b = QUICK if quick else FULL
    work = Path(out_dir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    if data:
        corpus = real_corpus(
            work / "corpus",
            Path(data),
            manifest,
            n_heldout_docs=b.heldout_docs,
            n_sft=b.sft_examples,
            seed=seed,
        )
    else:
        corpus = synthetic_corpus(
            work / "corpus",
            n_source_docs=b.source_docs,
            n_target_docs=b.target_docs,
            n_heldout_docs=b.heldout_docs,
            n_sft=b.sft_examples,
            seed=seed,
        )
    console.print(f"[bold]corpus[/]: {corpus.description}")
    init = _tokenizer(work, corpus, b)

    console.print("[bold]1/5 pretraining[/] on the source language (+2 % target)")
    src, tgt = corpus.source_train[0], corpus.target_train[0]
    pretrain = _train(
        {
            "model": str(init),
            "output_dir": str(work / "runs" / "pretrain"),
            "method": "standard",
            "n_slices": 1,
            "branches_per_iteration": 1,
            "seed": seed,
            "progress": False,
            "data": _data(
                [(src, 1 - TARGET_SHARE_IN_PRETRAINING), (tgt, TARGET_SHARE_IN_PRETRAINING)],
                b.pretrain_tokens,
                b,
                seed,
                cache,
            ),
            "optim": _optim(b, b.pretrain_lr),
        }
    )

    console.print("[bold]2/5 adapting[/] to the target: standard vs BaM, ± replay, two learning rates")
    adapted: dict[str, Path] = {}
    for lr_name, lr in zip(("lr_hi", "lr_lo"), b.lrs):
        for replay in (0.0, REPLAY):
            for method in ("standard", "bam"):
                name = f"{method}{'_replay' if replay else ''}_{lr_name}"
                cfg = {
                    "model": str(pretrain),
                    "output_dir": str(work / "runs" / name),
                    "method": method,
                    "n_slices": b.n_slices,
                    "branches_per_iteration": 2,
                    "seed": seed,
                    "progress": False,
                    "data": _data([(tgt, 1 - replay), (src, replay)], b.adapt_tokens, b, seed + 1, cache),
                    "optim": _optim(b, lr),
                }
                if method == "bam":
                    cfg["eval"] = {
                        "files": [str(corpus.target_heldout), str(corpus.source_heldout)],
                        "max_blocks": 16,
                    }
                adapted[name] = _train(cfg)
                console.print(f"  {name}: done")

    console.print("[bold]3/5 instruction tuning[/] (source language) and merging with the CT model")
    sft = _train(
        {
            "stage": "ift",
            "model": str(pretrain),
            "output_dir": str(work / "runs" / "sft"),
            "method": "standard",
            "n_slices": 1,
            "branches_per_iteration": 1,
            "seed": seed,
            "progress": False,
            "data": {
                **_data([(corpus.sft_train, 1.0)], b.sft_tokens, b, seed + 2, cache, fmt="chat"),
                "packing": True,
            },
            "optim": _optim(b, b.lrs[0]),
        }
    )
    ct = adapted["standard_lr_hi"]
    merges: dict[str, Path] = {}
    for method, per_model, params in (
        ("task_arithmetic", [{"weight": 1.0}, {"weight": 1.0}], {"lambda": 1.0}),
        ("ties", [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}], {}),
        ("ties_sv", [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5, "slack": 0.1}], {}),
    ):
        out = work / "merges" / f"ct+sft_{method}"
        if not (out / "babelmerge_config.yaml").exists():
            merge(
                {
                    "merge_method": method,
                    "base_model": str(pretrain),
                    "parameters": params,
                    "models": [
                        {"model": str(ct), "parameters": per_model[0]},
                        {"model": str(sft), "parameters": per_model[1]},
                    ],
                },
                out,
                progress=False,
            )
        merges[f"ct+sft_{method}"] = out

    console.print("[bold]4/5 evaluating[/] every model (bits per byte, instruction accuracy, weight change)")
    results = work / "results"
    models = {"base": pretrain, **adapted, "sft": sft, **merges}
    common = {
        "target": [str(corpus.target_heldout)],
        "source": [str(corpus.source_heldout)],
        "reference": str(pretrain),
        "instruct": str(corpus.instruct_eval),
        "max_new_tokens": 8,
        "max_length": b.block * 2,
        "out": str(results),
        "bf16": False,
        "batch_size": 16,
    }
    todo = {k: v for k, v in models.items() if not (results / f"{k}.json").exists()}
    if todo:
        evaluate({**common, "models": [str(p) for p in todo.values()], "labels": list(todo)})
    # Trade-off curves of the two high-learning-rate runs (this also rescores the runs themselves).
    curves = ["standard_lr_hi", "bam_lr_hi"]
    if not all((results / f"{k}@0.5.json").exists() for k in curves):
        evaluate(
            {
                **common,
                "models": [str(models[k]) for k in curves],
                "labels": curves,
                "base": str(pretrain),
                "interpolate": [0.25, 0.5, 0.75],
            }
        )

    console.print("[bold]5/5 report[/]")
    report = make_report([str(results), str(work / "runs")], work / "report")
    print_table(report)
    for line in summarize(report):
        console.print(line)
    console.print(f"report: {report.folder / 'report.md'}")
    return report.folder


def summarize(report) -> list[str]:
    """Two honest sentences on what the numbers say (computed, not canned)."""
    rows = {r["model"]: r for r in report.rows}

    def point(name: str) -> str:
        r = rows[name]
        return f"{name} learned {-r['d_target']:.3f} and forgot {r['d_source']:+.3f} bits/byte"

    first = (
        f"At the higher learning rate {point('standard_lr_hi')}, {point('bam_lr_hi')}; "
        f"with 25 % replay {point('standard_replay_lr_hi')} and {point('bam_replay_lr_hi')}."
    )
    bam_front = [m for m in report.front if m.startswith("bam")]
    verdict = (
        f"BaM is on the learning-vs-forgetting Pareto front ({', '.join(bam_front)})"
        if bam_front
        else "No BaM run is on the learning-vs-forgetting Pareto front on this data: other methods (or their "
        "interpolations toward the base) learn as much while forgetting less"
    )
    second = (
        f"{verdict}; the front is {', '.join(report.front) or 'only interpolation points'} (see report.md)."
    )
    return [first, second]


def load_summary(report_dir: Path) -> dict:
    return json.loads((report_dir / "report.json").read_text())
