"""Turn pydantic validation errors into one line that names the file and key, with a suggestion for typos."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import BabelmergeError


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names valid at ``loc`` (the parent of the offending key), following nested models."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = _nested_model(annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _nested_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line: ``source: <key path>: <problem>`` for the first error, with 'did you mean' for unknown keys."""
    e = err.errors()[0]
    loc = tuple(e["loc"])
    if e["type"] == "extra_forbidden":
        key = str(loc[-1])
        hint = difflib.get_close_matches(key, _fields_at(model, loc[:-1]), n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"{source}: unknown key '{_where(loc)}'{suggestion}"
    msg = e["msg"]
    if "parameters" in loc and len(loc) > loc.index("parameters") + 1:
        # A parameter value failed every member of its union type: say what is accepted instead.
        loc = loc[: loc.index("parameters") + 2]
        msg = f"expected a number, true/false or a list of {{filter, value}} entries, got {e['input']!r}"
        return f"{source}: {_where(loc)}: {msg}"
    more = f" (and {len(err.errors()) - 1} more problems)" if len(err.errors()) > 1 else ""
    return f"{source}: {_where(loc) or 'config'}: {msg}{more}"


def validate_model(model: type[BaseModel], data: Any, source: str):
    """``model.model_validate(data)``, raising :class:`BabelmergeError` with a one-line message on failure."""
    if not isinstance(data, dict):
        raise BabelmergeError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise BabelmergeError(format_validation_error(err, model, source)) from None


def load_yaml(path: str) -> Any:
    """Read a YAML file, with one-line errors for a missing file or bad YAML."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise BabelmergeError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise BabelmergeError(f"{path}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
