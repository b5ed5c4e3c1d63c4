"""Keeping Python's cyclic garbage collector out of short bursts that allocate many long-lived objects.

A full (generation-2) collection walks every tracked object, and CPython starts one whenever enough objects
have survived younger collections. Importing torch, transformers and numba creates a few hundred thousand
objects that all survive, so the collector keeps walking a growing heap that holds no garbage: measured
0.24–0.28 s of `import babelmerge` (~2 s) and 0.12–0.14 s of a 0.47B-parameter TIES merge in a new process
(`benchmarks/merge_bench.md`, change 17). Both helpers leave the collector as they found it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """No automatic collections inside the block (for imports); the previous on/off state is restored.

    Garbage made inside is collected by the next automatic collection after the block.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def frozen_gc() -> Iterator[None]:
    """The objects that exist on entry are left out of every collection inside the block.

    `gc.freeze()` moves them to the collector's permanent generation, `gc.unfreeze()` back into the oldest
    one on exit, so a cycle among them that became garbage is still collected later. Objects made inside are
    collected as usual. If objects are frozen already (the caller's own `gc.freeze()`, e.g. before forking
    workers), nothing is done: unfreezing on exit would undo the caller's freeze.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
