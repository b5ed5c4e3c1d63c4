"""While a merge runs, freed tensor memory is reused instead of being page-faulted in again."""

import resource

import pytest
import torch

from babelmerge.allocator import _glibc, reuse_freed_memory

SIZE = 16 * 2**20  # float32 entries: a 64 MB tensor, far above glibc's mmap threshold


def faults_of_second_allocation() -> int:
    """Page faults of touching a 48 MB tensor just after a 64 MB one was freed (it fits in the freed block)."""
    torch.empty(SIZE).fill_(1.0)  # allocate, touch and free
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(SIZE * 3 // 4).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(_glibc() is None, reason="glibc only")
def test_freed_memory_is_reused_inside_and_returned_after():
    pages = SIZE * 3 // 4096  # of the second tensor
    outside = faults_of_second_allocation()
    with reuse_freed_memory() as applied:
        assert applied
        inside = faults_of_second_allocation()
    after = faults_of_second_allocation()
    counts = f"faults outside {outside}, inside {inside}, after {after} ({pages} pages)"
    assert outside > pages // 2, counts  # a fresh mapping: every page faults in again
    assert inside < pages // 20, counts  # the freed block is reused
    assert after > pages // 2, counts  # defaults restored
