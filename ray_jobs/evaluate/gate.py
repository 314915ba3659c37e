"""The evaluation gate: a candidate replaces the promoted adapter only if it is measurably better and not costlier."""

from __future__ import annotations

from dataclasses import dataclass

from ray_jobs.evaluate.evaluator import EvalResult
from services.config import GateSettings


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(candidate: EvalResult, incumbent: EvalResult, cfg: GateSettings) -> Decision:
    if candidate.eval_set != incumbent.eval_set:
        return Decision(False, f"not comparable: evaluated on {candidate.eval_set} vs {incumbent.eval_set}")
    gain = candidate.accuracy - incumbent.accuracy
    summary = (f"accuracy {candidate.accuracy:.3f} vs {incumbent.accuracy:.3f} ({incumbent.model}), "
               f"tokens/query {candidate.mean_total_tokens:.1f} vs {incumbent.mean_total_tokens:.1f}")
    if gain < cfg.min_accuracy_gain - 1e-9:
        return Decision(False, f"accuracy gain {gain:+.3f} below the required {cfg.min_accuracy_gain:+.3f}: {summary}")
    limit = incumbent.mean_total_tokens * (1 + cfg.max_tokens_increase)
    if candidate.mean_total_tokens > limit:
        return Decision(False, f"tokens per query {candidate.mean_total_tokens:.1f} exceed the bound {limit:.1f} "
                               f"(+{cfg.max_tokens_increase:.0%}): {summary}")
    return Decision(True, f"accuracy gain {gain:+.3f} >= {cfg.min_accuracy_gain:+.3f}: {summary}")
