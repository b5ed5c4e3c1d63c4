"""babelmerge: adapt language models to new languages without forgetting.

Merging: :func:`merge` (streaming engine) and the pure tensor functions of each method.
"""

__version__ = "0.1.0"

from .gc_pause import paused_gc as _paused_gc  # noqa: E402

with _paused_gc():  # torch, transformers & co. make a few 10^5 objects, all of which survive (gc_pause.py)
    from .engine import merge, plan_merge
    from .errors import BabelmergeError
    from .methods import METHODS
    from .methods.dare import dare_linear, dare_ties
    from .methods.linear import linear
    from .methods.model_stock import model_stock
    from .methods.slerp import slerp
    from .methods.task_arithmetic import task_arithmetic
    from .methods.ties import ties, ties_sv

__all__ = [
    "BabelmergeError",
    "METHODS",
    "merge",
    "plan_merge",
    "linear",
    "slerp",
    "task_arithmetic",
    "ties",
    "ties_sv",
    "dare_linear",
    "dare_ties",
    "model_stock",
]
