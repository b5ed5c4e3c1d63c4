"""One *branch*: a Hugging Face ``Trainer`` run from a checkpoint on one or more data slices.

Each branch starts a fresh AdamW with linear warmup and cosine decay over the branch, optionally bf16
autocast, gradient accumulation and gradient checkpointing. Trainer checkpoints are written every
``save_steps`` into ``<branch>/checkpoints``; an interrupted branch resumes from the latest one, so its
result equals that of an uninterrupted run. The finished model is published atomically to
``<branch>/model`` (with the tokenizer and ``branch_result.json``); its existence marks the branch as done.

The same code runs under ``accelerate launch`` / ``torchrun``: the Trainer then does data parallelism
(DDP, FSDP or DeepSpeed as configured through ``training_args``) and only the main process writes files.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from babelmerge.atomic import atomic_dir
from babelmerge.data import BlockDataset, PackedData
from babelmerge.errors import BabelmergeError
from babelmerge.gc_pause import frozen_gc

log = logging.getLogger(__name__)

RESULT_FILE = "branch_result.json"
#: PackedData arrays that only some data has (chat: labels, position_ids, row_tokens); kept in the slices.
OPTIONAL_ARRAYS = ("labels", "position_ids", "row_tokens")


@dataclass
class BranchSpec:
    """Everything one branch needs, as plain data (it is shipped to Ray workers as is)."""

    name: str  # e.g. "iter001/branch0" or "standard"
    base_model: str  # folder to start from
    tokenizer: str  # folder of the tokenizer saved with the model
    slice_files: list[str]  # packed slices (.npz), trained in this order
    out_dir: str  # the branch folder: checkpoints/ and model/ go below it
    max_steps: int  # optimiser steps
    tokens_per_step: int  # effective batch x block size (all processes)
    seed: int
    optim: dict[str, Any]  # OptimConfig as a dict
    save_steps: int
    logging_steps: int
    training_args: dict[str, Any] = field(default_factory=dict)
    num_threads: int | None = None
    progress: bool = True
    tags: dict[str, Any] = field(default_factory=dict)  # iteration/branch/slice, copied into the result

    @property
    def model_dir(self) -> Path:
        return Path(self.out_dir) / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.out_dir) / "checkpoints"


class NonFiniteLossError(RuntimeError):
    """Raised inside the training loop at the first NaN/inf loss, before the optimiser applies it."""

    def __init__(self, step: int, what: str):
        super().__init__(f"{what} at step {step}")
        self.step, self.what = step, what


def resolve_bf16(setting: bool | str) -> bool:
    """``auto`` -> bf16 on CUDA devices that support it, and on CPUs with native bf16 instructions
    (AVX512-BF16 or AMX), where autocast is fast; off elsewhere (emulated bf16 on an AVX2 CPU measured
    about 5x slower than float32)."""
    if setting != "auto":
        return bool(setting)
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def cpu_only() -> bool:
    """True when torch sees no accelerator (CUDA, XPU, MPS, ...): training runs on the CPU."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return not accelerator.is_available()
    return not torch.cuda.is_available()


def distributed_state():
    """accelerate's process state (rank, world size), created CPU-aware so that ``torchrun`` on a machine
    without accelerators runs multi-CPU DDP (gloo) instead of N independent processes."""
    from accelerate import PartialState

    return PartialState(cpu=cpu_only())


def cpu_has_native_bf16() -> bool:
    """Whether the CPU advertises bf16 arithmetic (Linux ``/proc/cpuinfo`` flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def save_slice(data: PackedData, path: Path) -> None:
    """Write one slice as an ``.npz`` (plain arrays, no pickle) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.stem + ".partial.npz")
    arrays = {"input_ids": data.input_ids, "source": data.source, "source_names": np.array(data.source_names)}
    for name in OPTIONAL_ARRAYS:
        if getattr(data, name) is not None:
            arrays[name] = getattr(data, name)
    np.savez(part, **arrays)
    part.replace(path)


