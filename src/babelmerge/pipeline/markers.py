"""The step marker ``<output_dir>/<step>/.babelmerge_step.json``: whether a step started or finished, and with what.

Written atomically when a step starts (``status: started``) and again when it has finished (``status: complete``,
with a fresh ``run_id``). ``config_hash`` is the fingerprint of the step's config and ``inputs`` the ``run_id`` of
every step it depends on at the time it ran, so a step is up to date only if neither its own config nor any of
its inputs changed since.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

from ..atomic import atomic_write_json

MARKER = ".babelmerge_step.json"


def marker_path(step_dir: Path) -> Path:
    return step_dir / MARKER


def read_marker(step_dir: Path) -> dict | None:
    """The marker of ``step_dir``, or ``None`` if there is none (or it is unreadable, e.g. edited by hand)."""
    try:
        data = json.loads(marker_path(step_dir).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("status") in ("started", "complete") else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_started(step_dir: Path, *, step: str, kind: str, config_hash: str, inputs: dict[str, str]) -> None:
    atomic_write_json(
        marker_path(step_dir),
        {
            "status": "started",
            "step": step,
            "kind": kind,
            "config_hash": config_hash,
            "inputs": inputs,
            "started": _now(),
        },
    )


def write_complete(step_dir: Path, started: dict, *, output: Path, seconds: float) -> dict:
    """Mark the step finished; returns the marker (its ``run_id`` identifies this output for downstream steps)."""
    marker = {
        **started,
        "status": "complete",
        "run_id": uuid.uuid4().hex,
        "output": str(output),
        "finished": _now(),
        "seconds": round(seconds, 3),
    }
    atomic_write_json(marker_path(step_dir), marker)
    return marker
