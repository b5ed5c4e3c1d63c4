"""``babelmerge pipeline CONFIG.yaml``: the CLI subcommand (wired into ``babelmerge.cli`` by ``register``)."""

from __future__ import annotations

import argparse
import logging


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``pipeline`` subcommand to an argparse ``subparsers`` object; its handler is ``args.func``."""
    p = subparsers.add_parser(
        "pipeline",
        help="run named train / merge / evaluate steps in dependency order; rerun to resume",
        description=(
            "Run the steps of a pipeline YAML in dependency order. Each step whose output is complete and "
            "whose config and inputs are unchanged is skipped, so rerunning the command resumes the pipeline. "
            "See examples/low_resource_recipe.yaml."
        ),
    )
    p.add_argument("config", help="the pipeline's YAML config")
    p.add_argument("--output-dir", help="override the config's output_dir")
    p.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STEP",
        help="run this step again even if it is up to date (repeat; the steps using it run again too)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="validate everything and show what would run, run nothing"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    """Handler: run (or with --dry-run plan) the pipeline and print a table of the steps."""
    from rich.console import Console
    from rich.table import Table

    from .runner import run_pipeline

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    reports = run_pipeline(
        args.config,
        output_dir=args.output_dir,
        force=args.force,
        dry_run=args.dry_run,
        progress=not args.no_progress,
    )
    title = "pipeline plan (dry run)" if args.dry_run else "pipeline"
    table = Table(title=title)
    for col in ("step", "kind", "action", "why", "seconds", "output"):
        table.add_column(col)
    for r in reports:
        secs = "—" if args.dry_run or r.action == "skip" else f"{r.seconds:.1f}"
        table.add_row(r.name, r.kind, r.action, r.reason, secs, str(r.output))
    Console().print(table)
    return 0
