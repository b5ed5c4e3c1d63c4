"""Model-folder I/O for the orchestration: per-tensor statistics over several checkpoints, and writing the
outer-stepped base. Tensors are streamed one at a time (or one shard at a time) so memory stays near the
size of a shard, not of K+2 models. The math lives in :mod:`.metrics` and :mod:`.outer`.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from babelmerge.atomic import atomic_dir
from babelmerge.checkpoint import open_checkpoint

from .metrics import UpdateStats
from .outer import outer_step


@contextmanager
def one_thread():
    """Run memory-bound tensor loops on one torch thread: they gain nothing from more, and on a busy
    machine multi-threaded BLAS calls on small vectors were measured up to 40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@one_thread()
def update_stats(initial: Path, base: Path, branches: list[Path], new_base: Path) -> dict:
    """Norms and cosines of the weight updates of one iteration (see :class:`UpdateStats`)."""
    ck_init, ck_base, ck_new = (open_checkpoint(str(p)) for p in (initial, base, new_base))
    ck_branches = [open_checkpoint(str(p)) for p in branches]
    stats = UpdateStats(len(branches))
    for name in ck_new.tensors:
        if name not in ck_init.tensors or name not in ck_base.tensors:
            continue  # a tensor the initial model does not have (e.g. differently tied): nothing to compare
        stats.add(
            ck_init.read(name),
            ck_base.read(name),
            [ck.read(name) for ck in ck_branches],
            ck_new.read(name),
        )
    return stats.result()


@one_thread()
def outer_step_model(
    base: Path,
    merged: Path,
    out_dir: Path,
    momentum_in: Path | None,
    momentum_out: Path,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
) -> None:
    """Write ``out_dir`` = the outer step from ``base`` towards ``merged`` (float32; merged's files otherwise).

    The momentum buffer is read from ``momentum_in`` (``None`` at the first iteration) and written to
    ``momentum_out`` (when ``momentum > 0``), both single safetensors files.
    """
    ck_base = open_checkpoint(str(base))
    buf_in = load_file(momentum_in) if momentum_in is not None else {}
    buf_out: dict[str, torch.Tensor] = {}
    with atomic_dir(out_dir) as tmp:
        for item in merged.iterdir():
            if item.suffix == ".safetensors":
                shard = load_file(item)
                new = {}
                for name, tensor in shard.items():
                    new[name], buf = outer_step(
                        ck_base.read(name),
                        tensor,
                        buf_in.get(name),
                        lr=lr,
                        momentum=momentum,
                        nesterov=nesterov,
                    )
                    if buf is not None:
                        buf_out[name] = buf
                save_file(new, tmp / item.name, metadata={"format": "pt"})
            elif item.is_file():
                shutil.copy2(item, tmp / item.name)
        if buf_out:
            momentum_out.parent.mkdir(parents=True, exist_ok=True)
            part = momentum_out.with_name(momentum_out.name + ".partial")
            save_file(buf_out, part)
            part.replace(momentum_out)
