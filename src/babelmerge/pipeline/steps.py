"""The three kinds of step: ``train``, ``merge`` and ``evaluate``.

Each kind knows how to validate its config (the same config its standalone command takes, with the keys the
pipeline manages filled in), which output it produces inside the step folder, how to fingerprint its config (a
changed fingerprint means the step runs again), which inputs it can check before anything runs, and how to run.

Step folder layout (``<output_dir>/<step>/``):

- train: ``run/`` is the training run directory (resumable by itself); the output is ``run/final``;
- merge: the output is ``model/``;
- evaluate: the output is ``results/`` with one ``<label>.json`` per model (see :func:`babelmerge.evaluation.evaluate`).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from ..checkpoint import HUB_ID, open_checkpoint, resolve_model_path
from ..config_errors import validate_model
from ..errors import BabelmergeError
from .base_check import check_shared_base
from .references import sole_reference


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _refuse_managed(body: dict, key: str, where: str, value: str) -> None:
    if key in body:
        raise BabelmergeError(f"{where}.{key} is set by the pipeline (to {value}); remove it")


class StepKind(ABC):
    """Interface of a step kind; see the module docstring."""

    name: ClassVar[str]

    @abstractmethod
    def output(self, step_dir: Path) -> Path:
        """Where the step's result lives inside ``step_dir``."""

    @abstractmethod
    def validate(self, body: dict, raw: dict, step_dir: Path, where: str) -> BaseModel:
        """The step's config from its (reference-substituted) ``body``; ``raw`` is the body as written."""

    @abstractmethod
    def fingerprint(self, cfg: BaseModel) -> str:
        """A hash of everything in ``cfg`` that decides the output (a change means the step runs again)."""

    @abstractmethod
    def check(self, cfg: BaseModel, where: str, checkable: Inputs, max_base_distance: float | None) -> None:
        """Checks of the inputs that exist now (files, models, compatibility); the rest is checked at run time."""

    @abstractmethod
    def run(
        self, cfg: BaseModel, step_dir: Path, *, where: str, max_base_distance: float | None, progress: bool
    ) -> None:
        """Produce the output in ``step_dir``; errors start with ``where``."""


class TrainStep(StepKind):
    """Continued pretraining or instruction tuning, BaM or standard: the body is a :class:`TrainConfig`.

    ``output_dir`` is set by the pipeline. ``model`` may be a Hub id: it is downloaded when the step runs.
    """

    name = "train"

    def output(self, step_dir: Path) -> Path:
        return step_dir / "run" / "final"

    def validate(self, body, raw, step_dir, where):
        from ..training import TrainConfig

        run_dir = str(step_dir / "run")
        _refuse_managed(body, "output_dir", where, run_dir)
        return validate_model(TrainConfig, {**body, "output_dir": run_dir}, where)

    def fingerprint(self, cfg):
        return cfg.fingerprint()

    def check(self, cfg, where, checkable, max_base_distance):
        from ..data.sources import resolve_files
        from ..training.validate import validate_inputs

        model_ready = checkable(cfg.model, f"{where}.model")
        tokenizer_ready = cfg.tokenizer is None or checkable(cfg.tokenizer, f"{where}.tokenizer")
        if model_ready and tokenizer_ready:
            try:
                validate_inputs(cfg)
            except BabelmergeError as err:
                raise BabelmergeError(f"{where}: {err}") from None
            return
        for i, src in enumerate(cfg.data.sources):  # the model comes later: check the data files now
            if src.path is not None:
                try:
                    resolve_files(src)
                except BabelmergeError as err:
                    raise BabelmergeError(f"{where}.data.sources[{i}]: {err}") from None

    def run(self, cfg, step_dir, *, where, max_base_distance, progress):
        from ..training import train

        local = {}
        for key in ("model", "tokenizer"):
            ref = getattr(cfg, key)
            if ref is not None and not Path(ref).expanduser().exists():
                local[key] = str(resolve_model_path(ref))  # a Hub id: fetch a snapshot
        final = train(cfg.model_copy(update={**local, "progress": progress and cfg.progress}))
        if Path(final).absolute() != self.output(step_dir).absolute():
            raise RuntimeError(f"training wrote its final model to {final}, expected {self.output(step_dir)}")


