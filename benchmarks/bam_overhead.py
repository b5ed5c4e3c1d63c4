"""BaM's orchestration overhead against standard continued pretraining on the same tokens (tiny CPU setting).

A ~2M-parameter Llama and a byte-level BPE tokenizer trained on a sample of ``../shared/data`` text; the
data is Bulgarian (Bible) with 25 % English replay (ELTeC novels). Both methods train on exactly the same
blocks with the same optimiser, schedule shape and number of optimiser steps; BaM (N slices, K branches
per iteration) additionally starts a Trainer per branch, saves every branch, merges, computes its update
statistics and writes the merged bases. The overhead is BaM's wall time minus standard's, as % of standard.

    python benchmarks/bam_overhead.py --workdir /tmp/bam_bench

On a shared machine the speed of the training loops varies by tens of % from run to run, so the
overhead is measured outside the loops (Trainer ``train_runtime`` subtracted from the wall time of each
run); the raw wall-time difference is reported as well. ``--repeats`` alternates the two methods.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def build_model(work: Path, vocab: int) -> Path:
    """Tokenizer trained on a sample of the data, and a tiny Llama (hidden 128, 4 layers)."""
    from babelmerge.tiny import make_tiny_llama, train_tokenizer

    model = work / "model"
    if (model / "config.json").exists():
        return model
    sample = []
    for f, n in [(DATA / "parallel" / "bible_train.bg.txt", 8000), (DATA / "en" / "eltec_train.txt", 3000)]:
        with open(f, encoding="utf-8") as fh:
            sample += [line for _, line in zip(range(n), fh)]
    tok = train_tokenizer(sample, model, vocab_size=vocab)
    make_tiny_llama(
        model,
        seed=0,
        vocab_size=len(tok),
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        intermediate_size=384,
        max_position_embeddings=512,
    )
    return model


def config(work: Path, model: Path, method: str, args, tag: str) -> dict:
    return {
        "model": str(model),
        "output_dir": str(work / f"{method}-{tag}"),
        "method": method,
        "n_slices": args.n,
        "branches_per_iteration": args.k,
        "seed": 0,
        "data": {
            "sources": [
                {"path": str(DATA / "parallel" / "bible_train.bg.txt"), "ratio": 0.75, "name": "bg"},
                {"path": str(DATA / "en" / "eltec_train.txt"), "ratio": 0.25, "name": "en"},
            ],
            "token_budget": args.tokens,
            "block_size": args.block,
            "cache_dir": str(work / "cache"),
        },
        "optim": {"lr": 1e-3, "per_device_batch_size": args.batch, "warmup": 0.05, "bf16": args.bf16},
        "backend": {"type": "sequential", "threads_per_branch": args.threads},
        "save_steps": args.save_steps,
        "logging_steps": 25,
        "progress": False,
    }


def timed_run(cfg: dict) -> tuple[float, list[dict]]:
    from babelmerge.training import train

    shutil.rmtree(cfg["output_dir"], ignore_errors=True)
    start = time.perf_counter()
    final = train(cfg)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(cfg["output_dir"], ignore_errors=True)
    return seconds, records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bam_bench"))
    p.add_argument("--tokens", type=int, default=262_144, help="token budget of each run")
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n", type=int, default=4, help="BaM slices N")
    p.add_argument("--k", type=int, default=2, help="BaM branches per iteration K")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--save-steps", type=int, default=200)
    p.add_argument("--bf16", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 keeps timings stable on a busy machine)"
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    args.bf16 = {"true": True, "false": False}.get(args.bf16, "auto")

    from safetensors.torch import load_file

    args.workdir.mkdir(parents=True, exist_ok=True)
    model = build_model(args.workdir, args.vocab)
    n_params = sum(t.numel() for t in load_file(model / "model.safetensors").values())
    # Warm-up: tokenize and cache the data, import everything (not timed).
    warm = config(args.workdir, model, "standard", args, "warmup")
    warm["data"]["token_budget"] = args.block * args.batch * args.n
    timed_run(warm)

    runs: dict[str, list[tuple[float, list[dict]]]] = {"standard": [], "bam": []}
    for r in range(args.repeats):
        for method in ("standard", "bam"):
            seconds, records = timed_run(config(args.workdir, model, method, args, str(r)))
            runs[method].append((seconds, records))
            print(f"repeat {r}: {method}: {seconds:.1f}s", file=sys.stderr)

    def summary(method_runs):
        """Per repeat: wall time, time inside the Trainer loops, the rest; the repeat with the least rest."""
        repeats = []
        for wall, records in method_runs:
            branches = [x for x in records if x["event"] == "branch"]
            merges = [x for x in records if x["event"] == "merge"]
            loop = sum(b["train_loop_seconds"] for b in branches)
            repeats.append(
                {
                    "wall_seconds": round(wall, 2),
                    "train_loop_seconds": round(loop, 2),
                    "outside_loop_seconds": round(wall - loop, 2),
                    "merge_seconds": round(sum(m["merge_seconds"] for m in merges), 2),
                    "stats_seconds": round(sum(m["stats_seconds"] for m in merges), 2),
                    "steps": sum(b["steps"] for b in branches),
                    "tokens": sum(b["tokens"] for b in branches),
                    "mean_train_loss": [round(b["mean_loss"], 4) for b in branches],
                }
            )
        return repeats

    std, bam = summary(runs["standard"]), summary(runs["bam"])
    # The training loops do the same work in both runs, but on a shared machine their speed varies by
    # tens of % from run to run; the orchestration overhead is therefore measured outside the loops:
    # BaM's time outside its Trainer loops minus standard's (least of the repeats each), as % of
    # standard's wall time. The raw wall-time difference (least of the repeats each) is reported too.
    extra = min(r["outside_loop_seconds"] for r in bam) - min(r["outside_loop_seconds"] for r in std)
    std_wall = min(r["wall_seconds"] for r in std)
    bam_wall = min(r["wall_seconds"] for r in bam)
    result = {
        "params": n_params,
        "torch_threads": args.threads,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "standard": std,
        "bam": bam,
        "orchestration_overhead_seconds": round(extra, 2),
        "orchestration_overhead_pct": round(100 * extra / std_wall, 2),
        "wall_difference_pct": round(100 * (bam_wall - std_wall) / std_wall, 2),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
