"""The evaluation gate's decisions."""

from __future__ import annotations

import pytest

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


def per_task(model: str, accs: dict[str, float], weights: dict[str, float], tokens: float = 100.0) -> EvalResult:
    """A model's combined result over tasks, as the cycle builds it (`combine`), 100 items per task."""
    from ray_jobs.evaluate.evaluator import combine

    return combine(model, {t: result(model, a, tokens, f"{t}:100+0:d") for t, a in accs.items()}, weights)


TOL = {"a": 0.05, "b": 0.05}


def test_a_task_falling_past_its_tolerance_refuses_whatever_the_gain_elsewhere() -> None:
    w = {"a": 3.0, "b": 1.0}
    base = per_task("student@v1", {"a": 0.50, "b": 0.80}, w)
    cand = per_task("student@v2", {"a": 0.90, "b": 0.70}, w)
    assert cand.accuracy - base.accuracy > 0.2  # a large weighted gain
    d = decide(cand, base, GateSettings(min_accuracy_gain=0.02), TOL)
    assert not d.promote
    assert "task b falls 0.100, past its tolerance 0.050" in d.reason and "task a" not in d.reason
    assert "b 0.700 vs 0.800" in d.reason and "a 0.900 vs 0.500" in d.reason
    # The task's own tolerance decides: a looser one lets the same drop through.
    assert decide(cand, base, GateSettings(min_accuracy_gain=0.02), {"a": 0.05, "b": 0.15}).promote


def test_within_tolerance_and_a_weighted_gain_at_the_margin_promotes() -> None:
    w = {"a": 3.0, "b": 1.0}
    base = per_task("student@v1", {"a": 0.50, "b": 0.80}, w)
    cand = per_task("student@v2", {"a": 0.60, "b": 0.75}, w)  # b falls exactly its tolerance
    assert cand.accuracy - base.accuracy == pytest.approx(0.0625)  # (3 * 0.10 - 0.05) / 4
    d = decide(cand, base, GateSettings(min_accuracy_gain=0.0625), TOL)
    assert d.promote and "accuracy 0.637 vs 0.575" in d.reason and "b 0.750 vs 0.800" in d.reason
    assert not decide(cand, base, GateSettings(min_accuracy_gain=0.07), TOL).promote
    # Without tolerances every task is protected at 0: any fall refuses.
    strict = decide(cand, base, GateSettings(min_accuracy_gain=0.02))
    assert not strict.promote and "task b falls 0.050, past its tolerance 0.000" in strict.reason


def test_the_gain_is_weighted_by_traffic() -> None:
    # a +0.10 on 10% of the traffic, b -0.01 on 90%: the plain mean of the tasks gains 0.045, the traffic 0.001.
    w = {"a": 1.0, "b": 9.0}
    base = per_task("student@v1", {"a": 0.50, "b": 0.80}, w)
    cand = per_task("student@v2", {"a": 0.60, "b": 0.79}, w)
    d = decide(cand, base, GateSettings(min_accuracy_gain=0.02), TOL)
    assert not d.promote and "accuracy gain +0.001 below the required +0.020" in d.reason
    flipped = {"a": 9.0, "b": 1.0}  # the same per-task results on traffic that is mostly a: promoted
    assert decide(per_task("student@v2", {"a": 0.60, "b": 0.79}, flipped),
                  per_task("student@v1", {"a": 0.50, "b": 0.80}, flipped), GateSettings(min_accuracy_gain=0.02),
                  TOL).promote


def test_per_task_results_on_other_slices_are_not_comparable() -> None:
    w = {"a": 1.0, "b": 1.0}
    base = per_task("student@v1", {"a": 0.5, "b": 0.5}, w)
    cand = per_task("student@v2", {"a": 0.9}, {"a": 1.0})  # b's slice missing
    d = decide(cand, base, GateSettings(), TOL)
    assert not d.promote and d.reason.startswith("not comparable") and "a:100+0:d|b:100+0:d" in d.reason


def test_weighted_tokens_per_query_are_bounded() -> None:
    w = {"a": 1.0, "b": 1.0}
    base = per_task("student@v1", {"a": 0.5, "b": 0.5}, w, tokens=100.0)
    cand = per_task("student@v2", {"a": 0.9, "b": 0.9}, w, tokens=111.0)
    d = decide(cand, base, GateSettings(max_tokens_increase=0.10), TOL)
    assert not d.promote and "tokens per query 111.0 exceed the bound 110.0" in d.reason
    assert decide(per_task("student@v2", {"a": 0.9, "b": 0.9}, w, tokens=110.0), base,
                  GateSettings(max_tokens_increase=0.10), TOL).promote


def test_every_refusal_is_false_and_the_reason_reads_whole() -> None:
    w = {"a": 3.0, "b": 1.0}
    base = per_task("student@v1", {"a": 0.50, "b": 0.80}, w)
    fall = decide(per_task("student@v2", {"a": 0.90, "b": 0.70}, w), base, GateSettings(min_accuracy_gain=0.02), TOL)
    assert fall.promote is False
    assert fall.reason == ("task b falls 0.100, past its tolerance 0.050: accuracy 0.850 vs 0.575 (student@v1), "
                           "tokens/query 100.0 vs 100.0 [a 0.900 vs 0.500; b 0.700 vs 0.800]")
    cfg = GateSettings(min_accuracy_gain=0.02, max_tokens_increase=0.10)
    one = result("student@v1", 0.40, 100)  # one slice, no per-task results: no bracket
    assert decide(result("student@v2", 0.40, 100, "other"), one, cfg).promote is False
    small = decide(result("student@v2", 0.41, 100), one, cfg)
    assert small.promote is False and small.reason == (
        "accuracy gain +0.010 below the required +0.020: accuracy 0.410 vs 0.400 (student@v1), "
        "tokens/query 100.0 vs 100.0")
    costly = decide(result("student@v2", 0.60, 111), one, cfg)
    assert costly.promote is False and costly.reason.startswith("tokens per query 111.0 exceed the bound 110.0 (+10%)")
    ok = decide(result("student@v2", 0.43, 105), one, cfg)
    assert ok.promote is True and ok.reason == (
        "accuracy gain +0.030 >= +0.020: accuracy 0.430 vs 0.400 (student@v1), tokens/query 105.0 vs 100.0")


def test_tokens_exactly_at_the_bound_pass() -> None:
    # "rise by at most": a candidate whose tokens equal the bound (100 * 1.5, exact in floating point) is promoted.
    cfg = GateSettings(min_accuracy_gain=0.0, max_tokens_increase=0.5)
    assert decide(result("student@v2", 0.5, 150), result("student@v1", 0.5, 100), cfg).promote
    assert not decide(result("student@v2", 0.5, 150.5), result("student@v1", 0.5, 100), cfg).promote
