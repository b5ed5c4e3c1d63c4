"""``babelmerge report RESULTS_OR_RUNS… --out DIR``."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("report", help="tables and plots of learning vs forgetting from stored results")
    p.add_argument("inputs", nargs="+", help="result JSON files, results folders or training run folders")
    p.add_argument("--out", required=True, help="report folder (replaced when complete)")
    p.add_argument("--baseline", help="label of the model the Δ columns compare with (default: 'base')")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .report import make_report, print_table

    report = make_report(args.inputs, args.out, baseline=args.baseline)
    print_table(report)
    print(f"report: {report.folder / 'report.md'}")
    return 0
