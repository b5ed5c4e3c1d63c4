"""Metrics of a BaM run (pure math and record shaping; no file I/O).

After each merge we report how far the model has moved from the initial model, how large each branch's
update was, and how aligned the branches' updates are (their pairwise cosine similarity): nearly parallel
updates mean merging loses little; orthogonal ones mean the average shrinks each update.
"""

from __future__ import annotations

import math

import torch


class UpdateStats:
    """Accumulate, tensor by tensor, the squared norms and dot products of the updates of one iteration.

    For parameters ``theta_0`` (initial model), ``b`` (iteration base), ``u_i = theta_i - b`` (branch i) and
    ``n`` (next base): ``||n - theta_0||``, ``||u_i||``, ``cos(u_i, u_j)`` and ``||n - b||``, summed over
    all tensors (per-tensor sums in float32, their total in float64).
    """

    def __init__(self, n_branches: int):
        self.n = n_branches
        self.from_initial_sq = 0.0
        self.merged_update_sq = 0.0
        self.gram = torch.zeros(n_branches, n_branches, dtype=torch.float64)

    def add(
        self,
        initial: torch.Tensor,
        base: torch.Tensor,
        branches: list[torch.Tensor],
        new_base: torch.Tensor,
    ) -> None:
        """Add one tensor's contribution (all arguments are the same-named tensor of each model).

        Differences and dot products are computed in float32 (BLAS), each tensor's sums added in float64.
        """
        b = base.float().flatten()
        n = new_base.float().flatten()
        d = n - initial.float().flatten()
        self.from_initial_sq += float(torch.dot(d, d))
        d = n - b
        self.merged_update_sq += float(torch.dot(d, d))
        updates = [t.float().flatten() - b for t in branches]
        for i, u in enumerate(updates):
            for j in range(i, len(updates)):
                dot = float(torch.dot(u, updates[j]))
                self.gram[i, j] += dot
                if j != i:
                    self.gram[j, i] += dot

    def result(self) -> dict:
        """``{"l2_from_initial", "merged_update_l2", "branch_update_l2": [...], "branch_update_cosine": [[...]]}``."""
        norms = self.gram.diagonal().clamp_min(0).sqrt()
        denom = torch.outer(norms, norms)
        cos = torch.where(denom > 0, self.gram / denom.clamp_min(1e-300), torch.zeros_like(self.gram))
        return {
            "l2_from_initial": math.sqrt(self.from_initial_sq),
            "merged_update_l2": math.sqrt(self.merged_update_sq),
            "branch_update_l2": [float(x) for x in norms],
            "branch_update_cosine": [[round(float(x), 6) for x in row] for row in cos],
        }


def step_records(log_history: list[dict], *, tokens_per_step: int, **tags) -> list[dict]:
    """Per-step training records from a Trainer ``log_history``: loss, learning rate, grad norm, tokens seen.

    ``tags`` (e.g. ``iteration=0, branch=1, slice=1``) are added to each record.
    """
    records = []
    for entry in log_history:
        if "loss" not in entry:
            continue
        step = int(entry["step"])
        rec = {"event": "train", **tags, "step": step, "loss": float(entry["loss"])}
        if "learning_rate" in entry:
            rec["lr"] = float(entry["learning_rate"])
        if "grad_norm" in entry:
            rec["grad_norm"] = float(entry["grad_norm"])
        rec["tokens_seen"] = step * tokens_per_step
        records.append(rec)
    return records
