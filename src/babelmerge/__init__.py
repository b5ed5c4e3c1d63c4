"""babelmerge: adapt language models to new languages without forgetting.

Merging: :func:`merge` (streaming engine) and the pure tensor functions of each method.
"""

__version__ = "0.1.0"

from .engine import merge, plan_merge  # noqa: E402
from .errors import BabelmergeError  # noqa: E402
from .methods import METHODS  # noqa: E402
from .methods.dare import dare_linear, dare_ties  # noqa: E402
from .methods.linear import linear  # noqa: E402
from .methods.model_stock import model_stock  # noqa: E402
from .methods.slerp import slerp  # noqa: E402
from .methods.task_arithmetic import task_arithmetic  # noqa: E402
from .methods.ties import ties, ties_sv  # noqa: E402

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
