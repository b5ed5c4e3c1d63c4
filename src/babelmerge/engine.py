"""The streaming merge engine: checkpoints in, one merged checkpoint out, one tensor name at a time.

Memory: at any moment the engine holds the tensors of the parameter name being merged across the input models,
those of at most ``prefetch`` names read ahead (reads overlap compute on a small thread pool), and at most
``prefetch`` + 1 merged tensors queued for or being written by the writer thread. Output shards are planned from
the input headers, so each merged tensor goes to disk as soon as it is computed (see
:mod:`babelmerge.safetensors_stream`).

Everything the user can get wrong is checked before the first tensor is read: paths, checkpoint layout, tensor
names and shapes across models, method, parameters and every per-tensor override. The output is built in a
temporary folder beside ``out_dir`` and renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import torch

from .allocator import reuse_freed_memory
from .atomic import atomic_dir, atomic_write_text
from .checkpoint import AUX_FILES, Checkpoint, open_checkpoint, resolve_model_path
from .errors import BabelmergeError
from .gc_pause import frozen_gc
from .merge_config import (
    MergeConfig,
    ModelSpec,
    ParameterResolver,
    check_parameters,
    get_merge_method,
    load_merge_config,
    torch_dtype,
)
from .methods import MergeMethod, kernels_enabled
from .model_card import write_model_card
from .safetensors_stream import PlannedTensor, StreamingWriter, parse_size, plan_shards, shard_file_names


@dataclass
class MergePlan:
    """Everything validated and resolved: what to read, what to compute, where to write."""

    cfg: MergeConfig
    method: MergeMethod
    base: Checkpoint | None
    models: list[Checkpoint]
    reference: Checkpoint  # supplies tensor order, non-float tensors, config.json
    tokenizer_from: Path
    params: dict[str, dict[str, Any]]  # per tensor name (float tensors only)
    outputs: list[PlannedTensor]
    device: torch.device
    compute_dtype: torch.dtype


def _locate(ref: str, config_dir: Path | None) -> str:
    """Model paths are relative to the working directory, or else to the config file's folder."""
    if config_dir is not None and not Path(ref).expanduser().exists() and (config_dir / ref).exists():
        return str(config_dir / ref)
    return ref


def _select_models(cfg: MergeConfig, method: MergeMethod) -> tuple[str | None, list[ModelSpec]]:
    """The base reference and the contributing model specs, in mergekit's conventions."""
    base = cfg.base_model
    if method.needs_base:
        if base is None:
            raise BabelmergeError(f"{method.name} needs a base_model")
        specs = [s for s in cfg.models if s.model != base]
    elif method.name == "slerp" and base is not None:
        # mergekit: the base model is the t = 0 end; the other listed model the t = 1 end.
        first = next((s for s in cfg.models if s.model == base), ModelSpec(model=base))
        specs = [first] + [s for s in cfg.models if s.model != base]
    else:
        specs = list(cfg.models)
    n = len(specs)
    if n < method.min_models or (method.max_models is not None and n > method.max_models):
        k = method.min_models
        wanted = f"{'exactly' if method.max_models == k else 'at least'} {k} model{'s' if k != 1 else ''}"
        extra = " (besides the base model)" if method.needs_base else ""
        raise BabelmergeError(f"{method.name} needs {wanted}{extra}, got {n}")
    return base, specs


def _check_compatible(reference: Checkpoint, others: list[Checkpoint]) -> None:
    ref_names = set(reference.tensors)
    for ck in others:
        names = set(ck.tensors)
        if names != ref_names:
            missing = sorted(ref_names - names)
            if missing:
                raise BabelmergeError(
                    f"tensor '{missing[0]}' is in model '{reference.ref}' but not in model '{ck.ref}'"
                    + (f" ({len(missing) - 1} more differ)" if len(missing) > 1 else "")
                )
            extra = sorted(names - ref_names)
            raise BabelmergeError(
                f"tensor '{extra[0]}' is in model '{ck.ref}' but not in model '{reference.ref}'"
            )
        for name in reference.tensors:
            a, b = reference.shape(name), ck.shape(name)
            if a != b:
                raise BabelmergeError(
                    f"tensor '{name}' has shape {list(a)} in model '{reference.ref}' but {list(b)} in model '{ck.ref}'"
                )


