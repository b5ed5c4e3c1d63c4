"""The merge configuration: mergekit's shape, validated by pydantic, plus babelmerge's own options.

```yaml
merge_method: ties
base_model: meta-llama/Llama-3.1-8B
models:
  - model: ./llama-bg-cpt            # continually pretrained on Bulgarian
    parameters: {weight: 1.0, density: 0.5}
  - model: meta-llama/Llama-3.1-8B-Instruct
    parameters:
      weight: 1.0
      density: [{filter: mlp, value: 0.3}, {value: 0.5}]   # per-tensor override, first match wins
parameters: {lambda: 1.0}
dtype: bfloat16
```

Per-model parameters given under the top-level ``parameters`` are the default for every model. A parameter value
is a number/boolean, or a list of ``{filter, value}`` entries: the first entry whose ``filter`` is a substring of
the tensor name applies; an entry without ``filter`` matches every tensor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, field_validator

from .config_errors import load_yaml, validate_model
from .errors import BabelmergeError
from .methods import METHODS, MergeMethod
from .safetensors_stream import parse_size

DTypeName = Literal["float32", "fp32", "float16", "fp16", "bfloat16", "bf16"]
# mergekit options accepted for compatibility that change nothing in babelmerge.
IGNORED_GLOBAL_PARAMS = {"int8_mask"}


class FilterValue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filter: str | None = None
    value: StrictBool | float


ParamValue = StrictBool | float | list[FilterValue]


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, ParamValue] = {}


class MergeConfig(BaseModel):
    """A merge: method, base, models and their parameters, output options."""

    model_config = ConfigDict(extra="forbid")

    merge_method: str
    base_model: str | None = None
    models: list[ModelSpec] = []
    parameters: dict[str, ParamValue] = {}
    dtype: DTypeName | None = None  # output dtype (mergekit's name); default: the inputs' dtype
    out_dtype: DTypeName | None = None  # mergekit's override of the output dtype
    compute_dtype: DTypeName = "float32"
    tokenizer_source: str | None = None  # "base" or a model whose tokenizer files are copied
    name: str | None = None
    seed: int = 0
    shard_size: str | int = "5GB"
    device: str = "cpu"
    allow_pickle: bool = False

    @field_validator("models", mode="before")
    @classmethod
    def _models_as_dicts(cls, v: Any) -> Any:
        # mergekit also accepts a bare string per model.
        if isinstance(v, list):
            return [{"model": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("shard_size")
    @classmethod
    def _shard_size(cls, v: str | int) -> str | int:
        parse_size(v)
        return v

    def output_dtype_name(self) -> str | None:
        return self.out_dtype or self.dtype


def torch_dtype(name: str):
    import torch

    return {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }[name]


def load_merge_config(config: MergeConfig | dict | str | os.PathLike[str]) -> tuple[MergeConfig, Path | None]:
    """Accept a :class:`MergeConfig`, a dict or a YAML path; return the config and the folder relative paths use."""
    if isinstance(config, MergeConfig):
        return config, None
    if isinstance(config, dict):
        return validate_model(MergeConfig, config, "merge config"), None
    path = Path(config)
    data = load_yaml(str(path))
    if isinstance(data, dict) and "slices" in data:
        raise BabelmergeError(
            f"{path}: 'slices' (layer-range merges) is not supported; list whole models under 'models'"
        )
    return validate_model(MergeConfig, data, str(path)), path.parent


def resolve_value(value: ParamValue, tensor_name: str) -> Any:
    """The value of a parameter for one tensor: the first matching filter entry, or ``None`` if none matches."""
    if not isinstance(value, list):
        return value
    for entry in value:
        if entry.filter is None or entry.filter in tensor_name:
            return entry.value
    return None


def candidate_values(value: ParamValue) -> list[Any]:
    """Every value a parameter can take, for validation before any tensor is read."""
    return [e.value for e in value] if isinstance(value, list) else [value]


def _check_keys(method: MergeMethod, params: dict, where: str, *, per_model_only: bool) -> None:
    names = [p.name for p in method.params]
    for key in params:
        if key in IGNORED_GLOBAL_PARAMS and not per_model_only:
            continue
        p = method.param(key)
        if p is None:
            import difflib

            hint = difflib.get_close_matches(key, names, n=1)
            known = ", ".join(names) or "none"
            suggestion = f"did you mean '{hint[0]}'? " if hint else ""
            raise BabelmergeError(
                f"{where}: unknown parameter '{key}' for {method.name} ({suggestion}its parameters: {known})"
            )
        if per_model_only and not p.per_model:
            raise BabelmergeError(
                f"{where}: '{key}' is a global parameter of {method.name}; set it under the top-level 'parameters'"
            )
        for v in candidate_values(params[key]):
            problem = p.range_error(v)
            if problem:
                raise BabelmergeError(f"{where}: parameter '{key}' {problem}")


def get_merge_method(cfg: MergeConfig) -> MergeMethod:
    method = METHODS.get(cfg.merge_method)
    if method is None:
        import difflib

        hint = difflib.get_close_matches(cfg.merge_method, list(METHODS), n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise BabelmergeError(
            f"unknown merge_method '{cfg.merge_method}'{suggestion}; available: {', '.join(sorted(METHODS))}"
        )
    return method


def check_parameters(cfg: MergeConfig, method: MergeMethod, model_refs: list[str]) -> None:
    """Validate every parameter name and every value it can take (all per-tensor overrides included)."""
    _check_keys(method, cfg.parameters, "parameters", per_model_only=False)
    for spec in cfg.models:
        if spec.model in model_refs:
            _check_keys(method, spec.parameters, f"model '{spec.model}'", per_model_only=True)
    for p in method.params:
        if p.default is None and p.name not in cfg.parameters:
            raise BabelmergeError(
                f"{method.name} needs parameter '{p.name}' under the top-level 'parameters'"
            )


class ParameterResolver:
    """Resolves the parameters of a method for each tensor name: per model, global, per-tensor overrides."""

    def __init__(self, cfg: MergeConfig, method: MergeMethod, model_specs: list[ModelSpec]):
        self.cfg, self.method, self.specs = cfg, method, model_specs

    def _value(self, param, sources: list[dict], tensor_name: str) -> Any:
        for src in sources:
            if param.name in src:
                v = resolve_value(src[param.name], tensor_name)
                if v is not None:
                    return v
        return param.default

    def for_tensor(self, tensor_name: str) -> dict[str, Any]:
        """``{kwarg: value}`` for the method function, per-model parameters as lists."""
        out: dict[str, Any] = {}
        for p in self.method.params:
            if p.per_model:
                out[p.kwarg] = [
                    self._value(p, [s.parameters, self.cfg.parameters], tensor_name) for s in self.specs
                ]
            else:
                out[p.kwarg] = self._value(p, [self.cfg.parameters], tensor_name)
        return out

    def check_tensor(self, tensor_name: str, params: dict[str, Any]) -> None:
        """Cross-parameter checks for one tensor (zero weight sums, slack ≤ density)."""
        if params.get("normalize") and "weight" in params and sum(params["weight"]) == 0:
            raise BabelmergeError(
                f"tensor '{tensor_name}': the models' weights sum to zero but normalize is true"
            )
        if self.method.check is not None:
            by_name = {p.name: params[p.kwarg] for p in self.method.params}
            problem = self.method.check(by_name)
            if problem:
                raise BabelmergeError(f"tensor '{tensor_name}': {problem}")