def load_slice(path: str | Path) -> PackedData:
    """Read a slice written by :func:`save_slice`."""
    with np.load(path, allow_pickle=False) as z:
        return PackedData(
            input_ids=z["input_ids"],
            source=z["source"],
            source_names=[str(s) for s in z["source_names"]],
            **{name: z[name] if name in z.files else None for name in OPTIONAL_ARRAYS},
        )


def concat_slices(parts: list[PackedData]) -> PackedData:
    """Slices one after another (the standard run trains on all of them in order)."""
    if len(parts) == 1:
        return parts[0]

    def cat(name):
        arrays = [getattr(p, name) for p in parts]
        return None if arrays[0] is None else np.concatenate(arrays)

    return PackedData(
        input_ids=cat("input_ids"),
        source=cat("source"),
        source_names=parts[0].source_names,
        **{name: cat(name) for name in OPTIONAL_ARRAYS},
    )


def last_complete_checkpoint(folder: Path, *, remove_incomplete: bool = False) -> str | None:
    """The newest Trainer checkpoint in ``folder`` that was completely written, or ``None``.

    The Trainer writes a checkpoint in place and its ``trainer_state.json`` last, so a checkpoint without
    that file was interrupted while being saved; with ``remove_incomplete`` such folders are deleted.
    """
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if not (path.is_dir() and suffix.isdigit()):
            continue
        if (path / "trainer_state.json").is_file():
            found.append((int(suffix), path))
        elif remove_incomplete:
            shutil.rmtree(path, ignore_errors=True)
    return str(max(found)[1]) if found else None


def branch_done(spec: BranchSpec) -> bool:
    return (spec.model_dir / RESULT_FILE).is_file()


def read_result(spec: BranchSpec) -> dict:
    return json.loads((spec.model_dir / RESULT_FILE).read_text())


def training_arguments(spec: BranchSpec, *, disable_tqdm: bool):
    """The ``TrainingArguments`` of a branch: babelmerge's settings plus the ``training_args`` pass-through."""
    from transformers import TrainingArguments

    o = spec.optim
    scheduler, sched_kwargs = o["lr_scheduler"], {}
    if scheduler == "cosine" and o["min_lr_ratio"] > 0:
        scheduler, sched_kwargs = "cosine_with_min_lr", {"min_lr_rate": o["min_lr_ratio"]}
    warmup = o["warmup"] if o["warmup"] < 1 else int(o["warmup"])
    kwargs = dict(
        output_dir=str(spec.checkpoint_dir),
        max_steps=spec.max_steps,
        per_device_train_batch_size=o["per_device_batch_size"],
        gradient_accumulation_steps=o["gradient_accumulation_steps"],
        learning_rate=o["lr"],
        weight_decay=o["weight_decay"],
        adam_beta1=o["adam_beta1"],
        adam_beta2=o["adam_beta2"],
        adam_epsilon=o["adam_epsilon"],
        optim=o["optimizer"],
        lr_scheduler_type=scheduler,
        lr_scheduler_kwargs=sched_kwargs,
        warmup_steps=warmup,
        max_grad_norm=o["max_grad_norm"],
        bf16=resolve_bf16(o["bf16"]),
        logging_steps=spec.logging_steps,
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=2,
        seed=spec.seed,
        data_seed=spec.seed,
        # The slices are shuffled when they are cut; reading them in order makes the standard run see
        # exactly the BaM branches' token stream, and keeps resuming exact.
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=disable_tqdm,
    )
    if o["gradient_checkpointing"]:  # renamed activation_checkpointing in transformers 5
        known = {f.name for f in dataclasses.fields(TrainingArguments)}
        key = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
        kwargs[key] = True
    if cpu_only():
        # Needed for bf16 autocast on CPU, and for accelerate to see a torchrun launch as multi-CPU DDP.
        kwargs["use_cpu"] = True
    kwargs.update(spec.training_args)
    return TrainingArguments(**kwargs)


