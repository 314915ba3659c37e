"""The evaluation gate: a candidate replaces the promoted adapter only if it is measurably better on the traffic
the deployment serves, breaks no task, and is not costlier.

Promote iff, against the incumbent on the same slices:
  no task falls by more than its `tasks[].eval.tolerance` (whatever is gained elsewhere),
  the traffic-weighted accuracy rises by at least `training.gate.min_accuracy_gain`,
  the weighted tokens per query rise by at most `training.gate.max_tokens_increase`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray_jobs.evaluate.evaluator import EvalResult
from services.config import GateSettings


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(candidate: EvalResult, incumbent: EvalResult, cfg: GateSettings,
           tolerances: dict[str, float] | None = None) -> Decision:
    if candidate.eval_set != incumbent.eval_set:
        return Decision(False, f"not comparable: evaluated on {candidate.eval_set} vs {incumbent.eval_set}")
    per_task = "; ".join(f"{t} {r['accuracy']:.3f} vs {incumbent.tasks[t]['accuracy']:.3f}"
                         for t, r in candidate.tasks.items() if t in incumbent.tasks)
    summary = (f"accuracy {candidate.accuracy:.3f} vs {incumbent.accuracy:.3f} ({incumbent.model}), "
               f"tokens/query {candidate.mean_total_tokens:.1f} vs {incumbent.mean_total_tokens:.1f}"
               + (f" [{per_task}]" if per_task else ""))
    for task, r in candidate.tasks.items():
        before = incumbent.tasks.get(task)
        tolerance = (tolerances or {}).get(task, 0.0)
        if before is not None and before["accuracy"] - r["accuracy"] > tolerance + 1e-9:
            return Decision(False, f"task {task} falls {before['accuracy'] - r['accuracy']:.3f}, past its tolerance "
                                   f"{tolerance:.3f}: {summary}")
    gain = candidate.accuracy - incumbent.accuracy
    if gain < cfg.min_accuracy_gain - 1e-9:
        return Decision(False, f"accuracy gain {gain:+.3f} below the required {cfg.min_accuracy_gain:+.3f}: {summary}")
    limit = incumbent.mean_total_tokens * (1 + cfg.max_tokens_increase)
    if candidate.mean_total_tokens > limit:
        return Decision(False, f"tokens per query {candidate.mean_total_tokens:.1f} exceed the bound {limit:.1f} "
                               f"(+{cfg.max_tokens_increase:.0%}): {summary}")
    return Decision(True, f"accuracy gain {gain:+.3f} >= {cfg.min_accuracy_gain:+.3f}: {summary}")