def plan_merge(
    config: MergeConfig | dict | str | os.PathLike[str],
    *,
    shard_size: str | int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    seed: int | None = None,
    allow_pickle: bool | None = None,
) -> tuple[MergePlan, list[list[PlannedTensor]]]:
    """Validate a merge completely (reading only headers) and return the plan and the output shards."""
    cfg, config_dir = load_merge_config(config)
    updates = {
        k: v
        for k, v in dict(
            shard_size=shard_size, device=device, out_dtype=dtype, seed=seed, allow_pickle=allow_pickle
        ).items()
        if v is not None
    }
    if updates:
        cfg = MergeConfig.model_validate({**cfg.model_dump(), **updates})
    method = get_merge_method(cfg)
    base_ref, specs = _select_models(cfg, method)
    check_parameters(cfg, method, [s.model for s in specs])
    try:
        dev = torch.device(cfg.device)
    except RuntimeError:
        raise BabelmergeError(f"unknown device '{cfg.device}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BabelmergeError(f"device '{cfg.device}' requested but no CUDA device is available")

    opened: dict[str, Checkpoint] = {}

    def open_ref(ref: str) -> Checkpoint:
        if ref not in opened:
            opened[ref] = open_checkpoint(
                ref, allow_pickle=cfg.allow_pickle, path=resolve_model_path(_locate(ref, config_dir))
            )
        return opened[ref]

    base = open_ref(base_ref) if base_ref is not None else None
    models = [open_ref(s.model) for s in specs]
    reference = base or models[0]
    _check_compatible(reference, [ck for ck in opened.values() if ck is not reference])

    if cfg.tokenizer_source in (None, "base"):
        tokenizer_from = reference.path
    else:
        tokenizer_from = resolve_model_path(_locate(cfg.tokenizer_source, config_dir))

    resolver = ParameterResolver(cfg, method, specs)
    out_name = cfg.output_dtype_name()
    params: dict[str, dict[str, Any]] = {}
    outputs: list[PlannedTensor] = []
    for name in reference.tensors:
        in_dtype = reference.dtype(name)
        if in_dtype.is_floating_point:
            p = resolver.for_tensor(name)
            resolver.check_tensor(name, p)
            params[name] = p
            out_dtype = torch_dtype(out_name) if out_name else in_dtype
        else:
            out_dtype = in_dtype
        outputs.append(PlannedTensor(name, out_dtype, reference.shape(name)))
    plan = MergePlan(
        cfg,
        method,
        base,
        models,
        reference,
        tokenizer_from,
        params,
        outputs,
        dev,
        torch_dtype(cfg.compute_dtype),
    )
    return plan, plan_shards(outputs, parse_size(cfg.shard_size))


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded by (seed, tensor name): random methods give the same result in any order."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))


# Elements per block when an elementwise method runs block by block: the block's inputs, temporaries and output
# (a few MB) stay in the CPU caches, instead of every step of the method streaming whole tensors through memory.
BLOCK = 1 << 18


def _blockwise(plan: MergePlan) -> bool:
    """Whether the engine computes this plan's method block by block (elementwise method, CPU compute)."""
    return plan.method.elementwise and plan.device.type == "cpu"


# Below this many entries a method's torch definition is as fast as its compiled kernel (thread start-up and
# histograms dominate).
KERNEL_MIN_NUMEL = 1 << 16


def _use_kernel(plan: MergePlan) -> bool:
    """Whether large tensors go through the method's compiled CPU kernel (float32 compute on the CPU).

    ``BABELMERGE_KERNELS=0`` in the environment turns kernels off (the torch definitions run instead; same
    numbers, slower), e.g. to compare the two.
    """
    return (
        plan.method.kernel is not None
        and plan.device.type == "cpu"
        and plan.compute_dtype == torch.float32
        and kernels_enabled()
    )


def _warm_kernel(plan: MergePlan) -> threading.Thread | None:
    """Load the method's kernel in a background thread, on tiny inputs of the dtypes its first large tensor has.

    Importing numba and loading the compiled code from its cache takes about 0.8 s (a first-ever compile, ~20 s);
    started before the first tensor is read, it overlaps the reads instead of delaying the first kernel call,
    which then finds it loaded. Returns the thread, or None when no tensor will use a kernel; the caller joins it
    before its own first kernel call (kernel calls from two threads at once are not safe with every numba
    threading layer).
    """
    if not _use_kernel(plan):
        return None
    first = next(
        (t for t in plan.outputs if t.name in plan.params and prod(t.shape) >= KERNEL_MIN_NUMEL), None
    )
    if first is None:
        return None

    def warm() -> None:
        def tiny(ck: Checkpoint) -> torch.Tensor:
            return torch.zeros(16, dtype=ck.dtype(first.name))

        kwargs = dict(plan.params[first.name])
        if plan.method.uses_generator:
            kwargs["generator"] = torch.Generator().manual_seed(0)
        base = tiny(plan.base) if plan.method.needs_base else None
        try:
            plan.method.kernel([tiny(ck) for ck in plan.models], base=base, out_dtype=first.dtype, **kwargs)
        except Exception:  # noqa: BLE001 - only a head start: the real call reports any error itself
            pass

    thread = threading.Thread(target=warm, name="babelmerge-kernel-warm-up", daemon=True)
    thread.start()
    return thread


def _read_uncast(plan: MergePlan) -> bool:
    """Whether reader threads hand over tensors in their stored dtype (the merge step casts what it needs)."""
    return _blockwise(plan) or _use_kernel(plan)


def merge_tensor(
    plan: MergePlan, name: str, inputs: dict[str, torch.Tensor], out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Merge one tensor: cast the inputs to the compute dtype/device (if not yet done) and call the method.

    Returns the result in ``out_dtype`` (default: the compute dtype). Methods with a compiled kernel (TIES,
    TIES-SV) hand large tensors to it still in their stored dtype (see :func:`_use_kernel`). Elementwise methods
    run on blocks of :data:`BLOCK` entries, each cast to the compute dtype, merged and written into the output;
    since entry i of the result depends only on entry i of the inputs, this gives the same numbers as one call on
    whole tensors.
    """
    if name not in plan.params:  # integer/bool buffers are copied from the reference model
        return inputs[plan.reference.ref]
    out_dtype = out_dtype or plan.compute_dtype
    kwargs = dict(plan.params[name])
    if plan.method.uses_generator:
        kwargs["generator"] = tensor_generator(plan.cfg.seed, name)
    models = [inputs[ck.ref] for ck in plan.models]
    base = inputs[plan.base.ref] if plan.method.needs_base else None
    if _use_kernel(plan) and models[0].numel() >= KERNEL_MIN_NUMEL:
        return plan.method.kernel(models, base=base, out_dtype=out_dtype, **kwargs)
    if _blockwise(plan) and models[0].numel() > BLOCK:
        out = torch.empty(models[0].shape, dtype=out_dtype)
        flat_out, flat_models = out.view(-1), [m.reshape(-1) for m in models]
        flat_base = base.reshape(-1) if base is not None else None
        for start in range(0, flat_out.numel(), BLOCK):
            block = slice(start, start + BLOCK)
            if flat_base is not None:
                kwargs["base"] = flat_base[block].to(plan.compute_dtype)
            flat_out[block] = plan.method.fn([m[block].to(plan.compute_dtype) for m in flat_models], **kwargs)
        return out

    def prep(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=plan.device, dtype=plan.compute_dtype)

    if base is not None:
        kwargs["base"] = prep(base)
    return plan.method.fn([prep(m) for m in models], **kwargs).to(out_dtype)


def read_checked(
    ck: Checkpoint, name: str, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Read one input tensor, refuse NaN or inf, and cast a float tensor to ``device`` and ``dtype`` if given.

    Runs on the reader threads, overlapping the merge of the previous tensor. NaN propagates into the minimum and
    maximum and inf is one of them, so checking those two values is equivalent to checking every element, and
    several times cheaper.
    """
    t = ck.read(name)
    if not t.is_floating_point():
        return t
    if t.numel() and not torch.isfinite(torch.stack(torch.aminmax(t))).all():
        raise BabelmergeError(f"model '{ck.ref}': tensor '{name}' contains non-finite values (NaN or inf)")
    return t.to(device=device, dtype=dtype) if dtype is not None else t


class _OrderedWriter:
    """Writes merged tensors on one background thread, in submission order, with a bounded queue.

    The output tensors waiting to be written are the engine's only output buffer: at most ``depth`` of them.
    The first failure is re-raised on the calling thread by the next :meth:`submit` or by :meth:`drain`.
    """

    def __init__(self, depth: int):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="babelmerge-write")
        self._pending: deque[Future] = deque()
        self._depth = depth

    def submit(self, fn, *args) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > self._depth or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def shutdown(self) -> None:
        """Cancel what has not started, wait for what has (so no file is still being written)."""
        for f in self._pending:
            f.cancel()
        self._pool.shutdown(wait=True)


def execute_plan(
    plan: MergePlan, shards: list[list[PlannedTensor]], out: Path, *, progress: bool, prefetch: int = 2
):
    """Stream every tensor through the method into the planned shards in ``out``; write the index if sharded.

    Three stages overlap: reader threads read, check and (unless the method runs block by block, casting each
    block itself, or through a kernel that reads the stored dtype) cast the inputs of the next ``prefetch``
    tensor names; the calling thread runs the merge method; a writer thread appends each result to its shard (at
    most ``prefetch`` results wait for it).
    """
    from tqdm.auto import tqdm

    # Each distinct checkpoint is read once per tensor name, even if it plays several roles.
    checkpoints = list({ck.ref: ck for ck in [plan.reference, *plan.models]}.values())
    names = [t.name for t in plan.outputs]
    files = shard_file_names(len(shards))
    total = sum(t.nbytes for t in plan.outputs)
    bar = tqdm(
        total=total, unit="B", unit_scale=True, desc=f"merge ({plan.method.name})", disable=not progress
    )
    pending: deque[tuple[str, list[Future]]] = deque()
    workers = max(2, min(8, len(checkpoints)))
    cast = (None, None) if _read_uncast(plan) else (plan.device, plan.compute_dtype)
    writers: list[StreamingWriter] = []
    output = _OrderedWriter(depth=prefetch)
    warm_up = _warm_kernel(plan)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="babelmerge-read") as pool:
            upcoming = iter(names)

            def submit_next() -> None:
                name = next(upcoming, None)
                if name is not None:
                    reads = [pool.submit(read_checked, ck, name, *cast) for ck in checkpoints]
                    pending.append((name, reads))

            for _ in range(prefetch + 1):
                submit_next()
            try:
                for shard, file in zip(shards, files):
                    writer = StreamingWriter(out / file, shard)
                    writers.append(writer)
                    for planned in shard:
                        name, futures = pending.popleft()
                        submit_next()
                        inputs = {ck.ref: f.result() for ck, f in zip(checkpoints, futures)}
                        if warm_up is not None and prod(planned.shape) >= KERNEL_MIN_NUMEL:
                            warm_up.join()
                            warm_up = None
                        merged = merge_tensor(plan, name, inputs, planned.dtype)
                        del inputs
                        output.submit(writer.write, name, merged)
                        del merged
                        bar.update(planned.nbytes)
                    output.submit(writer.close)
                output.drain()
            finally:
                for _, futures in pending:
                    for f in futures:
                        f.cancel()
    except BaseException:
        output.shutdown()
        for writer in writers:
            writer.abort()
        raise
    finally:
        output.shutdown()
        bar.close()
    if len(shards) > 1:
        weight_map = {t.name: file for shard, file in zip(shards, files) for t in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        atomic_write_text(out / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")


def _copy_aux_files(plan: MergePlan, out: Path) -> None:
    config = json.loads(plan.reference.config_path.read_text())
    out_dtypes = {t.dtype for t in plan.outputs if t.dtype.is_floating_point}
    if len(out_dtypes) == 1:
        config["dtype"] = str(next(iter(out_dtypes))).removeprefix("torch.")
        config.pop("torch_dtype", None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = plan.reference.path / "generation_config.json"
    if gen.exists():
        shutil.copy2(gen, out / "generation_config.json")
    for f in AUX_FILES:
        src = plan.tokenizer_from / f
        if src.exists():
            shutil.copy2(src, out / f)


@contextmanager
def _intra_op_threads(n: int | None):
    """Run torch ops on ``n`` threads inside the block (None: unchanged).

    Block-by-block merges run many small ops; with torch's own thread team on top of the reader and writer
    threads the cores are oversubscribed and every op waits at a barrier for a descheduled worker (measured: a
    task-arithmetic merge of 0.47B parameters took 4.8 s with 2 intra-op threads, 3.2 s with 1, on 2 cores).
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def merge(
    config: MergeConfig | dict | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    shard_size: str | int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    seed: int | None = None,
    allow_pickle: bool | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Merge the checkpoints described by ``config`` (a :class:`MergeConfig`, dict or YAML path) into ``out_dir``.

    Keyword arguments override the config's own ``shard_size``, ``device``, output ``dtype``, ``seed`` and
    ``allow_pickle``. Raises :class:`~babelmerge.errors.BabelmergeError` for bad input, before anything is
    written. Returns the output folder, a complete Hugging Face checkpoint (weights, config, tokenizer files,
    ``babelmerge_config.yaml`` and a model card).
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise BabelmergeError(f"output folder {out} already exists (pass --overwrite to replace it)")
    plan, shards = plan_merge(
        config, shard_size=shard_size, device=device, dtype=dtype, seed=seed, allow_pickle=allow_pickle
    )
    with atomic_dir(out, overwrite=overwrite) as tmp, frozen_gc():
        with reuse_freed_memory(), _intra_op_threads(1 if _blockwise(plan) else None):
            execute_plan(plan, shards, tmp, progress=progress)
        _copy_aux_files(plan, tmp)
        write_model_card(plan.cfg, plan.method, tmp)
    return out
