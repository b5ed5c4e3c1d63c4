"""The ``babelmerge`` command line.

User errors (:class:`~babelmerge.errors.BabelmergeError`) print one line to stderr and exit with status 2;
Ctrl-C exits with 130. Each subcommand lives with its feature and registers itself here.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import BabelmergeError


def _cmd_merge(args: argparse.Namespace) -> int:
    from .engine import merge

    out = merge(
        args.config,
        args.out_dir,
        shard_size=args.shard_size,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        allow_pickle=True if args.allow_pickle else None,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"merged model written to {out}")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .methods import METHODS

    table = Table(title="merge methods")
    table.add_column("method", style="bold")
    table.add_column("base")
    table.add_column("parameters")
    table.add_column("formula")
    for m in METHODS.values():
        params = ", ".join(
            f"{p.name}{' (per model)' if p.per_model else ''}={p.default if p.default is not None else 'required'}"
            for p in m.params
        )
        table.add_row(m.name, "yes" if m.needs_base else "no", params, m.summary)
    Console().print(table)
    return 0


def _cmd_selftest(args: argparse.Namespace) -> int:
    from .selftest import run_selftest

    return run_selftest(args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="babelmerge", description="Adapt language models to new languages without forgetting."
    )
    parser.add_argument("--version", action="version", version=f"babelmerge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("merge", help="merge checkpoints described by a YAML config (mergekit-compatible)")
    p.add_argument("config", help="merge config YAML")
    p.add_argument("out_dir", help="output folder (must not exist unless --overwrite)")
    p.add_argument(
        "--shard-size", default=None, help="max output shard size, e.g. 5GB (default: config or 5GB)"
    )
    p.add_argument("--device", default=None, help="compute device, e.g. cpu or cuda (default: config or cpu)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"],
        help="output dtype (default: config, else the inputs' dtype)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for random methods (dare_*)")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow .bin checkpoints, loaded with torch.load(weights_only=True)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder when done")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser("methods", help="list the merge methods, their parameters and formulas")
    p.set_defaults(func=_cmd_methods)

    p = sub.add_parser(
        "selftest", help="build tiny models offline, merge them with every method, check the results"
    )
    p.add_argument("--out", default=None, help="keep the models and merges in this folder")
    p.set_defaults(func=_cmd_selftest)

    from .training.cli import register as register_train

    register_train(sub)
    from .evaluation.cli import register as register_eval

    register_eval(sub)
    from .report.cli import register as register_report

    register_report(sub)
    from .demo.cli import register as register_demo

    register_demo(sub)
    from .pipeline.cli import register as register_pipeline

    register_pipeline(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except BabelmergeError as e:
        print(f"babelmerge: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("babelmerge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
