"""babelmerge's streaming merge engine vs mergekit 0.1.5: wall time, peak RSS, I/O floor, output agreement.

Both tools merge the same random-initialised Llama checkpoints (a base and two "fine-tunes" = base + small noise,
all bf16), driven by ONE mergekit-shaped YAML per method. Every merge runs as its own subprocess; its peak RSS is
the maximum resident set that GNU ``/usr/bin/time`` reports. mergekit lives in its own virtualenv and is never
imported here; babelmerge is run through its Python API ``babelmerge.merge`` (what ``babelmerge merge`` calls).

Reproduce (the 0.5b preset: ~10 minutes per repeat, most of it mergekit's TIES; results in benchmarks/merge_bench.md)::

    python -m venv /tmp/mergebench/venv
    /tmp/mergebench/venv/bin/pip install torch==2.13.0       # first: an unpinned torch pulls a CUDA build
    /tmp/mergebench/venv/bin/pip install mergekit==0.1.5     # resolves to transformers 5.23, no conflicts
    pip install -e .                                         # babelmerge into the python that runs this script
    python benchmarks/merge_bench.py --size small --repeats 1           # quick check (~3 minutes)
    python benchmarks/merge_bench.py --size 0.5b --repeats 2            # the real run
    # optional: also time a scratch copy of the package with an engine fix (never edit src/ for this)
    python benchmarks/merge_bench.py --size 0.5b --repeats 1 --tools babelmerge-patched \
        --patched-babelmerge /tmp/mergebench/patched

Outputs: /tmp/mergebench/results-<size>[-<tools>].json (every run) and .md (the table), models under
/tmp/mergebench/models, merged checkpoints under /tmp/mergebench/out, per-run logs under /tmp/mergebench/logs.

Timing protocol (the same for every tool):

* the inputs are read once before anything is timed (warm page cache for everyone; 3 x ~0.94 GB fits in RAM);
* the output folder is deleted and ``sync`` run before each merge, so no tool pays for another's dirty pages;
* "wall" is the merge process alone; "wall+sync" adds a ``sync`` right after it. babelmerge fsyncs its output
  itself and mergekit does not, so wall+sync is the like-for-like number and the one divided by the I/O floor;
* the I/O floor reads every input file once and writes one output of the merged size (a copy of the base
  checkpoint, written while it is read), then fsyncs: the least any merge of these inputs must do. It is taken
  both ways a writer can go, through the page cache and bypassing it (``O_DIRECT``, as babelmerge's writer does
  where the file system allows), before the runs and again before each method's round (the machine's state
  drifts: on the benchmark's VM a page-cache write costs ~10× more CPU when the memory it lands in was freed
  seconds rather than moments before); the fastest sample of either way is the floor;
* each tool runs its command line (``babelmerge merge``, ``mergekit-yaml``);
* each tool's start-up (interpreter, imports and exit: ``import babelmerge.cli`` ended as that code's CLI ends
  a merge, ``mergekit-yaml --help``) is timed on its own (best of 3); "minus start-up" = wall+sync − start-up is
  the time spent merging, and the number compared with the I/O floor (which starts no interpreter);
* runs are interleaved (method by method, tool by tool) and repeated; the table shows the best of the repeats
  with every run's time and the load average before it, since other work may share the machine. CPU seconds
  (user + system) are reported too: they depend far less on the load than wall time does.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlamaConfig

from babelmerge.methods import METHODS as REGISTRY
from babelmerge.safetensors_stream import ALIGN

# Model sizes. 0.5b: 24 layers of hidden 1024 / MLP 4096, vocab 32000, untied head: 0.47B parameters, ~0.94 GB bf16.
PRESETS = {
    "small": dict(hidden_size=256, num_hidden_layers=4, intermediate_size=704, vocab_size=8000, heads=8),
    "0.5b": dict(hidden_size=1024, num_hidden_layers=24, intermediate_size=4096, vocab_size=32000, heads=16),
}
# The methods both tools run; the default --methods are the first four.
METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear")
INIT_STD = 0.02  # base weights ~ N(0, 0.02²), as transformers initialises Llama
FINETUNE_STD = (0.002, 0.003)  # the two task vectors: ~10-15% of the weight scale
MB = 2**20


# ---------------------------------------------------------------------------------------------------------------
# Synthetic checkpoints
# ---------------------------------------------------------------------------------------------------------------


def llama_config(size: str) -> LlamaConfig:
    p = PRESETS[size]
    return LlamaConfig(
        hidden_size=p["hidden_size"],
        num_hidden_layers=p["num_hidden_layers"],
        intermediate_size=p["intermediate_size"],
        vocab_size=p["vocab_size"],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["heads"],
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
        dtype="bfloat16",
    )


def llama_tensor_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every parameter of ``LlamaForCausalLM(cfg)`` (MHA, untied head, no biases)."""
    h, m, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (m, h),
            p + "mlp.up_proj.weight": (m, h),
            p + "mlp.down_proj.weight": (h, m),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    shapes |= {"model.norm.weight": (h,), "lm_head.weight": (v, h)}
    return shapes


