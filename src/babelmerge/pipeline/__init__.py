"""``babelmerge pipeline CONFIG.yaml``: named train / merge / evaluate steps run in dependency order, resumable.

    from babelmerge.pipeline import run_pipeline
    reports = run_pipeline("examples/low_resource_recipe.yaml")

See :mod:`.config` for the file format and :mod:`.runner` for when a step is skipped, resumed or run again.
"""

from .base_check import check_shared_base
from .config import Pipeline, PipelineConfig, Step, StepConfig, load_pipeline
from .runner import Decision, StepReport, plan, run_pipeline, validate_pipeline

__all__ = [
    "Decision",
    "Pipeline",
    "PipelineConfig",
    "Step",
    "StepConfig",
    "StepReport",
    "check_shared_base",
    "load_pipeline",
    "plan",
    "run_pipeline",
    "validate_pipeline",
]