class MergeStep(StepKind):
    """A merge in mergekit's shape (:class:`babelmerge.merge_config.MergeConfig`). ``base_model`` is required:
    the merged models must have been trained from it, which is checked before the merge runs."""

    name = "merge"

    def output(self, step_dir: Path) -> Path:
        return step_dir / "model"

    def validate(self, body, raw, step_dir, where):
        from ..engine import _select_models
        from ..merge_config import MergeConfig, check_parameters, get_merge_method

        cfg = validate_model(MergeConfig, body, where)
        if not cfg.base_model:
            raise BabelmergeError(
                f"{where}: base_model is required in a pipeline merge step (name the model the merged models "
                "were trained from)"
            )
        try:
            method = get_merge_method(cfg)
            _, specs = _select_models(cfg, method)
            check_parameters(cfg, method, [s.model for s in specs])
        except BabelmergeError as err:
            raise BabelmergeError(f"{where}: {err}") from None
        return cfg

    def fingerprint(self, cfg):
        return _hash(cfg.model_dump(mode="json", exclude={"device"}))

    def _refs(self, cfg) -> list[str]:
        return [cfg.base_model, *(s.model for s in cfg.models if s.model != cfg.base_model)]

    def check(self, cfg, where, checkable, max_base_distance):
        """Models that exist are checked against the base now. A model that a train step of this pipeline will
        produce is represented by the model it trains from: training does not change the architecture, and a
        starting point far from the base cannot end near it, so a wrong lineage fails before days of training."""
        from ..engine import plan_merge

        refs = self._refs(cfg)
        ready = [ref for ref in refs if checkable(ref, f"{where} model '{ref}'")]
        if cfg.tokenizer_source not in (None, "base"):
            checkable(cfg.tokenizer_source, f"{where}.tokenizer_source")
        if cfg.base_model not in ready:
            for ref in ready:  # nothing to compare with yet; at least open the checkpoints
                open_checkpoint(ref)
            return
        starts = {}
        for ref in refs[1:]:
            start = checkable.start_of(ref) if ref not in ready else None
            if start is not None and start != cfg.base_model:
                starts[start] = f"model '{start}' (the starting point of {ref})"
        check_shared_base(cfg.base_model, [*ready[1:], *starts], max_base_distance, where, labels=starts)
        if len(ready) == len(refs):
            try:
                plan_merge(cfg)
            except BabelmergeError as err:
                raise BabelmergeError(f"{where}: {err}") from None

    def run(self, cfg, step_dir, *, where, max_base_distance, progress):
        from ..engine import merge

        check_shared_base(cfg.base_model, self._refs(cfg)[1:], max_base_distance, where)
        merge(cfg, self.output(step_dir), overwrite=True, progress=progress)


class EvaluateStep(StepKind):
    """An evaluation (:class:`babelmerge.evaluation.EvalConfig`); ``out`` is set by the pipeline. A model given as
    exactly ``${steps.NAME.output}`` is labelled ``NAME`` unless ``labels`` are given."""

    name = "evaluate"

    def output(self, step_dir: Path) -> Path:
        return step_dir / "results"

    def validate(self, body, raw, step_dir, where):
        from ..evaluation import EvalConfig

        _refuse_managed(body, "out", where, str(self.output(step_dir)))
        body = dict(body)
        models = raw.get("models")
        if "labels" not in body and isinstance(models, list):
            labels = [sole_reference(m) or _default_label(str(m)) for m in models]
            body["labels"] = _deduplicate(labels)
        return validate_model(EvalConfig, body, where)

    def fingerprint(self, cfg):
        return _hash(cfg.model_dump(mode="json", exclude={"device", "out"}))

    def check(self, cfg, where, checkable, max_base_distance):
        from ..evaluation.instruction_accuracy import load_instruction_examples

        for ref in [*cfg.models, *filter(None, [cfg.reference, cfg.base])]:
            if checkable(ref, f"{where} model '{ref}'"):
                open_checkpoint(ref)
        files = [*cfg.target, *cfg.source, *cfg.texts.values()]
        for f in files:
            if not Path(f).expanduser().is_file():
                raise BabelmergeError(f"{where}: text file {f} does not exist")
        if cfg.instruct:
            load_instruction_examples(cfg.instruct)
        if not (files or cfg.instruct or cfg.tasks):
            raise BabelmergeError(
                f"{where}: nothing to evaluate: give target, source, texts, instruct or tasks"
            )
        if cfg.labels is not None and len(cfg.labels) != len(cfg.models):
            raise BabelmergeError(f"{where}: {len(cfg.labels)} labels given for {len(cfg.models)} models")
        if cfg.interpolate and not cfg.base:
            raise BabelmergeError(f"{where}: interpolate needs a base model to interpolate from")

    def run(self, cfg, step_dir, *, where, max_base_distance, progress):
        from ..atomic import atomic_dir
        from ..evaluation import evaluate

        with atomic_dir(self.output(step_dir), overwrite=True) as tmp:
            evaluate(cfg.model_copy(update={"out": str(tmp)}))


def _default_label(ref: str) -> str:
    return Path(ref).name or ref


def _deduplicate(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}-{seen[label]}")
    return out


KINDS: dict[str, StepKind] = {k.name: k for k in (TrainStep(), MergeStep(), EvaluateStep())}


class Inputs:
    """What can be checked before the pipeline runs.

    ``inputs(ref, where)`` is True if ``ref`` is a local model folder (or file) that can be checked now; False if it
    will exist only later (the output of a step that will run, or a Hub id fetched when its step runs); a path
    that exists nowhere raises. ``start_of(ref)``: for the output of a train step that will run, the model it
    trains from (following chains of train steps), if that can be checked now.
    """

    def __init__(self, pending_dirs: set[Path], trained_from: dict[Path, str]):
        self.pending_dirs = pending_dirs
        self.trained_from = trained_from

    def __call__(self, ref: str, where: str) -> bool:
        path = Path(ref).expanduser().absolute()
        if any(path == p or p in path.parents for p in self.pending_dirs):
            return False
        if path.exists():
            return True
        if not ref.startswith((".", "/", "~")) and HUB_ID.match(ref):
            return False  # fetched from the Hub when the step runs
        raise BabelmergeError(f"{where}: {ref} does not exist (and is no step's output)")

    def start_of(self, ref: str) -> str | None:
        seen: set[Path] = set()
        path = Path(ref).expanduser().absolute()
        while path in self.trained_from and path not in seen:
            seen.add(path)
            start = self.trained_from[path]
            if self(start, "model"):
                return start
            path = Path(start).expanduser().absolute()
        return None
