"""The report's figures (matplotlib, written as PNG files)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .results import Result


def _subplots(figsize: tuple[float, float]):
    """A figure and its axes, without pyplot: no global figure state, no backend switch, imported on first use."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _color(i: int):
    import matplotlib

    return matplotlib.colormaps["tab10"](i % 10)


def _deltas(r: Result, baseline: Result) -> tuple[float, float]:
    """(forgetting, learning): increase of source bpb and decrease of target bpb relative to the baseline."""
    return r.source_bpb - baseline.source_bpb, baseline.target_bpb - r.target_bpb


def learning_vs_forgetting(
    results: list[Result], baseline: Result | None, front: set[str], out: Path
) -> Path:
    """One point per model, interpolation curves as lines; x = forgetting, y = learning (up-left is better)."""
    fig, ax = _subplots((7.5, 5.5))
    ref = baseline or Result("origin", Path(), 0.0, 0.0)
    models = [r for r in results if r.alpha is None]
    colors = {r.label: _color(i) for i, r in enumerate(models)}
    curves: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        if r.alpha is not None and r.of:
            curves[r.of].append(r)
    for label, points in sorted(curves.items()):
        own = next((m for m in models if m.label == label), None)
        if own is not None and not any(p.alpha == 1.0 for p in points):
            points.append(Result(label, own.path, own.target_bpb, own.source_bpb, alpha=1.0, of=label))
        points.sort(key=lambda p: p.alpha)
        xs, ys = zip(*(_deltas(p, ref) for p in points))
        color = colors.get(label, "grey")
        ax.plot(
            xs,
            ys,
            ".-",
            color=color,
            alpha=0.45,
            linewidth=1.2,
            markersize=5,
            label=f"{label}: θ_base + α Δθ",
        )
        for p, x, y in zip(points, xs, ys):
            ax.annotate(
                f"α={p.alpha:g}", (x, y), fontsize=6, alpha=0.6, xytext=(2, -7), textcoords="offset points"
            )
    for r in models:
        x, y = _deltas(r, ref)
        on_front = r.label in front
        ax.scatter(
            [x],
            [y],
            s=110 if on_front else 40,
            marker="*" if on_front else "o",
            color=colors[r.label],
            zorder=3,
        )
        ax.annotate(r.label, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.axvline(0, color="grey", linewidth=0.6)
    unit = "vs " + baseline.label if baseline else "absolute"
    ax.set_xlabel(f"forgetting: Δ source bits/byte ({unit}; lower is better)")
    ax.set_ylabel(f"learning: −Δ target bits/byte ({unit}; higher is better)")
    ax.set_title("Learning vs forgetting (★ = on the Pareto front)")
    if curves:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = out / "learning_vs_forgetting.png"
    fig.savefig(path, dpi=130)
    return path


def forgetting_vs_weight_change(results: list[Result], baseline: Result | None, out: Path) -> Path | None:
    """Forgetting against the L2 norm of the weight change (the BaM paper's analysis)."""
    points = [r for r in results if r.weight_l2 is not None and r.source_bpb is not None]
    if not points:
        return None
    ref_source = baseline.source_bpb if baseline else 0.0
    fig, ax = _subplots((6.5, 4.5))
    for r in points:
        y = r.source_bpb - ref_source
        ax.scatter(
            [r.weight_l2], [y], s=20 if r.alpha is not None else 40, alpha=0.5 if r.alpha is not None else 1
        )
        if r.alpha is None:
            ax.annotate(r.label, (r.weight_l2, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("‖θ − θ_ref‖₂ (weight change)")
    ax.set_ylabel("forgetting: Δ source bits/byte")
    ax.set_title("Forgetting vs weight change")
    fig.tight_layout()
    path = out / "forgetting_vs_weight_change.png"
    fig.savefig(path, dpi=130)
    return path


def trajectories(runs: dict[str, list[dict]], out: Path) -> Path | None:
    """Held-out scores after each merge, per run and per held-out file."""
    if not runs:
        return None
    fig, ax = _subplots((6.5, 4.5))
    for run, records in sorted(runs.items()):
        by_file: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for rec in records:
            value = rec.get("bpb", rec.get("loss"))
            if value is not None and "iteration" in rec:
                by_file[rec.get("file", "heldout")].append((int(rec["iteration"]), float(value)))
        for name, pts in sorted(by_file.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{run}: {name}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration (score after its merge; −1 = the initial model)")
    ax.set_ylabel("held-out score (bits/byte, or loss)")
    ax.set_title("Training trajectory per iteration")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "trajectory.png"
    fig.savefig(path, dpi=130)
    return path