def _save_checkpoint(folder: Path, cfg: LlamaConfig, tensors: dict[str, torch.Tensor]) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg.save_pretrained(tmp)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tmp.rename(folder)


def make_models(models_dir: Path, size: str, seed: int = 0) -> dict[str, Path]:
    """Write ``base``, ``ft_a`` and ``ft_b`` (bf16) under ``models_dir`` unless already there; return their paths.

    The base is random (norm weights 1); each fine-tune is base + N(0, σ²) noise, rounded to bf16, so task
    vectors are dense and small like real ones.
    """
    paths = {name: models_dir / size / name for name in ("base", "ft_a", "ft_b")}
    if all((p / "model.safetensors").exists() for p in paths.values()):
        return paths
    cfg = llama_config(size)
    gen = torch.Generator().manual_seed(seed)
    base: dict[str, torch.Tensor] = {}
    for name, shape in llama_tensor_shapes(cfg).items():
        if len(shape) == 1:
            base[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            base[name] = (torch.randn(shape, generator=gen) * INIT_STD).to(torch.bfloat16)
    if not (paths["base"] / "model.safetensors").exists():
        _save_checkpoint(paths["base"], cfg, base)
    for name, std in zip(("ft_a", "ft_b"), FINETUNE_STD):
        if (paths[name] / "model.safetensors").exists():
            continue
        ft = {
            k: (v.float() + torch.randn(v.shape, generator=gen) * std).to(torch.bfloat16)
            for k, v in base.items()
        }
        _save_checkpoint(paths[name], cfg, ft)
        del ft
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Merge configurations (mergekit's YAML shape, accepted by both tools)
# ---------------------------------------------------------------------------------------------------------------


def merge_config(method: str, models: dict[str, Path]) -> dict:
    """One config per method. ``linear`` averages all three checkpoints; the others merge ft_a, ft_b onto base."""
    base, a, b = (str(models[k]) for k in ("base", "ft_a", "ft_b"))
    if method == "linear":
        return {
            "merge_method": "linear",
            "models": [
                {"model": base, "parameters": {"weight": 1.0}},
                {"model": a, "parameters": {"weight": 1.0}},
                {"model": b, "parameters": {"weight": 1.0}},
            ],
            "dtype": "bfloat16",
        }
    per_model = {"task_arithmetic": ({"weight": 0.7}, {"weight": 0.3})}.get(
        method, ({"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5})
    )
    return {
        "merge_method": method,
        "base_model": base,
        "models": [{"model": a, "parameters": per_model[0]}, {"model": b, "parameters": per_model[1]}],
        "dtype": "bfloat16",
    }


# ---------------------------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    method: str
    tool: str
    repeat: int
    wall_s: float
    sync_s: float
    peak_rss_mb: float
    cpu_s: float
    load_before: float
    returncode: int
    startup_s: float = 0.0  # the tool's own process start-up (interpreter + imports), measured separately

    @property
    def total_s(self) -> float:
        return self.wall_s + self.sync_s

    @property
    def work_s(self) -> float:
        """wall+sync without the process start-up: the time spent merging, comparable with the I/O floor."""
        return self.total_s - self.startup_s


def load_average() -> float:
    return os.getloadavg()[0]


def timed_sync() -> float:
    t0 = time.perf_counter()
    os.sync()
    return time.perf_counter() - t0


def run_measured(
    cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> tuple[float, float, float, int]:
    """Run ``cmd`` to completion under GNU time; return (wall s, peak RSS MB, user+sys CPU s, return code).

    The peak RSS comes from ``/usr/bin/time``, a small process that forks the merge: Linux charges a child with
    its parent's resident set at fork/exec time (``ru_maxrss`` keeps the larger), so reading the rusage of a
    direct child of this (large) benchmark process would over-report small merges.
    """
    stats = log.with_suffix(".time")
    timed = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(stats), *cmd]
    with open(log, "w") as out:
        t0 = time.perf_counter()
        rc = subprocess.run(
            timed, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        ).returncode
        wall = time.perf_counter() - t0
    fields = stats.read_text().split()[-3:]  # GNU time prefixes a line when the command fails
    max_kb, user, system = int(fields[0]), float(fields[1]), float(fields[2])
    return wall, max_kb / 1024, user + system, rc


def read_files(
    paths: list[Path], chunk: int = 64 * MB, copy_first_to: Path | None = None, direct: bool = False
) -> None:
    """Read every file once; optionally write the first one to ``copy_first_to`` (fsynced) while reading it,
    through the page cache or, with ``direct``, bypassing it (``O_DIRECT``, as babelmerge's writer does)."""
    buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT requires
    view = memoryview(buf)
    for i, path in enumerate(paths):
        dst = None
        if copy_first_to is not None and i == 0:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
            dst = os.open(copy_first_to, flags, 0o644)
        size = 0
        with open(path, "rb", buffering=0) as src:
            while True:
                n = 0
                while n < chunk and (got := src.readinto(view[n:])):
                    n += got
                if n == 0:
                    break
                if dst is not None:
                    end = -(-n // ALIGN) * ALIGN if direct else n  # direct: whole blocks (the tail padded)
                    view[n:end] = bytes(end - n)
                    done = 0
                    while done < end:
                        done += os.pwrite(dst, view[done:end], size + done)
                    size += n
        if dst is not None:
            os.ftruncate(dst, size)
            os.fsync(dst)
            os.close(dst)


def io_floor(inputs: list[Path], scratch: Path, direct: bool = False) -> float:
    """Seconds to read all inputs and write (and fsync) one output of the merged size by plain copying."""
    scratch.mkdir(parents=True, exist_ok=True)
    target = scratch / "model.safetensors"
    os.sync()
    t0 = time.perf_counter()
    read_files(inputs, copy_first_to=target, direct=direct)
    elapsed = time.perf_counter() - t0
    target.unlink()
    return elapsed


def floor_pair(inputs: list[Path], scratch: Path) -> dict[str, float]:
    """The I/O floor both ways: output through the page cache, and bypassing it (where the file system can)."""
    floors = {"page_cache": io_floor(inputs, scratch)}
    try:
        floors["direct"] = io_floor(inputs, scratch, direct=True)
    except OSError as e:  # EINVAL: no O_DIRECT here (e.g. tmpfs before Linux 6.6)
        (scratch / "model.safetensors").unlink(missing_ok=True)
        print(f"I/O floor: no direct writes in {scratch} ({e})", flush=True)
    return floors


def vector_extensions() -> str:
    """The widest x86 vector extensions the CPU reports (the kernels' speed depends on them), or "?"."""
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        ).split()
    except (OSError, StopIteration):
        return "?"
    found = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return " ".join(found) or "none of avx2/avx512"


def show_floor(floor: dict[str, float]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v:.2f}s" for k, v in floor.items())


@dataclass(frozen=True)
class Tool:
    """One contender: a label for the table, a folder-name slug, and how it is run."""

    label: str
    slug: str
    bf16_compute: bool = False  # babelmerge only: add ``compute_dtype: bfloat16`` to the shared config
    pythonpath: Path | None = None  # babelmerge only: import this copy of the package instead
    env: tuple[tuple[str, str], ...] = ()  # extra environment variables for the tool's process


def tool_env(tool: Tool) -> dict[str, str]:
    """The environment a tool's merge process runs in: ours, plus its variables and its package copy."""
    env = {**os.environ, **dict(tool.env)}
    if tool.pythonpath is not None:
        env["PYTHONPATH"] = str(tool.pythonpath)
    return env


# babelmerge's command line as its console script runs it; code before `cli.run` existed ran `cli.main`.
BABELMERGE_CLI = "import sys; from babelmerge import cli; sys.exit(getattr(cli, 'run', cli.main)())"
# Start-up: the same interpreter and imports, ended the way that code's CLI ends a merge (cli.exit_now, else
# the interpreter's ordinary teardown), so that the teardown after a merge counts as merging time.
BABELMERGE_STARTUP = "import sys; from babelmerge import cli; getattr(cli, 'exit_now', sys.exit)(0)"


def startup_command(tool: Tool, mergekit_venv: Path) -> list[str]:
    """The tool's process doing everything but the merge: start the interpreter, import the merge code, exit."""
    if tool.slug != "mergekit":
        return [sys.executable, "-c", BABELMERGE_STARTUP]
    return [str(mergekit_venv / "bin" / "mergekit-yaml"), "--help"]  # imports mergekit's whole merge stack


def tool_command(tool: Tool, cfg_path: Path, out: Path, mergekit_venv: Path) -> list[str]:
    if tool.slug != "mergekit":
        return [sys.executable, "-c", BABELMERGE_CLI, "merge", str(cfg_path), str(out), "--no-progress"]
    return [
        str(mergekit_venv / "bin" / "mergekit-yaml"),
        str(cfg_path),
        str(out),
        "--quiet",
        "--no-copy-tokenizer",
        "--random-seed",
        "0",
    ]


# ---------------------------------------------------------------------------------------------------------------
# Agreement between outputs
# ---------------------------------------------------------------------------------------------------------------


def compare_outputs(a: Path, b: Path, base: Path) -> dict:
    """Per-element agreement of two merged checkpoints (same tensor names), and of their deltas from ``base``.

    max_abs: max |a − b| over all tensors; frac_differ: fraction of elements where a ≠ b; delta_rel: ‖Δa − Δb‖ /
    ‖Δb‖ with Δ = merged − base (≈0 for equal merges, ≈√2 for independent random masks); delta_norm_ratio:
    ‖Δa‖ / ‖Δb‖ (≈1 when both merges move the weights equally far).
    """
    max_abs, differ, total = 0.0, 0, 0
    diff_sq, da_sq, db_sq = 0.0, 0.0, 0.0
    with (
        safe_open(str(a / "model.safetensors"), "pt") as fa,
        safe_open(str(b / "model.safetensors"), "pt") as fb,
        safe_open(str(base / "model.safetensors"), "pt") as f0,
    ):
        names = set(fa.keys())
        if names != set(fb.keys()):
            raise RuntimeError(f"{a} and {b} hold different tensor names")
        for name in sorted(names):
            ta, tb = fa.get_tensor(name).float(), fb.get_tensor(name).float()
            t0 = f0.get_tensor(name).float()
            d = (ta - tb).abs()
            max_abs = max(max_abs, float(d.max()))
            differ += int((d != 0).sum())
            total += d.numel()
            diff_sq += float((d.double() ** 2).sum())
            da_sq += float(((ta - t0).double() ** 2).sum())
            db_sq += float(((tb - t0).double() ** 2).sum())
    return {
        "max_abs": max_abs,
        "frac_differ": differ / total,
        "delta_rel": (diff_sq / db_sq) ** 0.5 if db_sq else 0.0,
        "delta_norm_ratio": (da_sq / db_sq) ** 0.5 if db_sq else float("nan"),
    }


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def best_runs(runs: list[Run]) -> dict[tuple[str, str], Run]:
    best: dict[tuple[str, str], Run] = {}
    for r in runs:
        key = (r.method, r.tool)
        if r.returncode == 0 and (key not in best or r.total_s < best[key].total_s):
            best[key] = r
    return best


def markdown_table(runs: list[Run], floor_s: float, agreement: dict[str, dict], tools: list[str]) -> str:
    best = best_runs(runs)
    lines = [
        "| method | tool | wall s | wall+sync s | minus start-up s | peak RSS MB | CPU s | × I/O floor "
        "| max abs diff vs mergekit | elements differing | all runs wall+sync s (load avg) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for method in dict.fromkeys(r.method for r in runs):
        for tool in tools:
            r = best.get((method, tool))
            every = ", ".join(
                f"{x.total_s:.1f} ({x.load_before:.1f})" if x.returncode == 0 else f"failed rc={x.returncode}"
                for x in runs
                if x.method == method and x.tool == tool
            )
            if r is None:
                lines.append(f"| {method} | {tool} | – | – | – | – | – | – | – | – | {every} |")
                continue
            agree = agreement.get(f"{method}/{tool}")
            diff = f"{agree['max_abs']:.3g}" if agree else "–"
            frac = f"{agree['frac_differ']:.2e}" if agree else "–"
            lines.append(
                f"| {method} | {tool} | {r.wall_s:.1f} | {r.total_s:.1f} | {r.work_s:.1f} | {r.peak_rss_mb:.0f} "
                f"| {r.cpu_s:.0f} | {r.work_s / floor_s:.1f} | {diff} | {frac} | {every} |"
            )
    return "\n".join(lines)


def target_lines(runs: list[Run], floor_s: float, tools: list[str]) -> str:
    """One line per (method, babelmerge variant): the issue's three targets, met or not."""
    best = best_runs(runs)
    out = []
    for method in dict.fromkeys(r.method for r in runs):
        mk = best.get((method, "mergekit"))
        for tool in (t for t in tools if t != "mergekit"):
            bm = best.get((method, tool))
            if bm is None:
                out.append(f"- {method}, {tool}: missing a successful run")
                continue
            floor = bm.work_s / floor_s
            vs_mergekit = "no mergekit run to compare with"
            if mk is not None:
                speed = bm.total_s / mk.total_s
                rss = bm.peak_rss_mb / mk.peak_rss_mb
                vs_mergekit = (
                    f"wall {speed:.2f}× mergekit's ({'met' if speed <= 0.5 else 'NOT met'}, target ≤ 0.5×); "
                    f"peak RSS {rss:.2f}× ({'met' if rss <= 1 else 'NOT met'}, target ≤ 1×)"
                )
            out.append(
                f"- {method}, {tool}: {vs_mergekit}; "
                f"{floor:.1f}× the I/O floor without start-up ({'met' if floor <= 2 else 'NOT met'}, target ≤ 2×; "
                f"{bm.total_s / floor_s:.1f}× with the {bm.startup_s:.1f} s start-up)"
            )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mergekit-venv", type=Path, default=Path("/tmp/mergebench/venv"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/mergebench"))
    ap.add_argument("--methods", default="linear,task_arithmetic,ties,dare_ties", help="comma-separated")
    ap.add_argument("--size", choices=sorted(PRESETS), default="small")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--no-bf16-compute",
        action="store_true",
        help="skip the extra babelmerge runs with compute_dtype: bfloat16 (mergekit's TIES/DARE compute dtype)",
    )
    ap.add_argument(
        "--patched-babelmerge",
        type=Path,
        help="also run the babelmerge package found in this folder (PYTHONPATH), e.g. a scratch copy with a fix",
    )
    ap.add_argument(
        "--tools",
        help="comma-separated subset of babelmerge,mergekit,babelmerge-bf16,babelmerge-torch,babelmerge-patched "
        "(default: all enabled)",
    )
    args = ap.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",")] if args.tools else None
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return args


