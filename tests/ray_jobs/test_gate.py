"""The evaluation gate's decisions."""

from __future__ import annotations

from ray_jobs.evaluate.evaluator import EvalResult
from ray_jobs.evaluate.gate import decide
from services.config import GateSettings


def result(model: str, acc: float, tokens: float, eval_set: str = "s") -> EvalResult:
    return EvalResult(model, model, eval_set, 100, int(acc * 100), acc, tokens / 2, tokens, 0, 1.0)


def test_promotes_only_a_measurably_better_candidate_within_the_token_bound() -> None:
    cfg = GateSettings(min_accuracy_gain=0.02, max_tokens_increase=0.10)
    base = result("student@v1", 0.40, 100)
    assert decide(result("student@v2", 0.43, 105), base, cfg).promote
    exactly = decide(result("student@v2", 0.42, 100), base, cfg)
    assert exactly.promote  # a gain equal to the margin passes
    small = decide(result("student@v2", 0.41, 90), base, cfg)
    assert not small.promote and "below the required" in small.reason and "0.410 vs 0.400" in small.reason
    costly = decide(result("student@v2", 0.60, 111), base, cfg)
    assert not costly.promote and "exceed the bound 110.0" in costly.reason
    worse = decide(result("student@v2", 0.10, 50), base, cfg)
    assert not worse.promote and "-0.300" in worse.reason


def test_refuses_results_from_different_eval_sets() -> None:
    d = decide(result("student@v2", 0.9, 10, "a"), result("student@v1", 0.1, 10, "b"), GateSettings())
    assert not d.promote and "not comparable" in d.reason
