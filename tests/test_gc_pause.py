"""gc_pause: the collector's state is restored, and what is (not) collected inside each block."""

import gc
import weakref

from babelmerge.gc_pause import frozen_gc, paused_gc


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_paused_gc_restores_the_previous_state():
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the caller had it off: it stays off
    finally:
        gc.enable()


def test_frozen_gc_spares_old_objects_and_collects_new_ones():
    gc.collect()
    old = Node()
    old_ref = weakref.ref(old)
    with frozen_gc():
        assert gc.get_freeze_count() > 0
        del old  # garbage now, but frozen: not collected inside the block
        new = Node()
        new_ref = weakref.ref(new)
        del new
        gc.collect()
        assert new_ref() is None
        assert old_ref() is not None
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert old_ref() is None  # back in the oldest generation, so collected after all


def test_frozen_gc_keeps_the_callers_own_freeze():
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        with frozen_gc():
            pass
        assert gc.get_freeze_count() == before
    finally:
        gc.unfreeze()