def check_mergekit(venv: Path) -> str:
    exe = venv / "bin" / "mergekit-yaml"
    if not exe.exists():
        sys.exit(
            f"mergekit not found at {exe}. Create its own virtualenv (never install mergekit into babelmerge's):\n"
            f"  python -m venv {venv}\n  {venv}/bin/pip install torch==2.13.0\n"
            f"  {venv}/bin/pip install mergekit==0.1.5\nor pass --mergekit-venv PATH."
        )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import mergekit, torch, transformers; from importlib.metadata "
         "import version; print(version('mergekit'), torch.__version__, transformers.__version__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mk_versions = check_mergekit(args.mergekit_venv)
    import transformers

    import babelmerge

    work: Path = args.work
    cfg_dir, out_dir, log_dir = work / "configs", work / "out", work / "logs"
    for d in (cfg_dir, out_dir, log_dir):
        d.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    models = make_models(work / "models", args.size)
    inputs = [models[k] / "model.safetensors" for k in ("base", "ft_a", "ft_b")]
    n_params = sum(torch.Size(s).numel() for s in llama_tensor_shapes(llama_config(args.size)).values())
    print(
        f"models ready in {time.perf_counter() - t0:.0f}s: {n_params / 1e9:.3f}B parameters each", flush=True
    )

    tools = [Tool("babelmerge", "babelmerge"), Tool("mergekit", "mergekit")]
    if not args.no_bf16_compute:
        tools.append(Tool("babelmerge (bf16 compute)", "babelmerge-bf16", bf16_compute=True))
    # The same engine with the compiled TIES kernel switched off: the torch definitions of the methods.
    tools.append(
        Tool("babelmerge (torch, no kernels)", "babelmerge-torch", env=(("BABELMERGE_KERNELS", "0"),))
    )
    if args.patched_babelmerge:
        tools.append(
            Tool("babelmerge (patched copy)", "babelmerge-patched", pythonpath=args.patched_babelmerge)
        )
    if args.tools:
        tools = [t for t in tools if t.slug in args.tools]
    run_tag = args.size + ("-" + "+".join(t.slug for t in tools) if args.tools else "")
    cfg_paths: dict[tuple[str, bool], Path] = {}
    for method in args.methods:
        cfg = merge_config(method, models)
        shared = cfg_dir / f"{args.size}-{method}.yaml"
        shared.write_text(yaml.safe_dump(cfg, sort_keys=False))
        bf16 = cfg_dir / f"{args.size}-{method}-bf16compute.yaml"
        bf16.write_text(yaml.safe_dump({**cfg, "compute_dtype": "bfloat16"}, sort_keys=False))
        cfg_paths[(method, False)], cfg_paths[(method, True)] = shared, bf16

    read_files(inputs)  # warm-up: every timed step below starts with the inputs in the page cache
    floors = [floor_pair(inputs, work / "io_floor") for _ in range(args.repeats)]
    print(f"I/O floor: {'; '.join(show_floor(f) for f in floors)}", flush=True)

    startup: dict[str, float] = {}
    for tool in tools:
        cmd, log = startup_command(tool, args.mergekit_venv), log_dir / f"startup-{tool.slug}.log"
        times = [run_measured(cmd, log, tool_env(tool)) for _ in range(3)]  # its package copy, as its merges
        startup[tool.slug] = min(t[0] for t in times if t[3] == 0)
        print(f"start-up {tool.label}: {startup[tool.slug]:.2f}s", flush=True)

    # The compiled kernels' first use: numba compiles them (then caches them on disk). Timed once, with an empty
    # cache, on the first method that has a kernel; every timed run below finds the cache filled.
    cold: dict[str, float] = {}
    kernel_methods = [m for m in args.methods if REGISTRY[m].kernel is not None]
    if kernel_methods and any(t.slug == "babelmerge" for t in tools):
        method = kernel_methods[0]
        with tempfile.TemporaryDirectory() as cache:
            out = out_dir / f"{args.size}-{method}-cold"
            shutil.rmtree(out, ignore_errors=True)
            cmd = tool_command(
                Tool("babelmerge", "babelmerge"), cfg_paths[(method, False)], out, args.mergekit_venv
            )
            wall, *_ = run_measured(
                cmd, log_dir / f"{out.name}.log", {**os.environ, "NUMBA_CACHE_DIR": cache}
            )
            cold[method] = wall + timed_sync()
            shutil.rmtree(out, ignore_errors=True)
        print(f"babelmerge {method} with an empty kernel cache (compiles): {cold[method]:.1f}s", flush=True)
    # Fill each babelmerge copy's own kernel cache (untimed; on a fresh machine it is empty): one small merge per
    # kernel method, so that no timed run below includes a compilation.
    warm_cfg = cfg_dir / "warm-up.yaml"
    warm_models = make_models(work / "models", "small") if kernel_methods else {}
    for tool in [t for t in tools if t.slug.startswith("babelmerge") and t.slug != "babelmerge-torch"]:
        for method in kernel_methods:
            warm_cfg.write_text(
                yaml.safe_dump({**merge_config(method, warm_models), **(
                    {"compute_dtype": "bfloat16"} if tool.bf16_compute else {})}, sort_keys=False)
            )  # fmt: skip
            out = out_dir / "warm-up"
            cmd = tool_command(tool, warm_cfg, out, args.mergekit_venv)
            if run_measured(cmd, log_dir / f"warm-up-{tool.slug}-{method}.log", tool_env(tool))[3] != 0:
                raise SystemExit(f"warm-up merge failed: see {log_dir / f'warm-up-{tool.slug}-{method}.log'}")
            shutil.rmtree(out, ignore_errors=True)

    runs: list[Run] = []
    for rep in range(1, args.repeats + 1):
        for method in args.methods:
            # The machine's state drifts: the floor is sampled throughout.
            floors.append(floor_pair(inputs, work / "io_floor"))
            print(f"[{rep}] I/O floor: {show_floor(floors[-1])}", flush=True)
            for tool in tools:
                out = out_dir / f"{args.size}-{method}-{tool.slug}"
                shutil.rmtree(out, ignore_errors=True)
                os.sync()
                load = load_average()
                cmd = tool_command(tool, cfg_paths[(method, tool.bf16_compute)], out, args.mergekit_venv)
                log = log_dir / f"{out.name}-r{rep}.log"
                wall, rss, cpu, rc = run_measured(cmd, log, tool_env(tool))
                sync_s = timed_sync()
                runs.append(
                    Run(method, tool.label, rep, wall, sync_s, rss, cpu, load, rc, startup[tool.slug])
                )
                partial = {"size": args.size, "io_floor_s": floors, "runs": [asdict(r) for r in runs]}
                (work / f"results-{run_tag}.partial.json").write_text(json.dumps(partial, indent=2) + "\n")
                status = "ok" if rc == 0 else f"FAILED rc={rc}, see {log}"
                print(
                    f"[{rep}] {method:16s} {tool.label:26s} wall {wall:7.1f}s +sync {sync_s:5.2f}s "
                    f"peak RSS {rss:7.0f} MB cpu {cpu:6.0f}s load {load:.1f}  {status}",
                    flush=True,
                )

    agreement: dict[str, dict] = {}
    for method in args.methods:
        mk = out_dir / f"{args.size}-{method}-mergekit"
        for tool in tools:
            bm = out_dir / f"{args.size}-{method}-{tool.slug}"
            if tool.slug == "mergekit" or not (bm / "model.safetensors").exists():
                continue
            if (mk / "model.safetensors").exists():
                key = f"{method}/{tool.label}"
                agreement[key] = compare_outputs(bm, mk, models["base"])
                print(f"agreement {key} vs mergekit: {agreement[key]}", flush=True)

    for method in args.methods:  # the kernel against the torch definitions: expected identical
        kernel_out = out_dir / f"{args.size}-{method}-babelmerge"
        torch_out = out_dir / f"{args.size}-{method}-babelmerge-torch"
        if (kernel_out / "model.safetensors").exists() and (torch_out / "model.safetensors").exists():
            key = f"{method}/babelmerge vs babelmerge (torch, no kernels)"
            agreement[key] = compare_outputs(kernel_out, torch_out, models["base"])
            print(f"agreement {key}: {agreement[key]}", flush=True)

    versions = {
        "python": platform.python_version(),
        "babelmerge": getattr(babelmerge, "__version__", "?"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "mergekit venv (mergekit, torch, transformers)": mk_versions,
    }
    floor_s = min(min(f.values()) for f in floors)  # the least any merge of these inputs must do
    ways = dict.fromkeys(k for f in floors for k in f)
    spread = {k: (min(f[k] for f in floors if k in f), max(f[k] for f in floors if k in f)) for k in ways}
    floor_line = f"I/O floor {floor_s:.2f} s, the fastest of {len(floors)} samples of each way: " + ", ".join(
        f"{k.replace('_', ' ')} {lo:.2f}–{hi:.2f} s" for k, (lo, hi) in spread.items()
    )
    result = {
        "size": args.size,
        "parameters_per_model": n_params,
        "input_bytes": [p.stat().st_size for p in inputs],
        "io_floor_s": floors,
        "startup_s": startup,
        "cold_kernel_cache_wall_sync_s": cold,
        "runs": [asdict(r) | {"total_s": r.total_s, "work_s": r.work_s} for r in runs],
        "agreement": agreement,
        "versions": versions,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "vector": vector_extensions()},
    }
    (work / f"results-{run_tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    labels = [t.label for t in tools]
    report = f"{markdown_table(runs, floor_s, agreement, labels)}\n\n{target_lines(runs, floor_s, labels)}\n\n{floor_line}\n"
    (work / f"results-{run_tag}.md").write_text(report)
    print("\n" + report)
    print(f"versions {versions}; machine {result['machine']}; results in {work / f'results-{run_tag}.json'}")
    return 0 if all(r.returncode == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
