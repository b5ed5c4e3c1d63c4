"""Tokenize-and-pack throughput of ``babelmerge.data.prepare_data``, in MB of raw text per second.

Sources: the first ``--en-mb`` MB of ``en/eltec_train.txt`` and all of ``parallel/bible_train.bg.txt``
from the shared data folder. A byte-level BPE tokenizer (``--vocab`` tokens) is trained on a sample
of both. Each ``num_proc`` setting is timed cold (empty cache: read, tokenize, pack, write cache,
draw mixture) and warm (second call: cache hit, draw mixture only).

    python benchmarks/tokenize_throughput.py [--data ../shared/data] [--en-mb 8] [--num-proc 1 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _head_lines(src: Path, dst: Path, n_bytes: int) -> int:
    """Copy whole lines of ``src`` into ``dst`` until about ``n_bytes``; return the bytes written."""
    written = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for line in fin:
            if written + len(line) > n_bytes:
                break
            fout.write(line)
            written += len(line)
    return written


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and of its finished child processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _sample(path: Path, n_bytes: int) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read(n_bytes).splitlines()[:-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    ap.add_argument("--en-mb", type=float, default=8.0, help="MB of en/eltec_train.txt to use")
    ap.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument(
        "--sample-mb", type=float, default=1.0, help="MB of each source to train the tokenizer on"
    )
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=1000)
    args = ap.parse_args()

    import datasets

    from babelmerge.data import DataConfig, SourceConfig, prepare_data
    from babelmerge.tiny import train_tokenizer

    datasets.disable_progress_bars()
    logging.basicConfig(level=logging.WARNING)

    en_src = args.data / "en" / "eltec_train.txt"
    bg_src = args.data / "parallel" / "bible_train.bg.txt"
    with tempfile.TemporaryDirectory(prefix="bm-tokbench-") as tmp:
        tmp = Path(tmp)
        en = tmp / "en.txt"
        n_bytes = _head_lines(en_src, en, int(args.en_mb * 1e6)) + bg_src.stat().st_size

        t0 = time.perf_counter()
        sample = _sample(en_src, int(args.sample_mb * 1e6)) + _sample(bg_src, int(args.sample_mb * 1e6))
        tok = train_tokenizer(sample, tmp / "tok", vocab_size=args.vocab)
        t_train = time.perf_counter() - t0

        rows = []
        for num_proc in args.num_proc:
            cfg = DataConfig(
                sources=[SourceConfig(name="en", path=str(en)), SourceConfig(name="bg", path=str(bg_src))],
                block_size=args.block_size,
                batch_size=args.batch_size,
                num_proc=num_proc,
                cache_dir=str(tmp / f"cache-{num_proc}"),
            )
            for phase in ("cold", "warm"):
                cpu0, t0 = _cpu_seconds(), time.perf_counter()
                data = prepare_data(cfg, tok)
                dt, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
                expect_hit = phase == "warm"
                assert all(v == expect_hit for v in data.cache_hit.values()), data.cache_hit
                rows.append((num_proc, phase, dt, n_bytes / 1e6 / dt, cpu, data.n_tokens))

    print(
        f"text: {n_bytes / 1e6:.1f} MB ({en_src.name} first {args.en_mb:g} MB + {bg_src.name}); "
        f"tokenizer: byte-level BPE, vocab {args.vocab}, trained in {t_train:.1f} s; "
        f"block_size {args.block_size}, batch_size {args.batch_size}; "
        f"{os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
        f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}"
    )
    print()
    print("| num_proc | cache | wall s | MB/s (wall) | CPU s (incl. workers) | tokens in mixture |")
    print("|---:|---|---:|---:|---:|---:|")
    for num_proc, phase, dt, mbps, cpu, n_tok in rows:
        print(f"| {num_proc} | {phase} | {dt:.2f} | {mbps:.1f} | {cpu:.2f} | {n_tok:,} |")
    print()
    print(f"load average during the run: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1 / 5 / 15 min)")


if __name__ == "__main__":
    main()
