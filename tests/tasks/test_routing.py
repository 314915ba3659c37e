"""Which task a request belongs to (`TaskRouter.route`), and the stable held-out split (`in_holdout`)."""

from __future__ import annotations

import math

import pytest

from services.config import TaskMatch, TaskProfile
from services.tasks.routing import TaskRoute, TaskRouter, in_holdout

INTENT_PROMPT = "You are a banking assistant. Answer with the intent label only."
TASKS = [
    TaskProfile(name="intent", answer_type="label", labels=["card_arrival", "card_linking"],
                match=TaskMatch(system_prompt_prefix="You are a banking assistant.")),
    TaskProfile(name="math", answer_type="number", match=TaskMatch(system_prompt_prefix="Solve")),
    TaskProfile(name="default"),
]


def user(text: str = "My card has not arrived.") -> dict[str, str]:
    return {"role": "user", "content": text}


@pytest.fixture
def router() -> TaskRouter:
    return TaskRouter(TASKS)


def test_metadata_naming_a_configured_task_wins_over_the_rules(router: TaskRouter) -> None:
    messages = [{"role": "system", "content": INTENT_PROMPT}, user()]
    assert router.route({"task": "math"}, messages) == TaskRoute("math", "metadata")
    assert router.route({"task": "intent", "user": "u1"}, [user()]) == TaskRoute("intent", "metadata")


def test_an_unknown_task_name_is_default_reported_as_unknown(router: TaskRouter) -> None:
    messages = [{"role": "system", "content": INTENT_PROMPT}, user()]
    # A typo never mints a task, and does not fall through to a rule either: it is counted as unknown.
    assert router.route({"task": "intnet"}, messages) == TaskRoute("default", "unknown")
    assert router.route({"task": "Intent"}, [user()]) == TaskRoute("default", "unknown")


def test_a_system_or_developer_prompt_prefix_picks_the_task_by_rule(router: TaskRouter) -> None:
    assert router.route(None, [{"role": "system", "content": INTENT_PROMPT}, user()]) == TaskRoute("intent", "rule")
    assert router.route({}, [{"role": "developer", "content": INTENT_PROMPT}, user()]) == TaskRoute("intent", "rule")
    assert router.route({"other": "x"}, [{"role": "system", "content": "Solve it."}, user("2+2?")]) == \
        TaskRoute("math", "rule")
    # The prefix must start the prompt, and only the first system message is read.
    assert router.route(None, [{"role": "system", "content": "Note. " + INTENT_PROMPT}, user()]) == \
        TaskRoute("default", "default")
    assert router.route(None, [{"role": "system", "content": "Be kind."},
                               {"role": "system", "content": INTENT_PROMPT}, user()]) == TaskRoute("default", "default")
    # A user message starting with the prefix is no system prompt.
    assert router.route(None, [user(INTENT_PROMPT)]) == TaskRoute("default", "default")


def test_nothing_to_go_by_is_default(router: TaskRouter) -> None:
    assert router.route(None, [user()]) == TaskRoute("default", "default")
    assert router.route({}, []) == TaskRoute("default", "default")
    assert router.route(None, [{"role": "system", "content": None}, user()]) == TaskRoute("default", "default")
    assert TaskRouter([TaskProfile(name="default")]).route(None, [{"role": "system", "content": INTENT_PROMPT}]) \
        == TaskRoute("default", "default")


@pytest.mark.parametrize("value", [5, None, "", ["intent"], {"name": "intent"}, True])
def test_a_task_that_is_not_a_non_empty_string_is_ignored(router: TaskRouter, value: object) -> None:
    # Ignored: the rules still apply, and nothing is counted as `unknown`.
    messages = [{"role": "system", "content": INTENT_PROMPT}, user()]
    assert router.route({"task": value}, messages) == TaskRoute("intent", "rule")
    assert router.route({"task": value}, [user()]) == TaskRoute("default", "default")


def test_in_holdout_is_a_stable_function_of_the_request_id() -> None:
    ids = [f"req-{i}" for i in range(500)]
    first = [in_holdout(r, 0.3) for r in ids]
    assert first == [in_holdout(r, 0.3) for r in ids] == [in_holdout(str(r), 0.3) for r in list(ids)]
    assert any(first) and not all(first)
    # Raising the share only adds requests: none moves from evaluation back into training.
    for r in ids:
        assert not in_holdout(r, 0.1) or in_holdout(r, 0.2)
        assert not in_holdout(r, 0.2) or in_holdout(r, 0.3)


def test_share_zero_holds_nothing_out() -> None:
    assert not any(in_holdout(f"id-{i}", 0.0) for i in range(5000))
    assert not any(in_holdout(f"id-{i}", -0.5) for i in range(100))


def test_share_0_2_over_5000_ids_is_within_a_binomial_bound() -> None:
    n, p = 5000, 0.2
    held = sum(in_holdout(f"chatcmpl-{i:06d}", p) for i in range(n))
    sd = math.sqrt(n * p * (1 - p))  # 28.3
    assert abs(held - n * p) <= 4 * sd, held


def test_share_near_one_holds_almost_everything_out() -> None:
    assert all(in_holdout(f"id-{i}", 1.0) for i in range(2000))
    n = 5000
    held = sum(in_holdout(f"id-{i}", 0.9) for i in range(n))
    assert abs(held - 0.9 * n) <= 4 * math.sqrt(n * 0.9 * 0.1), held


def test_different_ids_spread_over_the_buckets() -> None:
    # Near-identical ids (one character apart) must not land together: a 10-way split of 2,000 ids by share
    # thresholds fills every decile about equally.
    ids = [f"r{i}" for i in range(2000)]
    deciles = [0] * 10
    for r in ids:
        k = next(d for d in range(1, 11) if in_holdout(r, d / 10))  # the smallest share that holds r out
        deciles[k - 1] += 1
    assert all(140 <= c <= 260 for c in deciles), deciles
    runs = [in_holdout(r, 0.5) for r in ids]
    assert max(len(s) for s in "".join("1" if b else "0" for b in runs).replace("0", " ").split()) < 20