def run_branch(spec: BranchSpec, callbacks: list | None = None) -> dict:
    """Train one branch (or resume it, or return its stored result if it is finished).

    Returns the branch result: ``tags``, ``steps``, ``tokens``, ``seconds``, ``resumed_from`` and the
    Trainer's ``log_history``. Raises :class:`BabelmergeError` on a non-finite loss, naming the last good
    checkpoint (which is kept).
    """
    if branch_done(spec):
        return read_result(spec)
    threads = torch.get_num_threads()
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    try:
        return _train_branch(spec, callbacks)
    finally:
        torch.set_num_threads(threads)


def _train_branch(spec: BranchSpec, callbacks: list | None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    state = distributed_state()
    start = time.perf_counter()

    data = concat_slices([load_slice(f) for f in spec.slice_files])
    model = AutoModelForCausalLM.from_pretrained(spec.base_model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer)
    args = training_arguments(spec, disable_tqdm=not (spec.progress and state.is_main_process))
    # No KV cache in training; it also lets transformers mask packed chat examples apart by position_ids.
    model.config.use_cache = False

    trainer = guarded_trainer_class()(
        model=model,
        args=args,
        train_dataset=BlockDataset(data),
        callbacks=list(callbacks or []),
    )
    resume = last_complete_checkpoint(spec.checkpoint_dir, remove_incomplete=state.is_main_process)
    state.wait_for_everyone()
    if resume:
        log.info("%s: resuming from %s", spec.name, resume)
    # The Trainer runs gc.collect() at start; freezing the objects that already exist keeps that cheap in a
    # long-lived process (measured 0.3 s per branch in the test suite's process).
    try:
        with frozen_gc():
            trainer.train(resume_from_checkpoint=resume)
    except NonFiniteLossError as err:
        last = last_complete_checkpoint(spec.checkpoint_dir)
        kept = (
            f"last good checkpoint kept: {last}" if last else f"no checkpoint yet (base: {spec.base_model})"
        )
        raise BabelmergeError(
            f"branch {spec.name}: {err.what} at step {err.step} "
            f"(optim.lr={spec.optim['lr']}); stopped; {kept}"
        ) from None

    result = {
        "name": spec.name,
        "tags": spec.tags,
        "steps": int(trainer.state.global_step),
        "tokens": int(trainer.state.global_step) * spec.tokens_per_step,
        "seconds": time.perf_counter() - start,
        "resumed_from": resume,
        "log_history": trainer.state.log_history,
    }
    if state.is_main_process:
        with atomic_dir(spec.model_dir, overwrite=True) as tmp:
            trainer.save_model(str(tmp))
            (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the config is in the run dir
            tokenizer.save_pretrained(str(tmp))
            (tmp / RESULT_FILE).write_text(json.dumps(result, indent=1))
        # The Trainer checkpoints only served to resume this branch; the published model replaces them.
        shutil.rmtree(spec.checkpoint_dir, ignore_errors=True)
    else:
        trainer.save_model(str(spec.model_dir))  # joins collective gathers (FSDP/DeepSpeed); writes nothing
    state.wait_for_everyone()
    return result


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


@functools.cache
def guarded_trainer_class():
    """``transformers.Trainer`` subclass used for every branch (built on first use: transformers' Trainer
    takes seconds to import, and the CLI imports this module for every subcommand)."""
    from transformers import Trainer

    class GuardedTrainer(Trainer):
        """A ``Trainer`` that stops at the first non-finite loss, never checkpoints non-finite weights,
        and skips the Trainer's own checkpoint after the last step (the branch model is published instead)."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(self.state.global_step + 1, f"training loss became {value}")
            return loss

        def _save_checkpoint(self, model, trial):
            if self.state.global_step >= self.state.max_steps:
                return  # run_branch publishes the finished model; optimizer state would be wasted I/O
            if not _all_finite(model):
                raise NonFiniteLossError(self.state.global_step, "weights became non-finite (NaN/inf)")
            super()._save_checkpoint(model, trial)

    return GuardedTrainer
