"""``babelmerge report``: a markdown table, PNG plots and a terminal table from stored results.

The table lists every evaluated model (interpolation points are drawn, not tabulated) with target and source bits
per byte, their change against the baseline (the model labelled ``base``, or the one named), the weight change and
instruction accuracy. The report names the models on the learning-vs-forgetting Pareto front, computed over all
points including interpolations: a model that an interpolation of another dominates is not on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_dir
from ..errors import BabelmergeError
from . import plots
from .pareto import pareto_front
from .results import Result, load_results, load_trajectories


@dataclass
class Report:
    folder: Path
    rows: list[dict]
    front: list[str]
    figures: list[Path]


def _fmt(v: float | None, digits: int = 4, signed: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def choose_baseline(results: list[Result], name: str | None) -> Result | None:
    by_label = {r.label: r for r in results}
    if name is not None:
        if name not in by_label:
            raise BabelmergeError(
                f"baseline '{name}' is not among the results ({', '.join(sorted(by_label))})"
            )
        return by_label[name]
    return by_label.get("base")


def build_rows(results: list[Result], baseline: Result | None) -> list[dict]:
    rows = []
    for r in results:
        if r.alpha is not None:
            continue
        d_target = d_source = None
        if baseline and r.target_bpb is not None and baseline.target_bpb is not None:
            d_target = r.target_bpb - baseline.target_bpb
        if baseline and r.source_bpb is not None and baseline.source_bpb is not None:
            d_source = r.source_bpb - baseline.source_bpb
        rows.append(
            {
                "model": r.label,
                "target_bpb": r.target_bpb,
                "source_bpb": r.source_bpb,
                "d_target": d_target,
                "d_source": d_source,
                "weight_l2": r.weight_l2,
                "instruct_accuracy": r.instruct_accuracy,
            }
        )
    return rows


def front_of(results: list[Result]) -> tuple[list[str], list[str]]:
    """(models on the front, interpolation points on the front) over all points with both scores."""
    scored = [r for r in results if r.target_bpb is not None and r.source_bpb is not None]
    idx = pareto_front([(r.target_bpb, r.source_bpb) for r in scored])
    on = [scored[i] for i in idx]
    return [r.label for r in on if r.alpha is None], [r.label for r in on if r.alpha is not None]


def markdown(
    rows: list[dict],
    baseline: Result | None,
    models_on_front: list[str],
    points_on_front: list[str],
    figures: list[Path],
) -> str:
    base = baseline.label if baseline else None
    lines = [
        "# babelmerge report",
        "",
        "Bits per byte on held-out text (lower is better). *Target* = the language being learned, *source* = the "
        "language that must not be forgotten."
        + (
            f" Δ columns are against `{base}`: Δ target < 0 means learning, Δ source > 0 means forgetting."
            if base
            else ""
        ),
        "",
        "| model | target bpb | source bpb | Δ target | Δ source | weight change ‖Δθ‖ | instruction acc. | Pareto |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {_fmt(row['target_bpb'])} | {_fmt(row['source_bpb'])} | "
            f"{_fmt(row['d_target'], signed=True)} | {_fmt(row['d_source'], signed=True)} | "
            f"{_fmt(row['weight_l2'], 3)} | {_fmt(row['instruct_accuracy'], 3)} | "
            f"{'★' if row['model'] in models_on_front else ''} |"
        )
    lines += ["", "## Pareto front", ""]
    if models_on_front:
        lines.append(
            "Models on the learning-vs-forgetting Pareto front (no other evaluated point is better on both "
            f"axes): {', '.join(f'`{m}`' for m in models_on_front)}."
        )
    else:
        lines.append(
            "No evaluated model is on the Pareto front: interpolation points dominate every one of them."
        )
    if points_on_front:
        lines.append(f"Interpolation points on the front: {', '.join(f'`{p}`' for p in points_on_front)}.")
    lines += ["", "## Figures", ""]
    lines += [f"![{f.stem}]({f.name})" for f in figures]
    return "\n".join(lines) + "\n"


def make_report(
    inputs: list[str], out_dir: str | Path, *, baseline: str | None = None, overwrite: bool = True
) -> Report:
    """Read results and run metrics from ``inputs``; write ``report.md``, ``report.json`` and PNGs to ``out_dir``."""
    import json

    results = load_results(inputs)
    runs = load_trajectories(inputs)
    if not results and not runs:
        raise BabelmergeError("no evaluation results or training metrics found in " + ", ".join(inputs))
    base = choose_baseline(results, baseline)
    rows = build_rows(results, base)
    models_on_front, points_on_front = front_of(results)
    out = Path(out_dir)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        figures = []
        if any(r.target_bpb is not None and r.source_bpb is not None for r in results):
            figures.append(
                plots.learning_vs_forgetting(
                    [r for r in results if r.target_bpb is not None and r.source_bpb is not None],
                    base,
                    set(models_on_front),
                    tmp,
                )
            )
        for fig in (plots.forgetting_vs_weight_change(results, base, tmp), plots.trajectories(runs, tmp)):
            if fig is not None:
                figures.append(fig)
        (tmp / "report.md").write_text(
            markdown(rows, base, models_on_front, points_on_front, figures), encoding="utf-8"
        )
        summary = {
            "baseline": base.label if base else None,
            "rows": rows,
            "pareto_models": models_on_front,
            "pareto_points": points_on_front,
            "figures": [f.name for f in figures],
        }
        (tmp / "report.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        names = [f.name for f in figures]
    return Report(out, rows, models_on_front, [out / n for n in names])


def print_table(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"babelmerge report ({report.folder / 'report.md'})")
    width = max([len(r["model"]) for r in report.rows] + [5])
    for col in ("model", "target bpb", "source bpb", "Δ target", "Δ source", "‖Δθ‖", "instr. acc", "Pareto"):
        if col == "model":
            table.add_column(col, min_width=width, no_wrap=True)
        else:
            table.add_column(col, justify="right")
    for row in report.rows:
        table.add_row(
            row["model"],
            _fmt(row["target_bpb"]),
            _fmt(row["source_bpb"]),
            _fmt(row["d_target"], signed=True),
            _fmt(row["d_source"], signed=True),
            _fmt(row["weight_l2"], 3),
            _fmt(row["instruct_accuracy"], 3),
            "★" if row["model"] in report.front else "",
        )
    Console(width=max(100, width + 80)).print(table)
