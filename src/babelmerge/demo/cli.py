"""``babelmerge demo [--data DIR] [--quick]``."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="pretrain a tiny model, adapt it (standard vs BaM, ± replay, 2 LRs), SFT + merge, evaluate, report",
    )
    p.add_argument(
        "--out", default="babelmerge-demo", help="work folder (reused: finished stages are skipped)"
    )
    p.add_argument(
        "--data", help="real text laid out as DIR/<lang>/*.txt (default: a synthetic bilingual corpus)"
    )
    p.add_argument("--manifest", help="YAML naming the source/target train and held-out files under --data")
    p.add_argument(
        "--quick", action="store_true", help="a much smaller budget (about a minute; for smoke tests)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .run import run_demo

    run_demo(args.out, data=args.data, manifest=args.manifest, quick=args.quick, seed=args.seed)
    return 0
