"""``babelmerge train CONFIG.yaml``: the CLI subcommand (wired into ``babelmerge.cli`` by ``register``)."""

from __future__ import annotations

import argparse
import logging


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to an argparse ``subparsers`` object; its handler is ``args.func``."""
    p = subparsers.add_parser(
        "train",
        help="continued pretraining: Branch-and-Merge or standard, from one YAML config",
        description=(
            "Train a model on a data mixture with Branch-and-Merge (or the standard single run). "
            "Rerun the same command to resume an interrupted run. Works under accelerate launch / torchrun."
        ),
    )
    p.add_argument("config", help="the run's YAML config (see examples/bam_cpt.yaml)")
    p.add_argument("--output-dir", help="override the config's output_dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    """Handler: load the config, apply the overrides, train; print the final model folder."""
    from .config import load_config
    from .run import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(args.config)
    updates = {}
    if args.output_dir:
        updates["output_dir"] = args.output_dir
    if args.no_progress:
        updates["progress"] = False
    if updates:
        cfg = cfg.model_copy(update=updates)
    final = train(cfg)
    print(final)
    return 0
