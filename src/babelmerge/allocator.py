"""Keeping freed memory for reuse while a merge streams tensors (glibc's malloc only).

A merge allocates and frees the same few tensor sizes thousands of times. By default glibc serves large blocks
with a fresh ``mmap`` and hands freed memory straight back to the kernel, so every new tensor page-faults its
pages in again, zero-filled: about a third of the CPU time of a merge in a profile (mostly kernel time). While a
merge runs, :func:`reuse_freed_memory` tells glibc to serve every block from its heap, never to shrink the heap,
and to use one heap for all threads (blocks are freed by a different thread than the one that allocated them);
freed blocks are then reused as they are. Afterwards it restores glibc's defaults and returns the heap's free
memory to the kernel (``malloc_trim``).

The peak resident memory becomes the high-water mark of the heap (slightly above what was live at once). On
other C libraries, or if ``mallopt`` refuses, nothing changes. One process-wide side effect remains: setting these
parameters switches off glibc's adaptive mmap threshold for the rest of the process.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# mallopt parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_DURING = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_ARENA_MAX, 1))
_DEFAULTS = ((M_MMAP_MAX, 65536), (M_TRIM_THRESHOLD, 128 * 1024), (M_ARENA_MAX, 0))


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only (not musl)
    except (OSError, AttributeError):
        return None
    return libc


@contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Within the block, freed memory stays in the process for reuse. Yields whether the setting took effect."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    applied = all(libc.mallopt(param, value) == 1 for param, value in _DURING)
    try:
        yield applied
    finally:
        for param, value in _DEFAULTS:
            libc.mallopt(param, value)
        libc.malloc_trim(0)
