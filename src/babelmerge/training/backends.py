"""Backends that run the K branches of an iteration: one after another, or as parallel Ray tasks.

Ray is an optional extra (``pip install babelmerge[ray]``) and is imported only when ``backend: ray`` is
used. With Ray every branch is a task with ``cpus_per_branch`` CPUs and ``gpus_per_branch`` GPUs; the run
directory must be on a path that every node sees (the branches read their slices and base from it and
write their checkpoints and models into it).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from babelmerge.errors import BabelmergeError

from .branch import BranchSpec, branch_done, read_result, run_branch
from .config import BackendConfig

log = logging.getLogger(__name__)


def import_ray():
    """``import ray``, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BabelmergeError(
            "backend: ray needs the 'ray' package; install it with: pip install 'babelmerge[ray]'"
        ) from None
    return ray


class SequentialBackend:
    """Train the branches one after another in this process (and, under torchrun, on every rank)."""

    def __init__(self, cfg: BackendConfig, callbacks: list | None = None):
        self.cfg = cfg
        self.callbacks = callbacks

    def run(self, specs: list[BranchSpec]) -> list[dict]:
        results = []
        for spec in specs:
            if self.cfg.threads_per_branch:
                spec = replace(spec, num_threads=self.cfg.threads_per_branch)
            results.append(run_branch(spec, self.callbacks))
        return results

    def close(self) -> None:
        pass


class RayBackend:
    """Train the branches as Ray tasks, all at once; a local Ray instance or a cluster."""

    def __init__(self, cfg: BackendConfig, callbacks: list | None = None):
        ray = self.ray = import_ray()
        self.cfg = cfg
        self.callbacks = callbacks
        self.started = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": True, **cfg.ray.init_kwargs}
            if cfg.ray.address is not None:
                kwargs["address"] = cfg.ray.address
            ray.init(**kwargs)
            self.started = True

    def run(self, specs: list[BranchSpec]) -> list[dict]:
        ray = self.ray
        rc = self.cfg.ray
        threads = self.cfg.threads_per_branch or max(1, int(rc.cpus_per_branch))
        task = ray.remote(num_cpus=rc.cpus_per_branch, num_gpus=rc.gpus_per_branch, max_retries=0)(run_branch)
        pending = {}
        for spec in specs:
            if branch_done(spec):
                continue
            # Several progress bars from parallel tasks would interleave; the driver logs instead.
            pending[spec.name] = task.remote(
                replace(spec, num_threads=threads, progress=False), self.callbacks
            )
        try:
            for name, ref in pending.items():
                try:
                    ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, BabelmergeError):
                        raise BabelmergeError(str(cause)) from None
                    raise RuntimeError(f"branch {name} failed in its Ray task: {err}") from err
                log.info("branch %s finished (ray)", name)
        except BaseException:
            for ref in pending.values():
                ray.cancel(ref, force=True)
            raise
        return [read_result(spec) for spec in specs]

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_backend(cfg: BackendConfig, callbacks: list | None = None):
    """The backend named by ``cfg.type``."""
    if cfg.type == "ray":
        return RayBackend(cfg, callbacks)
    return SequentialBackend(cfg, callbacks)
