"""``train(config) -> Path``: validate, pack and slice the data, run BaM or standard CPT, write the final model."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from babelmerge.atomic import atomic_dir, atomic_write_json
from babelmerge.errors import BabelmergeError

from .bam import LoopContext, evaluate_initial, run_bam, run_standard
from .branch import distributed_state, load_slice, save_slice
from .config import TrainConfig, load_config
from .run_state import RunDir, RunState
from .validate import validate_inputs

log = logging.getLogger("babelmerge.training")


def train(config: TrainConfig | dict | str | os.PathLike, *, callbacks: list | None = None) -> Path:
    """Run the continued-pretraining job described by ``config`` (a TrainConfig, dict or YAML path).

    Returns the final model folder (``<output_dir>/final``: loadable with ``from_pretrained``, with the
    tokenizer). Rerunning an interrupted job with the same config resumes it; rerunning a finished job
    returns its final folder at once. ``callbacks`` are extra ``transformers.TrainerCallback`` objects
    given to every branch's Trainer (e.g. for monitoring).
    """
    cfg = load_config(config)
    dist = distributed_state()
    inputs = validate_inputs(cfg, world_size=dist.num_processes)
    run = RunDir(Path(cfg.output_dir).expanduser().absolute())

    with dist.main_process_first():
        state = RunState.open(
            run, cfg.fingerprint(), cfg.model_dump(mode="json"), writable=dist.is_main_process
        )
    with _log_to_file(run.log_file if dist.is_main_process else None):
        if state.final is not None and state.final.exists():
            log.info("run already finished: %s", state.final)
            return state.final
        steps_per_slice, tokens_per_step = _prepare_slices(cfg, run, state, inputs.tokenizer, dist)

        heldout = None
        if cfg.eval is not None and dist.is_main_process:
            from .heldout import HeldoutSet

            heldout = HeldoutSet.from_files(
                cfg.eval.files,
                inputs.tokenizer,
                cfg.data.block_size,
                cfg.eval.max_blocks,
                cfg.eval.batch_size,
            )
        from .backends import make_backend

        backend = make_backend(cfg.backend, callbacks)
        progress = None
        if cfg.progress and dist.is_main_process:
            from tqdm.auto import tqdm

            progress = tqdm(total=cfg.n_slices, desc=f"{cfg.method} slices", unit="slice", position=0)
        ctx = LoopContext(
            cfg=cfg,
            run=run,
            state=state,
            backend=backend,
            tokenizer_dir=inputs.tokenizer_dir.absolute(),
            steps_per_slice=steps_per_slice,
            tokens_per_step=tokens_per_step,
            is_main=dist.is_main_process,
            wait=dist.wait_for_everyone,
            heldout=heldout,
            progress=progress,
        )
        try:
            evaluate_initial(ctx)
            last = run_bam(ctx) if cfg.method == "bam" else run_standard(ctx)
        finally:
            backend.close()
            if progress is not None:
                progress.close()
        if dist.is_main_process:
            _write_final(cfg, last, run.final_dir, inputs.tokenizer_dir, inputs.model_dtype)
            state.set_final(run.final_dir)
            log.info("final model: %s", run.final_dir)
        dist.wait_for_everyone()
        return run.final_dir


def _prepare_slices(cfg: TrainConfig, run: RunDir, state: RunState, tokenizer, dist) -> tuple[int, int]:
    """Pack the data, cut it into N slices of whole optimiser steps and store them in the run directory.

    Returns ``(steps_per_slice, tokens_per_step)``. Done once per run (the main process writes; the others
    wait and read ``state.json``).
    """
    o = cfg.optim
    blocks_per_step = o.per_device_batch_size * o.gradient_accumulation_steps * dist.num_processes
    tokens_per_step = blocks_per_step * cfg.data.block_size
    if dist.is_main_process and not state.slices_ready:
        from babelmerge.data import make_slices, prepare_data

        packed = prepare_data(cfg.data, tokenizer)
        if len(packed) < cfg.n_slices:
            raise BabelmergeError(
                f"data: {len(packed)} blocks of {cfg.data.block_size} tokens cannot be cut into "
                f"n_slices={cfg.n_slices} slices; raise data.token_budget"
            )
        slices = make_slices(packed, cfg.n_slices, mode=cfg.slice_mode, seed=cfg.seed)
        steps = len(slices[0]) // blocks_per_step
        if steps == 0:
            raise BabelmergeError(
                f"data: each of the {cfg.n_slices} slices has {len(slices[0])} blocks, fewer than one optimiser "
                f"step ({blocks_per_step} blocks = per_device_batch_size x gradient_accumulation_steps x "
                f"{dist.num_processes} processes); raise data.token_budget or lower the batch size"
            )
        used = steps * blocks_per_step  # whole optimiser steps only: every branch does the same number
        for j, sl in enumerate(slices):
            save_slice(sl.subset(np.arange(used)), run.slice_file(j))
        state.set_slices(
            {
                "n_slices": cfg.n_slices,
                "blocks_per_slice": used,
                "blocks_dropped": len(packed) - used * cfg.n_slices,
                "steps_per_slice": steps,
                "tokens_per_step": tokens_per_step,
                "source_token_shares": packed.source_token_shares(),
            }
        )
        log.info(
            "data: %d slices x %d blocks (%d optimiser steps each, %d tokens per step)",
            cfg.n_slices,
            used,
            steps,
            tokens_per_step,
        )
    dist.wait_for_everyone()
    state.reload()
    info = state.data["slices"]
    if info["tokens_per_step"] != tokens_per_step:
        raise BabelmergeError(
            f"{run.root} was sliced for {info['tokens_per_step']} tokens per step; this launch has "
            f"{tokens_per_step} (a different number of processes?)"
        )
    load_slice(run.slice_file(cfg.n_slices - 1))  # fail early on a missing or corrupt slice
    return int(info["steps_per_slice"]), tokens_per_step


def _write_final(cfg: TrainConfig, last: Path, final: Path, tokenizer_dir: Path, model_dtype: str) -> None:
    """Publish the last base as ``final``: weights in the output dtype, config, tokenizer, a summary."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype_name = model_dtype if cfg.output_dtype == "auto" else cfg.output_dtype
    dtype = getattr(torch, dtype_name, torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(last), dtype=dtype)
    model.config.use_cache = True  # training turned it off; generation wants it
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if cfg.stage == "ift" and not getattr(tokenizer, "chat_template", None):
        from babelmerge.chat import DEFAULT_CHAT_TEMPLATE

        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE  # the template the training data was rendered with
    with atomic_dir(final, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(
            tmp / "babelmerge_training.json",
            {"method": cfg.method, "stage": cfg.stage, "from": str(last), "dtype": dtype_name},
        )


@contextmanager
def _log_to_file(path: Path | None):
    """Copy babelmerge's log records to ``path`` for the duration of the run."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("babelmerge")
    root.addHandler(handler)
    old_level = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
