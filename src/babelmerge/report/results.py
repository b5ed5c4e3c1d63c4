"""Loading stored evaluation results (JSON files written by ``babelmerge eval``) and training metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BabelmergeError
from ..evaluation.evaluate import RESULT_MARKER


@dataclass
class Result:
    """One evaluated point: a model, or an interpolation point of a model (``alpha`` set, ``of`` its model)."""

    label: str
    path: Path
    target_bpb: float | None
    source_bpb: float | None
    alpha: float | None = None
    of: str | None = None
    weight_l2: float | None = None
    instruct_accuracy: float | None = None
    raw: dict = field(default_factory=dict, repr=False)


def _from_json(path: Path, data: dict) -> Result:
    change = data.get("weight_change") or {}
    instruct = data.get("instruct") or {}
    return Result(
        label=data["label"],
        path=path,
        target_bpb=data.get("target_bpb"),
        source_bpb=data.get("source_bpb"),
        alpha=data.get("alpha"),
        of=data.get("of"),
        weight_l2=change.get("l2"),
        instruct_accuracy=instruct.get("accuracy"),
        raw=data,
    )


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BabelmergeError(f"{path}: not a valid JSON result ({e})") from None
    return data if isinstance(data, dict) and RESULT_MARKER in data else None


def load_results(inputs: list[str]) -> list[Result]:
    """Every evaluation result in the given files and folders (searched recursively), de-duplicated by label.

    A later input overrides an earlier result with the same label.
    """
    by_label: dict[str, Result] = {}
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise BabelmergeError(f"{p}: no such file or folder")
        files = [p] if p.is_file() else sorted(p.rglob("*.json"))
        found = 0
        for f in files:
            data = _read(f)
            if data is None:
                if p.is_file():
                    raise BabelmergeError(f"{f}: not a babelmerge evaluation result")
                continue
            by_label[data["label"]] = _from_json(f, data)
            found += 1
        if not found and not any(p.rglob("metrics.jsonl")):
            raise BabelmergeError(f"{p}: contains no babelmerge evaluation results or training metrics")
    return list(by_label.values())


def load_trajectories(inputs: list[str]) -> dict[str, list[dict]]:
    """Per training run (folder holding ``metrics.jsonl``): its per-iteration records that carry held-out scores."""
    runs: dict[str, list[dict]] = {}
    for item in inputs:
        p = Path(item)
        if not p.is_dir():
            continue
        for metrics in sorted(p.rglob("metrics.jsonl")):
            records = []
            for line in metrics.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by an interrupted run
                if isinstance(rec, dict) and rec.get("event") == "eval":
                    records.append(rec)
            if records:
                runs[metrics.parent.name] = records
    return runs
