"""``TrainConfig``: one YAML describing a continued-pretraining run (model, data, budget, method, optimiser,
merge, backend, output).

All models are pydantic with ``extra="forbid"``; :func:`load_config` turns validation errors into one-line
:class:`~babelmerge.errors.BabelmergeError` messages, with a "did you mean" suggestion for misspelt keys.
These checks are cheap and offline; checks that need the model, tokenizer or data run in
:mod:`babelmerge.training.validate` before any training starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from babelmerge.config_errors import load_yaml, validate_model
from babelmerge.data import DataConfig
from babelmerge.methods import METHODS

#: TrainingArguments fields that babelmerge sets itself from the config; ``training_args`` may not set them.
MANAGED_TRAINING_ARGS = {
    "output_dir": "output_dir",
    "max_steps": "data.token_budget / n_slices",
    "num_train_epochs": "data.token_budget / n_slices",
    "learning_rate": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "adam_beta1": "optim.adam_beta1",
    "adam_beta2": "optim.adam_beta2",
    "adam_epsilon": "optim.adam_epsilon",
    "optim": "optim.optimizer",
    "lr_scheduler_type": "optim.lr_scheduler",
    "lr_scheduler_kwargs": "optim.min_lr_ratio",
    "warmup_steps": "optim.warmup",
    "max_grad_norm": "optim.max_grad_norm",
    "per_device_train_batch_size": "optim.per_device_batch_size",
    "gradient_accumulation_steps": "optim.gradient_accumulation_steps",
    "gradient_checkpointing": "optim.gradient_checkpointing",
    "activation_checkpointing": "optim.gradient_checkpointing",
    "bf16": "optim.bf16",
    "seed": "seed",
    "data_seed": "seed",
    "save_steps": "save_steps",
    "save_strategy": "save_steps",
    "logging_steps": "logging_steps",
    "train_sampling_strategy": "(fixed: slices are already shuffled)",
    "resume_from_checkpoint": "(automatic: rerun the same command)",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimConfig(_Strict):
    """The optimiser and schedule of one branch (and of the ``standard`` run, over the whole budget).

    Every branch starts a fresh AdamW and a fresh schedule: linear warmup then cosine decay over the branch.
    """

    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    adam_beta1: float = Field(default=0.9, ge=0, lt=1)
    adam_beta2: float = Field(default=0.95, ge=0, lt=1)
    adam_epsilon: float = Field(default=1e-8, gt=0)
    optimizer: str = "adamw_torch"
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    #: Cosine decays to ``lr * min_lr_ratio`` (0 = to zero).
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    #: Warmup: a float in [0, 1) is a fraction of the branch's steps, a number >= 1 a step count.
    warmup: float = Field(default=0.05, ge=0)
    max_grad_norm: float = Field(default=1.0, ge=0)
    per_device_batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    gradient_checkpointing: bool = False
    #: bf16 mixed precision: ``auto`` = on where supported (CUDA with bf16, CPUs with native bf16), else off.
    bf16: bool | Literal["auto"] = "auto"

    @field_validator("warmup")
    @classmethod
    def _warmup_steps_are_whole(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError("warmup >= 1 is a number of steps and must be a whole number")
        return v


class MergeConfig(_Strict):
    """How the K branches of an iteration are merged (passed to :func:`babelmerge.merge`).

    ``linear`` (plain averaging) is the BaM default; ``slerp`` (exactly two branches, ``t`` default 0.5) and
    ``model_stock`` are the paper's alternatives. Methods that need a base model (model_stock,
    task_arithmetic, ties, ...) get the iteration's starting point as their base.
    """

    method: str = "linear"
    #: Global method parameters, e.g. ``{t: 0.5}`` for slerp or ``{density: 0.5}`` for ties.
    parameters: dict[str, Any] = Field(default_factory=dict)
    #: Parameters given to every branch model, e.g. ``{weight: 1.0}`` (linear default).
    model_parameters: dict[str, Any] = Field(default_factory=dict)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @field_validator("method")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METHODS:
            hint = difflib.get_close_matches(v, list(METHODS), n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(f"unknown merge method {v!r} (choose from {', '.join(sorted(METHODS))}){extra}")
        return v


class OuterConfig(_Strict):
    """The outer step (DiLoCo form): ``base <- base - lr * d`` with the outer gradient ``g = base - merged``.

    With momentum ``mu``: ``buf <- mu * buf + g``; ``d = g + mu * buf`` (Nesterov) or ``d = buf``.
    ``lr = 1, momentum = 0`` is plain BaM (the next base is the merge).
    """

    lr: float = Field(default=1.0, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    nesterov: bool = True


class RayConfig(_Strict):
    """Ray settings for ``backend: ray``."""

    #: ``None`` starts a local Ray instance; ``"auto"`` or ``"ray://host:10001"`` joins a cluster.
    address: str | None = None
    cpus_per_branch: float = Field(default=1, gt=0)
    gpus_per_branch: float = Field(default=0, ge=0)
    #: Extra keyword arguments for ``ray.init`` (e.g. ``num_cpus`` for a local instance).
    init_kwargs: dict[str, Any] = Field(default_factory=dict)


class BackendConfig(_Strict):
    """Where the K branches of an iteration run: one after another, or as parallel Ray tasks."""

    type: Literal["sequential", "ray"] = "sequential"
    ray: RayConfig = Field(default_factory=RayConfig)
    #: torch CPU threads per branch (``None``: torch's default; Ray sets it to ``ray.cpus_per_branch``).
    threads_per_branch: int | None = Field(default=None, ge=1)


class EvalConfig(_Strict):
    """Held-out evaluation after every merge: mean next-token loss on each text file (one document a line)."""

    files: list[str] = Field(min_length=1)
    max_blocks: int = Field(default=64, ge=1)
    batch_size: int = Field(default=8, ge=1)


class TrainConfig(_Strict):
    """A training run: continued pretraining or instruction tuning, with Branch-and-Merge or standard.

    ``stage`` names the training stage and fixes the kind of data: ``cpt`` (continued pretraining) trains
    on packed raw text (``data.format: text``); ``ift`` (instruction tuning) on conversations
    (``data.format: chat``: loss on assistant tokens only, labels -100 elsewhere). Everything else (BaM,
    merging, resuming, backends) is shared; the final model of an ``ift`` run carries the chat template
    its data was rendered with.
    """

    stage: Literal["cpt", "ift"] = "cpt"
    model: str
    #: Tokenizer folder; default: the model folder.
    tokenizer: str | None = None
    output_dir: str
    method: Literal["bam", "standard"] = "bam"
    #: N: the data is cut into this many equal slices; each branch trains on one.
    n_slices: int = Field(default=4, ge=1)
    #: K: branches trained (from the same base) and merged per iteration; ceil(N / K) iterations.
    branches_per_iteration: int = Field(default=2, ge=1)
    slice_mode: Literal["iid", "ordered"] = "iid"
    seed: int = 0
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    #: Optional outer step generalising the merge; ``None`` = plain BaM.
    outer: OuterConfig | None = None
    backend: BackendConfig = Field(default_factory=BackendConfig)
    eval: EvalConfig | None = None
    #: Trainer checkpoint interval (optimiser steps) inside a branch, for resuming an interrupted branch.
    save_steps: int = Field(default=200, ge=1)
    logging_steps: int = Field(default=10, ge=1)
    #: Keep the branch models after their merge is written (else they are deleted to save disk).
    keep_branch_checkpoints: bool = False
    #: Dtype of the final model: ``auto`` = the dtype of the input model.
    output_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: Passed through to ``transformers.TrainingArguments`` (e.g. ``fsdp``, ``fsdp_config``, ``deepspeed``,
    #: ``ddp_find_unused_parameters``, ``torch_compile``). Keys babelmerge manages itself are refused.
    training_args: dict[str, Any] = Field(default_factory=dict)
    progress: bool = True

    @field_validator("training_args")
    @classmethod
    def _training_args_known(cls, v: dict[str, Any]) -> dict[str, Any]:
        from transformers import TrainingArguments

        known = {f.name for f in dataclasses.fields(TrainingArguments)}
        for key in v:
            if key in MANAGED_TRAINING_ARGS:
                raise ValueError(
                    f"training_args.{key} is set by babelmerge; use {MANAGED_TRAINING_ARGS[key]}"
                )
            if key not in known:
                hint = difflib.get_close_matches(key, sorted(known), n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ValueError(f"training_args.{key} is not a TrainingArguments field{extra}")
        return v

    @model_validator(mode="after")
    def _shape(self) -> TrainConfig:
        wanted = {"cpt": "text", "ift": "chat"}[self.stage]
        if self.data.format != wanted:
            raise ValueError(
                f"stage {self.stage} trains on data.format {wanted!r}, but data.format is {self.data.format!r}"
            )
        if self.branches_per_iteration > self.n_slices:
            raise ValueError(
                f"branches_per_iteration (K={self.branches_per_iteration}) exceeds n_slices (N={self.n_slices})"
            )
        method = METHODS[self.merge.method]
        k = self.branches_per_iteration
        if self.method == "bam" and method.max_models is not None and k > method.max_models:
            raise ValueError(
                f"merge.method {method.name} merges at most {method.max_models} models, "
                f"but branches_per_iteration is {k}"
            )
        if self.outer is not None and self.method == "standard":
            raise ValueError("'outer' applies to method: bam only")
        if self.backend.type == "ray" and self.method == "standard":
            raise ValueError(
                "backend: ray runs the branches of BaM in parallel; method: standard has one run"
            )
        return self

    # -- derived quantities -------------------------------------------------------------------------

    @property
    def n_iterations(self) -> int:
        """ceil(N / K) for BaM; 1 for standard."""
        return math.ceil(self.n_slices / self.branches_per_iteration) if self.method == "bam" else 1

    def iteration_slices(self, iteration: int) -> list[int]:
        """Slice indices trained (one per branch) in ``iteration``; the last iteration may have fewer than K."""
        k = self.branches_per_iteration
        return list(range(iteration * k, min((iteration + 1) * k, self.n_slices)))

    def fingerprint(self) -> str:
        """Hash of everything that decides the trained weights (not backend, progress, eval or pruning),
        used to refuse resuming a run directory with a different config."""
        ignore = {"backend", "progress", "eval", "keep_branch_checkpoints", "output_dir", "logging_steps"}
        payload = self.model_dump(mode="json", exclude=ignore)
        payload["data"].pop("num_proc", None)
        payload["data"].pop("cache_dir", None)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_config(config: TrainConfig | dict | str | Path) -> TrainConfig:
    """A :class:`TrainConfig` from itself, a dict or a YAML file; errors are one-line BabelmergeErrors."""
    if isinstance(config, TrainConfig):
        return config
    where = "config"
    if isinstance(config, str | os.PathLike):
        where = str(config)
        config = load_yaml(where)
    return validate_model(TrainConfig, config, where)
