"""The pipeline config: an output folder and named steps, each one ``train``, ``merge`` or ``evaluate``.

```yaml
output_dir: runs/bg
max_base_distance: 0.5          # merged models must lie within this relative L2 distance of the base (null: off)
steps:
  ct:                           # a step name: letters, digits, '_' and '-'
    train: {model: meta-llama/Llama-3.1-8B, data: {...}, ...}          # a TrainConfig without output_dir
  ta:
    merge:                                                               # a mergekit-shaped merge config
      merge_method: task_arithmetic
      base_model: meta-llama/Llama-3.1-8B                               # required
      models: [{model: "${steps.ct.output}"}, {model: meta-llama/Llama-3.1-8B-Instruct}]
  eval:
    evaluate: {models: ["${steps.ct.output}", "${steps.ta.output}"], target: [bg.txt]}  # an EvalConfig without out
    after: []                   # extra dependencies besides the steps referenced in the config
```

:func:`load_pipeline` validates the structure without touching any file: unknown keys (with suggestions), step
names, references and dependencies (they exist, no cycles) and every step's own config.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..config_errors import load_yaml, validate_model
from ..errors import BabelmergeError
from .base_check import DEFAULT_MAX_DISTANCE
from .graph import topological_order
from .references import referenced_steps, substitute
from .steps import KINDS, StepKind

STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class StepConfig(BaseModel):
    """One step: exactly one of ``train``, ``merge``, ``evaluate`` (that command's config), plus ``after``."""

    model_config = ConfigDict(extra="forbid")

    train: dict[str, Any] | None = None
    merge: dict[str, Any] | None = None
    evaluate: dict[str, Any] | None = None
    #: Steps that must finish first, besides those referenced with ``${steps.NAME.output}``.
    after: list[str] = []

    @model_validator(mode="after")
    def _one_kind(self) -> StepConfig:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            found = f"got {' and '.join(given)}" if given else "got none"
            raise ValueError(f"a step has exactly one of {', '.join(KINDS)} ({found})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def body(self) -> dict[str, Any]:
        return getattr(self, self.kind)


class PipelineConfig(BaseModel):
    """The whole pipeline file. Relative paths anywhere in it are relative to the working directory."""

    model_config = ConfigDict(extra="forbid")

    output_dir: str
    #: Bound on ‖θ − θ_base‖ / ‖θ_base‖ for every model a merge step merges; ``null`` turns the check off.
    max_base_distance: float | None = Field(default=DEFAULT_MAX_DISTANCE, gt=0)
    steps: dict[str, Any] = Field(min_length=1)


@dataclass
class Step:
    """A validated step with its paths resolved."""

    name: str
    kind: StepKind
    config: BaseModel
    deps: list[str]
    dir: Path
    output: Path
    config_hash: str
    where: str  # "<file>: steps.<name>.<kind>", the prefix of this step's error messages


@dataclass
class Pipeline:
    source: str
    config: PipelineConfig
    steps: dict[str, Step]
    order: list[str]
    output_dir: Path = field(default_factory=Path)


def _unknown_keys(model: type[BaseModel], data: Any, where: str) -> None:
    """Report a misspelt key first (pydantic would report the missing key it was meant to be first)."""
    if not isinstance(data, dict):
        return
    for key in data:
        if key not in model.model_fields:
            hint = difflib.get_close_matches(str(key), list(model.model_fields), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise BabelmergeError(f"{where}: unknown key '{key}'{suggestion}")


def load_pipeline(config: str | os.PathLike[str] | dict, *, output_dir: str | None = None) -> Pipeline:
    """Validate a pipeline (YAML path or dict) and every step's config; read no model or data file."""
    if isinstance(config, dict):
        source, data = "pipeline config", config
    else:
        source = str(config)
        data = load_yaml(source)
    if isinstance(data, dict) and output_dir is not None:
        data = {**data, "output_dir": output_dir}
    _unknown_keys(PipelineConfig, data, source)
    cfg = validate_model(PipelineConfig, data, source)
    out = Path(cfg.output_dir).expanduser().absolute()
    names = list(cfg.steps)
    for name in names:
        if not isinstance(name, str) or not STEP_NAME.match(name):
            raise BabelmergeError(
                f"{source}: step name {name!r}: use letters, digits, '_' and '-' (starting with a letter or digit)"
            )
    parsed = {}
    for name in names:
        _unknown_keys(StepConfig, cfg.steps[name], f"{source}: steps.{name}")
        if isinstance(cfg.steps[name], dict):
            given = [k for k in KINDS if cfg.steps[name].get(k) is not None]
            if len(given) != 1:
                found = f"got {' and '.join(given)}" if given else "got none"
                raise BabelmergeError(
                    f"{source}: steps.{name}: a step has exactly one of {', '.join(KINDS)} ({found})"
                )
        parsed[name] = validate_model(StepConfig, cfg.steps[name], f"{source}: steps.{name}")

    deps: dict[str, list[str]] = {}
    for name, sc in parsed.items():
        where = f"{source}: steps.{name}"
        for dep in sc.after:
            if dep not in parsed:
                hint = difflib.get_close_matches(dep, names, n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise BabelmergeError(f"{where}.after: no step named '{dep}'{suggestion}")
        refs = referenced_steps(sc.body, f"{where}.{sc.kind}", names)
        deps[name] = list(dict.fromkeys([*refs, *sc.after]))
    try:
        order = topological_order(deps)
    except BabelmergeError as err:
        raise BabelmergeError(f"{source}: {err}") from None

    def resolve(step: str, attr: str) -> str:
        folder = out / step
        return str(folder if attr == "dir" else KINDS[parsed[step].kind].output(folder))

    steps: dict[str, Step] = {}
    for name in names:
        sc = parsed[name]
        kind = KINDS[sc.kind]
        where = f"{source}: steps.{name}.{sc.kind}"
        body = substitute(sc.body, where, names, resolve)
        step_cfg = kind.validate(body, sc.body, out / name, where)
        # The fingerprint is taken with the references as written, so that a finished pipeline folder that was
        # moved or copied (``--output-dir``) is still up to date.
        symbolic = kind.validate(sc.body, sc.body, out / name, where)
        steps[name] = Step(
            name=name,
            kind=kind,
            config=step_cfg,
            deps=deps[name],
            dir=out / name,
            output=kind.output(out / name),
            config_hash=kind.fingerprint(symbolic),
            where=where,
        )
    return Pipeline(source=source, config=cfg, steps=steps, order=order, output_dir=out)
