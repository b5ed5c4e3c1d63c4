"""``babelmerge demo``: the whole method end to end on a CPU, offline (see :mod:`.run`)."""

from .run import run_demo

__all__ = ["run_demo"]
