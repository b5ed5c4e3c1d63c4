"""Symbolic references between steps: ``${steps.NAME.output}`` in a step's config is the output of step NAME.

A step that references another depends on it. References may sit anywhere in a string value (e.g.
``${steps.ct.output}/tokenizer``), in any nested mapping or list of the step's config. Two forms exist:

- ``${steps.NAME.output}``: the step's result (a model folder for train and merge, a results folder for evaluate);
- ``${steps.NAME.dir}``: the step's own folder ``<output_dir>/NAME``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

from ..errors import BabelmergeError

REFERENCE = re.compile(r"\$\{([^}]*)\}")
FORM = re.compile(r"^steps\.([^.\s]+)\.(output|dir)$")


def _where(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _walk(value: Any, path: tuple[Any, ...], visit: Callable[[str, tuple[Any, ...]], str]) -> Any:
    """A copy of ``value`` with ``visit`` applied to every string (mapping keys are left alone)."""
    if isinstance(value, str):
        return visit(value, path)
    if isinstance(value, dict):
        return {k: _walk(v, (*path, k), visit) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, (*path, i), visit) for i, v in enumerate(value)]
    return value


def _parse(expr: str, where: str, steps: list[str]) -> tuple[str, str]:
    m = FORM.match(expr.strip())
    if not m:
        raise BabelmergeError(
            f"{where}: cannot resolve '${{{expr}}}'; references look like ${{steps.NAME.output}} or ${{steps.NAME.dir}}"
        )
    name, attr = m.groups()
    if name not in steps:
        hint = difflib.get_close_matches(name, steps, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise BabelmergeError(f"{where}: '${{{expr}}}' refers to no step named '{name}'{suggestion}")
    return name, attr


def referenced_steps(config: Any, where: str, steps: list[str]) -> list[str]:
    """The step names referenced anywhere in ``config``, in order of first appearance; bad references raise."""
    found: list[str] = []

    def visit(s: str, path: tuple[Any, ...]) -> str:
        for m in REFERENCE.finditer(s):
            name, _ = _parse(m.group(1), f"{where}.{_where(path)}" if path else where, steps)
            if name not in found:
                found.append(name)
        return s

    _walk(config, (), visit)
    return found


def substitute(config: Any, where: str, steps: list[str], resolve: Callable[[str, str], str]) -> Any:
    """A copy of ``config`` with each reference replaced by ``resolve(step_name, "output" | "dir")``."""

    def visit(s: str, path: tuple[Any, ...]) -> str:
        def repl(m: re.Match[str]) -> str:
            return resolve(*_parse(m.group(1), f"{where}.{_where(path)}" if path else where, steps))

        return REFERENCE.sub(repl, s)

    return _walk(config, (), visit)


def sole_reference(value: Any) -> str | None:
    """The step name if ``value`` is exactly one ``${steps.NAME.output}`` reference, else ``None``."""
    if not isinstance(value, str):
        return None
    m = REFERENCE.fullmatch(value.strip())
    if not m:
        return None
    form = FORM.match(m.group(1).strip())
    return form.group(1) if form and form.group(2) == "output" else None
