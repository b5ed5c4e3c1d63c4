"""Branch-and-Merge continued pretraining (and the standard single-run baseline).

    from babelmerge.training import train
    final_dir = train("examples/bam_cpt.yaml")   # or a TrainConfig, or a dict

From the command line: ``babelmerge train CONFIG.yaml``. See :class:`TrainConfig` for the keys.
"""

from .config import (
    BackendConfig,
    EvalConfig,
    MergeConfig,
    OptimConfig,
    OuterConfig,
    RayConfig,
    TrainConfig,
    load_config,
)
from .outer import outer_step
from .run import train

__all__ = [
    "BackendConfig",
    "EvalConfig",
    "MergeConfig",
    "OptimConfig",
    "OuterConfig",
    "RayConfig",
    "TrainConfig",
    "load_config",
    "outer_step",
    "train",
]
