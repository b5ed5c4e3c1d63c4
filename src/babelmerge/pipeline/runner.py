"""Run a pipeline: validate everything, decide which steps are up to date, run the others in order.

A step is **up to date** (and skipped) when its marker says ``complete``, its config fingerprint is unchanged,
each step it depends on is up to date with the same ``run_id`` as when it ran, and its output exists. Otherwise:

- never started: it runs;
- interrupted (``started`` marker, same config): it resumes — a train step continues its run directory from
  the last finished branch/checkpoint; merge and evaluate steps start over;
- changed (its config, or an input step that runs or ran again), forced, or its output missing: it runs again.
  A train step's previous folder is moved to ``<output_dir>/.superseded/<step>-<UTC time>/`` first (training is
  expensive; babelmerge never deletes it); a merge or evaluate step's output is replaced atomically when the new
  one is complete. The log says why each step runs.

Everything is validated before the first step runs: the pipeline structure, every step's config, and every input
that exists already (files, models; the merged models share the base), except outputs of steps that will run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..errors import BabelmergeError
from .config import Pipeline, load_pipeline
from .markers import read_marker, write_complete, write_started
from .steps import Inputs

log = logging.getLogger("babelmerge.pipeline")


@dataclass
class Decision:
    """What happens to a step: ``skip``, ``run``, ``resume`` or ``rerun``, and why."""

    action: str
    reason: str


@dataclass
class StepReport:
    name: str
    kind: str
    action: str  # skip | run | resume | rerun (what was done, or with dry_run what would be done)
    reason: str
    output: Path
    seconds: float = 0.0


def plan(pipe: Pipeline, force: list[str] | tuple[str, ...] = ()) -> dict[str, Decision]:
    """Decide, from the markers on disk, what each step needs (in pipeline order)."""
    for name in force:
        if name not in pipe.steps:
            raise BabelmergeError(f"--force: no step named '{name}' (steps: {', '.join(pipe.order)})")
    decisions: dict[str, Decision] = {}
    markers = {name: read_marker(pipe.steps[name].dir) for name in pipe.order}
    for name in pipe.order:
        step, marker = pipe.steps[name], markers[name]
        stale = [d for d in step.deps if decisions[d].action != "skip"]
        if name in force:
            decisions[name] = Decision("rerun" if marker else "run", "forced")
        elif marker is None:
            if step.dir.exists() and any(step.dir.iterdir()):
                raise BabelmergeError(
                    f"{step.where}: {step.dir} exists but was not written by this pipeline; move it away"
                )
            decisions[name] = Decision("run", "not run yet")
        elif marker["status"] == "started":
            if marker.get("config_hash") == step.config_hash and not stale:
                decisions[name] = Decision("resume", "interrupted; resuming")
            else:
                decisions[name] = Decision("rerun", "interrupted, and its config or inputs changed since")
        elif marker.get("config_hash") != step.config_hash:
            decisions[name] = Decision("rerun", "its config changed since it ran")
        elif stale:
            decisions[name] = Decision("rerun", f"input step '{stale[0]}' runs again")
        elif any(marker.get("inputs", {}).get(d) != markers[d].get("run_id") for d in step.deps):
            d = next(d for d in step.deps if marker.get("inputs", {}).get(d) != markers[d].get("run_id"))
            decisions[name] = Decision("rerun", f"input step '{d}' ran again since")
        elif not step.output.exists():
            decisions[name] = Decision("rerun", f"its output {step.output} is missing")
        else:
            decisions[name] = Decision("skip", "complete")
    return decisions


def validate_pipeline(pipe: Pipeline, decisions: dict[str, Decision]) -> None:
    """Check every input that exists now; outputs of steps that will (re)run are checked when their user runs."""
    pending = {pipe.steps[n].dir for n, d in decisions.items() if d.action != "skip"}
    trained_from = {
        step.output: step.config.model for step in pipe.steps.values() if step.kind.name == "train"
    }
    checkable = Inputs(pending, trained_from)
    for name in pipe.order:
        step = pipe.steps[name]
        if decisions[name].action != "skip":
            step.kind.check(step.config, step.where, checkable, pipe.config.max_base_distance)


def _supersede(pipe: Pipeline, step_dir: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = pipe.output_dir / ".superseded" / f"{step_dir.name}-{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    step_dir.rename(target)
    return target


def run_pipeline(
    config,
    *,
    output_dir: str | None = None,
    force: list[str] | tuple[str, ...] = (),
    dry_run: bool = False,
    progress: bool = True,
) -> list[StepReport]:
    """Run the pipeline in ``config`` (YAML path or dict); return what happened to each step, in run order.

    ``force`` names steps to run again even if up to date (their dependants run again too). With ``dry_run``
    everything is validated and the reports say what would happen, but nothing runs.
    """
    pipe = load_pipeline(config, output_dir=output_dir)
    decisions = plan(pipe, force)
    validate_pipeline(pipe, decisions)
    reports = [
        StepReport(n, pipe.steps[n].kind.name, decisions[n].action, decisions[n].reason, pipe.steps[n].output)
        for n in pipe.order
    ]
    if dry_run:
        return reports
    for report in reports:
        step = pipe.steps[report.name]
        if report.action == "skip":
            log.info("step %s (%s): complete, skipped (output %s)", step.name, report.kind, step.output)
            continue
        verb = {"run": "running", "resume": "resuming", "rerun": "running again"}[report.action]
        log.info("step %s (%s): %s (%s)", step.name, report.kind, verb, report.reason)
        if report.action == "rerun" and step.kind.name == "train" and step.dir.exists():
            moved = _supersede(pipe, step.dir)
            log.info("step %s: previous run moved to %s (delete it when no longer needed)", step.name, moved)
        inputs = {d: read_marker(pipe.steps[d].dir)["run_id"] for d in step.deps}
        step.dir.mkdir(parents=True, exist_ok=True)
        write_started(
            step.dir, step=step.name, kind=step.kind.name, config_hash=step.config_hash, inputs=inputs
        )
        started = read_marker(step.dir)
        t0 = time.perf_counter()
        try:
            step.kind.run(
                step.config,
                step.dir,
                where=step.where,
                max_base_distance=pipe.config.max_base_distance,
                progress=progress,
            )
        except BabelmergeError as err:  # name the step in errors raised by the train/merge/eval code
            message = str(err)
            raise BabelmergeError(
                message if message.startswith(step.where) else f"{step.where}: {message}"
            ) from None
        report.seconds = time.perf_counter() - t0
        if not step.output.exists():
            raise RuntimeError(f"step {step.name} finished without writing its output {step.output}")
        write_complete(step.dir, started, output=step.output, seconds=report.seconds)
        log.info(
            "step %s (%s): done in %.1f s (output %s)", step.name, report.kind, report.seconds, step.output
        )
    return reports
