"""lm-evaluation-harness adapter: named benchmark tasks on the in-memory model (optional extra ``[eval]``).

``run_harness(model, tokenizer, ["belebele_bul_Cyrl", "hellaswag"])`` wraps the already-loaded model in
lm_eval's ``HFLM`` (no reload, so interpolated weights are evaluated as they are) and calls
``lm_eval.simple_evaluate``. ``include_path`` adds a folder of local task YAMLs, which is how tasks run offline.
"""

from __future__ import annotations

from ..errors import BabelmergeError


def run_harness(
    model,
    tokenizer,
    tasks: list[str],
    *,
    include_path: str | None = None,
    batch_size: int = 8,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    include_defaults: bool = True,
) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` for every task (numeric metrics only, lm_eval's names such as ``acc,none``).

    ``include_defaults=False`` indexes only the tasks under ``include_path`` (much faster start-up).
    """
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise BabelmergeError("lm-eval tasks need the 'eval' extra: pip install 'babelmerge[eval]'") from None
    manager = TaskManager(include_path=include_path, include_defaults=include_defaults or not include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        import difflib

        hint = difflib.get_close_matches(unknown[0], manager.all_tasks, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise BabelmergeError(f"unknown lm-eval task '{unknown[0]}'{suggestion}")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot, log_samples=False
    )
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results["results"].items():
        out[task] = {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
    return out
