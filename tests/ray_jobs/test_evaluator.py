"""Evaluation slices per task: golden sets, held-out captured traffic from a real store, traffic weights, and the
weighted combination the gate compares."""

from __future__ import annotations

import json

import pytest

from ray_jobs.evaluate.evaluator import EvalItem, EvalResult, combine, golden_items, load_slices
from services.config import Settings, TaskEval, TaskProfile
from services.store.mags import MagStore
from services.tasks.arithmetic import generate

SYSTEM = {"role": "system", "content": "Answer with the intent label only."}


def test_builtin_arithmetic_golden_set_is_the_suites_eval_split() -> None:
    task = TaskProfile(name="math", answer_type="number",
                       eval=TaskEval(golden="builtin:arithmetic", golden_n=7, golden_seed=3))
    items = golden_items(task)
    assert [(i.question, i.answer) for i in items] == [(p.question, p.answer) for p in generate("eval", 7, 3)]
    assert len(items) == 7 and all(i.messages is None for i in items)
    train = {p.question for p in generate("train", 200, 3)}
    assert not train & {i.question for i in items}
    assert golden_items(TaskProfile(name="none")) == []


def test_a_jsonl_golden_set_keeps_the_messages_and_reads_the_answer(tmp_path) -> None:
    rows = [
        {"messages": [SYSTEM, {"role": "user", "content": "Where is my card?"}], "answer": "card_arrival"},
        {"messages": [SYSTEM, {"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                      {"role": "user", "content": "Link my card"}], "answer": "card_linking"},
        {"question": "Tom has 1,000 apples and buys 234. How many?", "answer": "1000 + 234 = 1234\n#### 1,234"},
        {"question": "ignored past golden_n", "answer": "0"},
    ]
    path = tmp_path / "golden.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[2:]))
    items = golden_items(TaskProfile(name="t", eval=TaskEval(golden=str(path), golden_n=3)))
    assert items == [
        EvalItem("Where is my card?", "card_arrival", rows[0]["messages"]),
        EvalItem("Link my card", "card_linking", rows[1]["messages"]),
        EvalItem(rows[2]["question"], "1234", None),
    ]
    assert items[0].messages == rows[0]["messages"] and items[1].messages[0] == SYSTEM


def captured(store: MagStore, rid: str, task: str, *, held_out: bool, label: str | None = None,
             source: str = "traffic") -> None:
    row = {"request_id": rid, "source": source, "question": rid, "task": task, "held_out": held_out,
           "messages": [SYSTEM, {"role": "user", "content": f"text of {rid}"}]}
    if label is not None:
        row.update(label=label, label_source="feedback")
    store.enqueue([row])


def settings() -> Settings:
    return Settings(tasks=[
        TaskProfile(name="intent", answer_type="label", labels=["card_arrival", "card_linking"],
                    eval=TaskEval(holdout=0.5, max_items=2)),
        TaskProfile(name="math", answer_type="number", eval=TaskEval(holdout=0.0, golden="builtin:arithmetic",
                                                                     golden_n=3)),
        TaskProfile(name="empty", answer_type="text"),  # nothing to measure: left out
    ])


def test_slices_hold_each_tasks_held_out_traffic_and_golden_set_weighted_by_traffic(store: MagStore) -> None:
    captured(store, "i1", "intent", held_out=True, label="card_arrival")
    captured(store, "i2", "intent", held_out=True, label="card_linking")
    captured(store, "i3", "intent", held_out=True, label="card_linking")
    captured(store, "i4", "intent", held_out=False, label="card_arrival")  # trained on, never measured
    captured(store, "i5", "intent", held_out=True)  # no gold yet
    captured(store, "e1", "empty", held_out=False)
    captured(store, "d1", "default", held_out=False)
    captured(store, "m-batch", "math", held_out=False, source="batch")  # no traffic
    slices = {s.task.name: s for s in load_slices(settings(), store)}
    assert set(slices) == {"intent", "math"}  # `empty` and `default` have no items
    intent, math = slices["intent"], slices["math"]
    assert [(i.question, i.answer) for i in intent.items] == [("text of i3", "card_linking"),
                                                              ("text of i2", "card_linking")]  # newest max_items
    assert intent.items[0].messages == [SYSTEM, {"role": "user", "content": "text of i3"}]
    assert intent.eval_set.startswith("intent:2+0:") and math.eval_set.startswith("math:0+3:")
    assert [i.answer for i in math.items] == [p.answer for p in generate("eval", 3, 0)]
    assert intent.task.spec.labels == ("card_arrival", "card_linking")
    assert (intent.weight, math.weight) == (5.0, 0.0)  # captured traffic: 5 intent requests, no math traffic
    again = {s.task.name: s.eval_set for s in load_slices(settings(), store)}
    assert again == {"intent": intent.eval_set, "math": math.eval_set}  # the same slice, the same fingerprint
    captured(store, "i6", "intent", held_out=True, label="card_arrival")
    assert {s.task.name: s.eval_set for s in load_slices(settings(), store)}["intent"] != intent.eval_set


def test_golden_sets_alone_weigh_equally(store: MagStore, tmp_path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"question": "Card?", "answer": "card_arrival"}) + "\n")
    s = settings()
    s.task("intent").eval.golden = str(path)
    captured(store, "b1", "intent", held_out=True, label="card_arrival", source="batch")
    slices = {sl.task.name: sl for sl in load_slices(s, store)}
    assert {k: v.weight for k, v in slices.items()} == {"intent": 1.0, "math": 1.0}
    assert slices["intent"].eval_set.startswith("intent:0+1:")
    assert {k: v.weight for k, v in ((sl.task.name, sl) for sl in load_slices(s, None))} == \
           {"intent": 1.0, "math": 1.0}
    assert load_slices(Settings(tasks=[TaskProfile(name="a")]), store) == []


def result(model: str, eval_set: str, n: int, correct: int, total_tokens: float, seconds: float = 1.0
           ) -> EvalResult:
    return EvalResult(model, "student@v2", eval_set, n, correct, correct / n, total_tokens / 2, total_tokens,
                      n - correct, seconds)


def test_combine_weights_each_task_by_its_traffic() -> None:
    per_task = {"a": result("m", "a:10+0:x", 10, 9, 100.0), "b": result("m", "b:0+20:y", 20, 10, 200.0, 2.0)}
    out = combine("m", per_task, {"a": 3.0, "b": 1.0})
    assert out.accuracy == pytest.approx((3 * 0.9 + 1 * 0.5) / 4)  # 0.8, not the pooled 19/30
    assert out.mean_total_tokens == pytest.approx((3 * 100 + 200) / 4)
    assert out.mean_completion_tokens == pytest.approx((3 * 50 + 100) / 4)
    assert (out.n, out.correct, out.no_answer, out.seconds) == (30, 19, 11, 3.0)
    assert out.eval_set == "a:10+0:x|b:0+20:y" and out.model == "m" and out.served_by == "student@v2"
    assert out.tasks["a"]["weight"] == pytest.approx(0.75) and out.tasks["b"]["weight"] == pytest.approx(0.25)
    assert out.tasks["b"]["accuracy"] == 0.5 and out.tasks["a"]["eval_set"] == "a:10+0:x"
    assert out.as_dict()["tasks"] == out.tasks
    assert combine("m", per_task, {"a": 0.0, "b": 0.0}).n == 30  # no weight at all: no division by zero
