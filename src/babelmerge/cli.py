"""The ``babelmerge`` command line.

User errors (:class:`~babelmerge.errors.BabelmergeError`) print one line to stderr and exit with status 2;
Ctrl-C exits with 130. Each subcommand lives with its feature and registers itself here. :func:`main` is
the in-process entry (tests call it); the console script runs :func:`run`, which ends a `merge` with
:func:`exit_now` instead of the interpreter's teardown.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
from typing import NoReturn

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
    p.set_defaults(func=_cmd_merge, exit_now=True)

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
    return _dispatch(build_parser().parse_args(argv))


def run() -> NoReturn:
    """The console script: :func:`main`, then :func:`exit_now` for the commands that ask for it (`merge`)."""
    args = build_parser().parse_args()
    code = _dispatch(args)
    if getattr(args, "exit_now", False):
        exit_now(code)
    sys.exit(code)


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` after the atexit handlers and a flush of stdout/stderr, skipping the rest of teardown.

    After a merge every output is written, fsynced and renamed into place; what the interpreter would still
    do is tear down its modules and run full garbage collections over torch's, numba's and LLVM's objects:
    0.83–0.98 s after a 0.47B-parameter TIES merge, 0.16–0.19 s with this exit (`benchmarks/merge_bench.md`,
    change 17; the I/O floor of that merge is ~1 s). The atexit handlers still run (logging's flush, `weakref.finalize`, multiprocessing),
    and when a non-daemon thread is still alive the ordinary exit, which waits for it, is taken instead.
    """
    others = [t for t in threading.enumerate() if t is not threading.current_thread()]
    if any(t.is_alive() and not t.daemon for t in others):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said on it
            pass
    os._exit(code)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return args.func(args) or 0
    except BabelmergeError as e:
        print(f"babelmerge: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("babelmerge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    run()
