"""Interrupting a BaM run (kill -9, Ctrl-C) and rerunning it; and the Ray backend. Both must end with
weights identical (torch.equal) to an uninterrupted sequential run with the same seed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from test_training_fixtures import base_config, make_setup, weights
from transformers import TrainerCallback

from babelmerge.training import train

# One torch thread per branch everywhere, so the sequential and the Ray runs sum in the same order.
BACKEND = {"type": "sequential", "threads_per_branch": 1}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(tmp_path_factory.mktemp("resume_setup"))


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """The uninterrupted sequential run."""
    return train(base_config(setup, tmp_path_factory.mktemp("ref") / "run", backend=BACKEND))


def branch_name(args) -> str:
    """``iterNNN/branchK`` of the Trainer whose output_dir is ``.../iterNNN/branchK/checkpoints``."""
    parts = args.output_dir.rstrip("/").split("/")
    return f"{parts[-3]}/{parts[-2]}"


class Recorder(TrainerCallback):
    """Remembers which branches started training (with the step they started from)."""

    def __init__(self):
        self.started = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.started.append(branch_name(args))


class CtrlC(TrainerCallback):
    """Raises KeyboardInterrupt when branch ``name`` begins."""

    def __init__(self, name):
        self.name = name

    def on_train_begin(self, args, state, control, **kwargs):
        if branch_name(args) == self.name:
            raise KeyboardInterrupt


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from transformers import TrainerCallback
    from babelmerge.training import train

    class KillAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if args.output_dir.endswith("iter000/branch1/checkpoints") and state.global_step == 3:
                os.kill(os.getpid(), signal.SIGKILL)

    train(sys.argv[1], callbacks=[KillAtStep3()])
    """
)


def test_killed_and_interrupted_run_resumes_to_identical_weights(setup, tmp_path, reference):
    run = tmp_path / "run"
    cfg_file = tmp_path / "bam.yaml"
    cfg_file.write_text(yaml.safe_dump(base_config(setup, run, backend=BACKEND)))
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)

    # 1. kill -9 in the middle of the second branch (step 3; checkpoint-2 was saved), after the first finished.
    proc = subprocess.run(
        [sys.executable, str(script), str(cfg_file)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (run / "iter000" / "branch0" / "model" / "model.safetensors").is_file()
    assert not (run / "iter000" / "branch1" / "model").exists()
    ckpts = sorted(p.name for p in (run / "iter000" / "branch1" / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2"]

    # 2. rerun; Ctrl-C as the last branch of the run starts.
    rec = Recorder()
    with pytest.raises(KeyboardInterrupt):
        train(cfg_file, callbacks=[rec, CtrlC("iter001/branch1")])
    # The finished branch was not retrained; the killed one resumed from its checkpoint.
    assert rec.started == ["iter000/branch1", "iter001/branch0", "iter001/branch1"]
    state = json.loads((run / "state.json").read_text())
    (b01,) = [
        r for r in state["records"] if r["event"] == "branch" and (r["iteration"], r["branch"]) == (0, 1)
    ]
    assert b01["resumed_from"].endswith("iter000/branch1/checkpoints/checkpoint-2")
    assert b01["steps"] == 4
    assert set(state["iterations"]) == {"0"} and not (run / "final").exists()

    # 3. rerun to the end: only the interrupted branch trains; the weights equal the uninterrupted run's.
    rec = Recorder()
    final = train(cfg_file, callbacks=[rec])
    assert rec.started == ["iter001/branch1"]
    a, b = weights(final), weights(reference)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # Metrics are not duplicated by the restarts: one record per branch, per logged step.
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in recs if r["event"] == "branch"]) == 4
    assert len([r for r in recs if r["event"] == "train"]) == 16


def test_resume_refuses_a_different_config(setup, reference):
    from babelmerge.errors import BabelmergeError

    cfg = base_config(setup, reference.parent, backend=BACKEND, optim={"lr": 1e-3})
    with pytest.raises(BabelmergeError, match="different config"):
        train(cfg)


def test_ray_backend_matches_sequential(setup, tmp_path, reference):
    pytest.importorskip("ray")
    backend = {
        "type": "ray",
        "threads_per_branch": 1,
        "ray": {"cpus_per_branch": 1, "init_kwargs": {"num_cpus": 2}},
    }
    final = train(base_config(setup, tmp_path / "run", backend=backend))
    a, b = weights(final), weights(reference)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["steps"] for r in recs if r["event"] == "branch"] == [4, 4, 4, 4]
