"""The two training loops: Branch-and-Merge and the standard (single run) baseline.

BaM (Alexandrov et al. 2024): the data is cut into N slices; each of the ceil(N/K) iterations trains K
branches from the current base, each on its own slice, and merges them into the next base (optionally
through an outer step, see :mod:`.outer`). ``standard`` trains once over all slices in order with the same
optimiser, schedule shape and number of optimiser steps in total.

Only the main process merges and writes; under ``torchrun`` every rank trains the branches (data parallel)
and waits for the main process between iterations.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from babelmerge.atomic import atomic_dir
from babelmerge.methods import METHODS

from .branch import BranchSpec
from .config import MergeConfig, TrainConfig
from .heldout import HeldoutSet
from .metrics import step_records
from .run_state import RunDir, RunState
from .weights import one_thread, outer_step_model, update_stats

log = logging.getLogger(__name__)


@dataclass
class LoopContext:
    """What both loops share."""

    cfg: TrainConfig
    run: RunDir
    state: RunState
    backend: object
    tokenizer_dir: Path
    steps_per_slice: int
    tokens_per_step: int
    is_main: bool
    wait: object  # callable: barrier between processes
    heldout: HeldoutSet | None = None
    progress: object = None  # tqdm over branches, or None


def merge_config(mcfg: MergeConfig, base: str, branches: list[str]) -> dict:
    """The :func:`babelmerge.merge` config that merges ``branches`` trained from ``base``.

    Methods that need a base (model_stock, task_arithmetic, ties, ...) get the iteration's base; slerp goes
    from the first branch (t = 0) to the second (t = 1), ``t = 0.5`` unless set.
    """
    method = METHODS[mcfg.method]
    params = dict(mcfg.parameters)
    out = {
        "merge_method": mcfg.method,
        "models": [{"model": b, "parameters": dict(mcfg.model_parameters)} for b in branches],
        "dtype": mcfg.dtype,
    }
    if method.needs_base:
        out["base_model"] = base
    elif method.name == "slerp":
        out["base_model"] = branches[0]
        params.setdefault("t", 0.5)
    out["parameters"] = params
    return out


def merge_branches(mcfg: MergeConfig, base: Path, branches: list[Path], out_dir: Path, *, seed: int) -> Path:
    """Merge the branch models into ``out_dir`` (reusing it if a previous attempt completed it).

    A single branch (the last iteration when K does not divide N) is copied as is, unless the method
    is relative to the base (e.g. task arithmetic), which is meaningful for one model.
    """
    from babelmerge import merge

    if out_dir.exists():  # written atomically by a run that stopped before recording it
        return out_dir
    method = METHODS[mcfg.method]
    if len(branches) < method.min_models or (len(branches) == 1 and not method.needs_base):
        with atomic_dir(out_dir) as tmp:
            shutil.copytree(branches[0], tmp, dirs_exist_ok=True)
        return out_dir
    cfg = merge_config(mcfg, str(base), [str(b) for b in branches])
    with one_thread():
        return merge(cfg, out_dir, seed=seed, progress=False)


def branch_records(result: dict, tokens_per_step: int) -> list[dict]:
    """The per-step records of a branch and its summary record."""
    tags = result["tags"]
    steps = step_records(result["log_history"], tokens_per_step=tokens_per_step, **tags)
    summary = {
        "event": "branch",
        **tags,
        "steps": result["steps"],
        "tokens": result["tokens"],
        "seconds": round(result["seconds"], 3),
        "final_loss": steps[-1]["loss"] if steps else None,
        "resumed_from": result["resumed_from"],
    }
    end = next((e for e in reversed(result["log_history"]) if "train_loss" in e), None)
    if end is not None:
        summary["mean_loss"] = float(end["train_loss"])
        summary["train_loop_seconds"] = float(end["train_runtime"])  # the Trainer's loop alone
    return steps + [summary]


def _eval_records(ctx: LoopContext, model_dir: Path, iteration: int) -> list[dict]:
    if ctx.heldout is None:
        return []
    start = time.perf_counter()
    losses = ctx.heldout.losses(model_dir)
    took = round(time.perf_counter() - start, 3)
    return [
        {"event": "eval", "iteration": iteration, "file": name, "loss": loss, "seconds": took}
        for name, loss in losses.items()
    ]


def evaluate_initial(ctx: LoopContext) -> None:
    """Held-out losses of the initial model (iteration -1), once per run, as the reference point."""
    if ctx.heldout is not None and ctx.is_main and not ctx.state.data.get("initial_eval"):
        ctx.state.data["initial_eval"] = True
        ctx.state.add_records(_eval_records(ctx, Path(ctx.cfg.model), -1))


def _spec(
    ctx: LoopContext, name: str, base: Path, slices: list[int], out_dir: Path, tags: dict
) -> BranchSpec:
    """One Trainer run from ``base`` over ``slices`` (in order): steps_per_slice optimiser steps per slice."""
    cfg = ctx.cfg
    return BranchSpec(
        name=name,
        base_model=str(base),
        tokenizer=str(ctx.tokenizer_dir),
        slice_files=[str(ctx.run.slice_file(j)) for j in slices],
        out_dir=str(out_dir),
        max_steps=ctx.steps_per_slice * len(slices),
        tokens_per_step=ctx.tokens_per_step,
        seed=cfg.seed,
        optim=cfg.optim.model_dump(),
        save_steps=cfg.save_steps,
        logging_steps=cfg.logging_steps,
        training_args=dict(cfg.training_args),
        progress=cfg.progress,
        tags=tags,
    )


def run_bam(ctx: LoopContext) -> Path:
    """The BaM loop; returns the folder of the last base."""
    cfg, run, state = ctx.cfg, ctx.run, ctx.state
    initial = Path(cfg.model).expanduser().absolute()
    base = initial
    for i in range(cfg.n_iterations):
        slices = cfg.iteration_slices(i)
        if state.iteration(i) is not None:
            base = state.base_after(i)
            if ctx.progress is not None:
                ctx.progress.update(len(slices))
            continue
        log.info("iteration %d/%d: %d branches from %s", i + 1, cfg.n_iterations, len(slices), base)
        specs = [
            _spec(
                ctx,
                f"iter{i:03d}/branch{k}",
                base,
                [j],
                run.branch_dir(i, k),
                {"iteration": i, "branch": k, "slice": j},
            )
            for k, j in enumerate(slices)
        ]
        results = ctx.backend.run(specs)
        if ctx.progress is not None:
            ctx.progress.update(len(slices))
        if ctx.is_main:
            base = _merge_iteration(ctx, i, base, initial, specs, results)
        ctx.wait()
        state.reload()
        base = state.base_after(i)
    return base


def _merge_iteration(
    ctx: LoopContext, i: int, base: Path, initial: Path, specs: list[BranchSpec], results: list[dict]
) -> Path:
    """Merge iteration ``i``, take the outer step, record metrics, then prune the branch models."""
    cfg, run = ctx.cfg, ctx.run
    branch_dirs = [s.model_dir for s in specs]
    records = [r for res in results for r in branch_records(res, ctx.tokens_per_step)]

    start = time.perf_counter()
    merged = merge_branches(cfg.merge, base, branch_dirs, run.merged_dir(i), seed=cfg.seed)
    merge_seconds = time.perf_counter() - start
    new_base, outer_seconds = merged, 0.0
    if cfg.outer is not None:
        start = time.perf_counter()
        new_base = run.outer_dir(i)
        if not new_base.exists():
            prev = run.momentum_file(i - 1) if i > 0 and run.momentum_file(i - 1).exists() else None
            outer_step_model(
                base,
                merged,
                new_base,
                prev,
                run.momentum_file(i),
                lr=cfg.outer.lr,
                momentum=cfg.outer.momentum,
                nesterov=cfg.outer.nesterov,
            )
        outer_seconds = time.perf_counter() - start

    start = time.perf_counter()
    stats = update_stats(initial, base, branch_dirs, new_base)
    records.append(
        {
            "event": "merge",
            "iteration": i,
            "method": cfg.merge.method,
            "branches": len(specs),
            "tokens_seen": sum(res["tokens"] for res in results)
            + sum(r["tokens"] for r in ctx.state.data["records"] if r.get("event") == "branch"),
            **stats,
            "merge_seconds": round(merge_seconds, 3),
            "outer_seconds": round(outer_seconds, 3),
            "stats_seconds": round(time.perf_counter() - start, 3),
        }
    )
    records += _eval_records(ctx, new_base, i)
    ctx.state.finish_iteration(i, new_base, records)
    log.info("iteration %d merged into %s (%.1fs)", i + 1, new_base, merge_seconds + outer_seconds)

    if not cfg.keep_branch_checkpoints:
        for spec in specs:
            shutil.rmtree(spec.out_dir, ignore_errors=True)
    return new_base


def run_standard(ctx: LoopContext) -> Path:
    """The baseline: one run over all slices in order, N x steps_per_slice optimiser steps."""
    cfg, run, state = ctx.cfg, ctx.run, ctx.state
    if state.iteration(0) is not None:
        return state.base_after(0)
    spec = _spec(
        ctx,
        "standard",
        Path(cfg.model).expanduser().absolute(),
        list(range(cfg.n_slices)),
        run.standard_dir,
        {"iteration": 0, "branch": 0, "slice": "all"},
    )
    (result,) = ctx.backend.run([spec])
    if ctx.progress is not None:
        ctx.progress.update(cfg.n_slices)
    if ctx.is_main:
        initial = Path(cfg.model).expanduser().absolute()
        records = branch_records(result, ctx.tokens_per_step)
        stats = update_stats(initial, initial, [], spec.model_dir)
        records.append(
            {
                "event": "end",
                "iteration": 0,
                "tokens_seen": result["tokens"],
                "l2_from_initial": stats["l2_from_initial"],
            }
        )
        records += _eval_records(ctx, spec.model_dir, 0)
        state.finish_iteration(0, spec.model_dir, records)
    ctx.wait()
    state.reload()
    return state.base_after(0)
