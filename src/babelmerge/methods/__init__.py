"""Merge methods: pure functions over tensors, and the registry that describes their parameters.

Every method is a function ``fn(tensors, *, base=..., <parameters>, generator=...) -> Tensor`` computing one merged
tensor from the same-named tensor of each input model. Per-model parameters (``weight``, ``density``, ``slack``)
arrive as lists with one value per model; global ones (``lambda``, ``t``, ``normalize``) as scalars. The streaming
engine (:mod:`babelmerge.engine`) reads tensors, resolves parameters and calls these functions; nothing here does I/O.

Adding a method is one small function plus one ``@register(...)`` line.
"""

from __future__ import annotations

import importlib.util
import keyword
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Param:
    """A parameter of a merge method.

    ``per_model`` parameters take one value per input model (set under each model's ``parameters``, or once at
    the top level as the default for every model); global ones take a single value. Numeric ranges are checked
    before any tensor is read: ``low``/``high`` are inclusive unless ``low_open``.
    """

    name: str
    default: Any
    per_model: bool = False
    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    doc: str = ""

    @property
    def kwarg(self) -> str:
        """The Python keyword argument name (``lambda`` becomes ``lambda_``)."""
        return self.name + "_" if keyword.iskeyword(self.name) else self.name

    def range_error(self, value: Any) -> str | None:
        """A description of why ``value`` is out of range, or ``None`` if it is fine."""
        if self.kind is bool:
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, got {value!r}"
        if value != value or value in (float("inf"), float("-inf")):
            return f"must be finite, got {value!r}"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low}, got {value}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high}, got {value}"
        return None


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method: its function and what it needs."""

    name: str
    fn: Callable[..., Any]
    params: tuple[Param, ...]
    needs_base: bool
    min_models: int = 1
    max_models: int | None = None
    uses_generator: bool = False
    check: Callable[[dict[str, Any]], str | None] | None = field(default=None, compare=False)
    elementwise: bool = (
        False  # output entry i depends only on the inputs' entries i: may be computed in blocks
    )
    # A compiled CPU implementation giving the same numbers as ``fn`` in float32: fn's arguments plus
    # ``out_dtype``, inputs in their stored dtype (see ties_kernel.py).
    kernel: Callable[..., Any] | None = field(default=None, compare=False)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def summary(self) -> str:
        """The first paragraph of the function's docstring (its formula)."""
        doc = (self.fn.__doc__ or "").strip()
        return doc.split("\n\n")[0]


METHODS: dict[str, MergeMethod] = {}


def register(
    name: str,
    *,
    params: Sequence[Param] = (),
    needs_base: bool,
    min_models: int = 1,
    max_models: int | None = None,
    uses_generator: bool = False,
    check: Callable[[dict[str, Any]], str | None] | None = None,
    elementwise: bool = False,
    kernel: Callable[..., Any] | None = None,
):
    """Decorator: register ``fn`` as merge method ``name``.

    ``elementwise=True`` declares that output entry i depends only on entry i of each input (no norms, no top-k,
    no random draws): the engine then computes large tensors in cache-sized blocks. ``kernel`` is a faster CPU
    implementation of the same float32 numbers (same keyword arguments plus ``out_dtype``; inputs arrive in their
    stored dtype), which the engine uses for large tensors when computing in float32 on the CPU.
    """

    def deco(fn):
        METHODS[name] = MergeMethod(
            name, fn, tuple(params), needs_base, min_models, max_models, uses_generator, check, elementwise,
            kernel,
        )  # fmt: skip
        return fn

    return deco


def get_method(name: str) -> MergeMethod:
    """The registered method ``name``; ``KeyError`` if unknown (the config layer turns it into a user error)."""
    return METHODS[name]


# Shared parameter definitions.
WEIGHT = Param("weight", 1.0, per_model=True, doc="the model's weight w_t")
DENSITY = Param("density", 1.0, per_model=True, low=0.0, high=1.0, low_open=True, doc="fraction of τ_t kept")
LAMBDA = Param("lambda", 1.0, doc="scale λ of the merged task vector")


def normalize_param(default: bool) -> Param:
    return Param("normalize", default, kind=bool, doc="divide by the sum of the (agreeing) weights")


def kernels_enabled() -> bool:
    """Whether the compiled CPU kernels may run: numba is installed and ``BABELMERGE_KERNELS=0`` is not set (which
    makes every method run its torch definition, e.g. to compare the two)."""
    return os.environ.get("BABELMERGE_KERNELS", "1") != "0" and importlib.util.find_spec("numba") is not None


# Importing the modules registers the methods (functions: ``babelmerge.methods.ties.ties`` etc., also
# re-exported from the top-level ``babelmerge`` package).
from . import dare, linear, model_stock, slerp, task_arithmetic, ties  # noqa: E402, F401

__all__ = ["METHODS", "MergeMethod", "Param", "register", "get_method"]
