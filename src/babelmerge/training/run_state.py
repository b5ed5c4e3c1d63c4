"""The run directory: its layout, ``state.json`` and the metrics file, all written atomically.

Layout::

    <output_dir>/
      config.yaml              the resolved config
      state.json               progress: which iterations are merged, the current base, metric records
      metrics.jsonl            one JSON record per line (rewritten from state.json after every event)
      logs/train.log           the run's log
      slices/slice000.npz ...  the packed data slices (read by every branch, also on Ray workers)
      iter000/branch0/checkpoints/checkpoint-N   Trainer checkpoints while the branch trains
      iter000/branch0/model/   the finished branch (pruned after the merge unless keep_branch_checkpoints)
      iter000/merged/          the merge of the iteration's branches
      iter000/base/            the outer-stepped base (only with an ``outer`` step)
      standard/                the single run of ``method: standard`` (checkpoints/, model/)
      final/                   the final model: a normal HF folder with the tokenizer

Resuming: a rerun with the same config skips finished branches and merged iterations (``state.json``),
and a branch that was interrupted resumes from its last Trainer checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from babelmerge.atomic import atomic_write_json, atomic_write_text
from babelmerge.errors import BabelmergeError

STATE_VERSION = 1


@dataclass(frozen=True)
class RunDir:
    """Paths inside a run directory."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def metrics_file(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def log_file(self) -> Path:
        return self.root / "logs" / "train.log"

    @property
    def final_dir(self) -> Path:
        return self.root / "final"

    def slice_file(self, j: int) -> Path:
        return self.root / "slices" / f"slice{j:03d}.npz"

    def iteration_dir(self, i: int) -> Path:
        return self.root / f"iter{i:03d}"

    def branch_dir(self, i: int, k: int) -> Path:
        return self.iteration_dir(i) / f"branch{k}"

    def merged_dir(self, i: int) -> Path:
        return self.iteration_dir(i) / "merged"

    def outer_dir(self, i: int) -> Path:
        return self.iteration_dir(i) / "base"

    def momentum_file(self, i: int) -> Path:
        return self.iteration_dir(i) / "outer_momentum.safetensors"

    @property
    def standard_dir(self) -> Path:
        return self.root / "standard"


class RunState:
    """``state.json``: the run's progress and its metric records.

    ``iterations[i]`` is written once iteration ``i`` is merged (with the path of the next base, relative
    to the run directory); ``records`` are the metric records in order; ``final`` is set at the end.
    """

    def __init__(self, run: RunDir, data: dict[str, Any], writable: bool = True):
        self.run = run
        self.data = data
        self.writable = writable  # False on the non-main processes of a distributed run

    @classmethod
    def open(cls, run: RunDir, fingerprint: str, config_dump: dict, *, writable: bool = True) -> RunState:
        """Load the state of ``run`` or start a new one; refuse a run directory made with another config."""
        if run.state_file.exists():
            data = json.loads(run.state_file.read_text())
            if data.get("fingerprint") != fingerprint:
                raise BabelmergeError(
                    f"output_dir {run.root} holds a run with a different config (see {run.config_file}); "
                    "rerun with that config to resume, or choose another output_dir"
                )
            return cls(run, data, writable)
        if run.root.exists() and any(p.name != "logs" for p in run.root.iterdir()):
            raise BabelmergeError(f"output_dir {run.root} exists and is not a babelmerge run directory")
        state = cls(
            run, {"version": STATE_VERSION, "fingerprint": fingerprint, "iterations": {}, "records": []}
        )
        atomic_write_text(run.config_file, yaml.safe_dump(config_dump, sort_keys=False))
        state.save()
        return state

    def reload(self) -> None:
        """Re-read ``state.json`` (the main process may have advanced it)."""
        self.data = json.loads(self.run.state_file.read_text())

    def save(self) -> None:
        if not self.writable:
            return
        atomic_write_json(self.run.state_file, self.data)
        lines = "".join(json.dumps(r) + "\n" for r in self.data["records"])
        atomic_write_text(self.run.metrics_file, lines)

    # -- progress --------------------------------------------------------------------------------------

    def iteration(self, i: int) -> dict | None:
        return self.data["iterations"].get(str(i))

    def finish_iteration(self, i: int, base: Path, records: list[dict]) -> None:
        """Record iteration ``i`` as merged, with ``base`` as the next base and its metric records."""
        self.data["iterations"][str(i)] = {"base": str(base.relative_to(self.run.root))}
        self.data["records"].extend(records)
        self.save()

    def base_after(self, i: int) -> Path:
        return self.run.root / self.data["iterations"][str(i)]["base"]

    @property
    def slices_ready(self) -> bool:
        return bool(self.data.get("slices"))

    def set_slices(self, info: dict) -> None:
        self.data["slices"] = info
        self.save()

    def add_records(self, records: list[dict]) -> None:
        self.data["records"].extend(records)
        self.save()

    @property
    def final(self) -> Path | None:
        return self.run.root / self.data["final"] if self.data.get("final") else None

    def set_final(self, path: Path) -> None:
        self.data["final"] = str(path.relative_to(self.run.root))
        self.save()
