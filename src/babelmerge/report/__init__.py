"""Reports: tables and plots of learning vs forgetting from stored evaluation results and training metrics."""

from .pareto import dominates, pareto_front
from .report import Report, make_report

__all__ = ["Report", "dominates", "make_report", "pareto_front"]
