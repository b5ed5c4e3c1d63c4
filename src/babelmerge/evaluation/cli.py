"""``babelmerge eval``: score models on held-out text, prompts and lm-eval tasks; write JSON results."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate learning (target text) vs forgetting (source text) of models")
    p.add_argument("models", nargs="+", help="model folders or Hub ids")
    p.add_argument(
        "--label", action="append", dest="labels", help="a label per model (repeat; default: folder name)"
    )
    p.add_argument(
        "--target", action="append", default=[], help="held-out text in the target language (repeat)"
    )
    p.add_argument(
        "--source", action="append", default=[], help="held-out text in the source language (repeat)"
    )
    p.add_argument("--text", action="append", default=[], metavar="NAME=FILE", help="another named text set")
    p.add_argument("--reference", help="weight change is measured from this model (default: --base)")
    p.add_argument("--base", help="base model for --interpolate")
    p.add_argument("--interpolate", help="score θ_base + α(θ − θ_base) for these α, e.g. 0,0.25,0.5,0.75,1")
    p.add_argument("--instruct", help="JSONL of {prompt, answer} for instruction accuracy")
    p.add_argument("--match", choices=["exact", "contains"], default="exact")
    p.add_argument("--ignore-case", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--tasks", help="comma-separated lm-eval tasks (needs the [eval] extra)")
    p.add_argument("--task-include", help="folder of local lm-eval task YAMLs")
    p.add_argument("--task-limit", type=float, help="examples per lm-eval task (count, or fraction if < 1)")
    p.add_argument("--max-length", type=int, default=1024, help="tokens per scoring window")
    p.add_argument("--stride", type=int, help="new tokens per window after the first (default: max-length/2)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--max-docs", type=int, help="score only the first N documents of each text file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="results folder (default: <model>/babelmerge_eval/)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..errors import BabelmergeError
    from .evaluate import evaluate
    from .interpolation import parse_alphas

    texts = {}
    for item in args.text:
        if "=" not in item:
            raise BabelmergeError(f"--text expects NAME=FILE, got {item!r}")
        name, path = item.split("=", 1)
        texts[name] = path
    try:
        alphas = parse_alphas(args.interpolate) if args.interpolate else []
    except ValueError as e:
        raise BabelmergeError(str(e)) from None
    cfg = {
        "models": args.models,
        "labels": args.labels,
        "target": args.target,
        "source": args.source,
        "texts": texts,
        "reference": args.reference,
        "base": args.base,
        "interpolate": alphas,
        "instruct": args.instruct,
        "match": args.match,
        "ignore_case": args.ignore_case,
        "max_new_tokens": args.max_new_tokens,
        "tasks": [t for t in (args.tasks or "").split(",") if t],
        "task_include": args.task_include,
        "task_limit": args.task_limit,
        "max_length": args.max_length,
        "stride": args.stride,
        "batch_size": args.batch_size,
        "bf16": args.bf16,
        "max_docs": args.max_docs,
        "device": args.device,
        "out": args.out,
        "trust_remote_code": args.trust_remote_code,
    }
    written = evaluate(cfg)
    import json

    table = Table(title="evaluation")
    for col in ("model", "target bpb", "source bpb", "instruct acc", "Δθ L2"):
        table.add_column(col)

    def fmt(v):
        return "—" if v is None else f"{v:.4f}"

    for path in written:
        r = json.loads(path.read_text())
        acc = r.get("instruct", {}).get("accuracy") if r.get("instruct") else None
        change = r.get("weight_change", {}).get("l2") if r.get("weight_change") else None
        table.add_row(r["label"], fmt(r["target_bpb"]), fmt(r["source_bpb"]), fmt(acc), fmt(change))
    Console().print(table)
    print(f"results: {', '.join(str(p) for p in written)}")
    return 0
