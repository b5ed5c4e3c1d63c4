"""Evaluation of learning (target language) against forgetting (source language).

- :mod:`.bits_per_byte`: bits per byte / loss / perplexity on held-out text, sliding windows, batched.
- :mod:`.instruction_accuracy`: greedy generation on prompts with expected answers.
- :mod:`.harness`: lm-evaluation-harness tasks on the in-memory model.
- :mod:`.weight_change`: L2 distance from a reference model, total and per layer.
- :mod:`.interpolation`: scores along θ_base + α(θ − θ_base), for trade-off curves.
- :mod:`.evaluate`: all of the above for many models, results as JSON files.
"""

from .bits_per_byte import TextScore, score_texts
from .evaluate import EvalConfig, evaluate
from .instruction_accuracy import instruction_accuracy
from .weight_change import weight_change

__all__ = ["EvalConfig", "TextScore", "evaluate", "instruction_accuracy", "score_texts", "weight_change"]
