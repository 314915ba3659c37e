"""Two tasks in one deployment, end to end on the real service: arithmetic (the embedded demo's `default`) and
BANKING77 intent routing (a `label` task with its own labelled-file teachers). Requests are recognised from
`metadata` (and by the system-prompt rule), debated with their answer types, one cycle trains on both, and the
gate, measuring each task on its own slice, refuses a candidate that gains on one task but breaks the other: the
operator's `distillery train --once` runs that cycle, the refused version stays registered, and the test measures
itself that it answers arithmetic worse than the base model.
Bad input on the way: an unknown task, 1,000 metadata keys, a label outside the set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from services.store.db import Database
from services.store.mags import MagStore
from services.tasks.routing import in_holdout
from tests.conftest import Service, start_service, stop_service
from tests.e2e.test_training_loop import FAST_TRAINING_ENV, accuracy
from tests.http_servers import wait_for
from tests.ray_jobs.mags import one_step, poisoned_mags

pytestmark = pytest.mark.e2e

BANKING = Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77"
SYSTEM = (BANKING / "system_prompt.txt").read_text().removesuffix("\n")
ROWS = [json.loads(line) for line in (BANKING / "train.jsonl").read_text().splitlines()[:600:50]]  # 12 messages
TEACHERS = [
    {"name": "ref-exact", "reference": {"error_rate": 0.0, "seed": 1}},
    {"name": "ref-offbyone", "reference": {"error_rate": 0.3, "error_styles": ["off_by_one"], "seed": 2}},
    {"name": "bank-a", "reference": {"labels_file": str(BANKING / "train.jsonl"), "seed": 3}},
    {"name": "bank-b", "reference": {"labels_file": str(BANKING / "train.jsonl"), "error_rate": 0.2, "seed": 4}},
]


def tasks(eval_set: Path) -> list[dict[str, Any]]:
    return [
        {"name": "default", "answer_type": "number", "teachers": ["ref-exact", "ref-offbyone"],
         "eval": {"holdout": 0, "golden": str(eval_set), "golden_n": 20, "tolerance": 0.05}},
        {"name": "banking77", "answer_type": "label", "labels_file": str(BANKING / "labels.json"),
         "teachers": ["bank-a", "bank-b"], "match": {"system_prompt_prefix": SYSTEM[:60]},
         "eval": {"holdout": 0.5, "tolerance": 0.05}},
    ]


ENV = {
    "DISTILLERY_DEBATE__TEACHERS": json.dumps(TEACHERS),
    "DISTILLERY_DEBATE__MAX_ROUNDS": "2",
    "DISTILLERY_DEBATE__MAX_TOKENS": "64",
    "DISTILLERY_DEBATE__STUDENT_SAMPLES": "1",
    "DISTILLERY_DEBATE__CONCURRENCY": "4",  # the engine batches their student turns
    "DISTILLERY_TRAINING__ENABLED": "false",
    "DISTILLERY_TRAINING__MIN_MAGS": "4",
    **FAST_TRAINING_ENV,
    "DISTILLERY_TRAINING__SFT__BATCH_SIZE": "4",
    "DISTILLERY_TRAINING__SFT__MAX_STEPS": "9",  # rows of ~650 tokens (the bank's system prompt): ~22 s a step
    "DISTILLERY_TRAINING__TDPO__TREES_PER_STEP": "2",
    "DISTILLERY_TRAINING__TDPO__MAX_STEPS": "2",
    "DISTILLERY_TRAINING__EVAL__MAX_TOKENS": "48",
    "DISTILLERY_TRAINING__GATE__MAX_TOKENS_INCREASE": "0.5",
}


def service_env(data_dir: Path) -> dict[str, str]:
    """The deployment's settings (the service's and `distillery train --once`'s), its golden file in `data_dir`."""
    return {**ENV, "DISTILLERY_TASKS": json.dumps(tasks(data_dir / "arithmetic.jsonl"))}


@pytest.fixture(scope="module")
def service(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("tasks")
    eval_set = data_dir / "arithmetic.jsonl"
    eval_set.write_text("".join(json.dumps({"question": p.question, "answer": p.answer}) + "\n"
                                for p in one_step("eval", 20)))
    svc = start_service(model_dir, data_dir, service_env(data_dir))
    try:
        yield svc
    finally:
        stop_service(svc)


def chat(client: openai.OpenAI, messages: list[dict[str, str]], **kw: Any) -> tuple[str, str]:
    raw = client.chat.completions.with_raw_response.create(model="student", messages=messages, max_tokens=32,
                                                           temperature=0, **kw)
    return raw.headers["x-request-id"], raw.parse().choices[0].message.content or ""


def banking(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def store(svc: Service) -> MagStore:
    return MagStore(Database(f"sqlite:///{svc.data_dir / 'distillery.db'}"))


def task_requests(svc: Service) -> dict[tuple[str, str], float]:
    out = {}
    for line in httpx.get(f"{svc.url}/metrics", timeout=30).text.splitlines():
        if line.startswith("distillery_task_requests_total{"):
            labels = dict(p.split("=") for p in line[line.index("{") + 1: line.index("}")].split(","))
            out[(labels["task"].strip('"'), labels["via"].strip('"'))] = float(line.rsplit(" ", 1)[1])
    return out


def test_two_tasks_are_recognised_debated_with_their_types_and_gated_per_task(service: Service, model_dir: str
                                                                              ) -> None:
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="none", max_retries=0)
    ids = {f"bank-{i}-{uuid.uuid4().hex[:8]}": row["label"] for i, row in enumerate(ROWS)}
    for rid, label in ids.items():  # the app's agents resolved these tickets: their labels wait for the requests
        r = httpx.post(f"{service.url}/v1/feedback", json={"request_id": rid, "answer": label}, timeout=30)
        assert r.status_code == 202 and r.json()["status"] == "pending", r.text
    for i, (rid, row) in enumerate(zip(ids, ROWS, strict=True)):
        # the first eight name their task; the others are recognised by the system-prompt rule
        assert chat(client, banking(row["text"]), extra_headers={"x-request-id": rid},
                    **({"metadata": {"task": "banking77"}} if i < 8 else {}))[0] == rid
    arithmetic = [chat(client, [{"role": "user", "content": p.question}], metadata={"task": "default"})[0]
                  for p in one_step("train", 2)]
    # Bad input: an unknown task is served as `default` and counted; 1,000 metadata keys are refused.
    chat(client, [{"role": "user", "content": "What is 2 + 2?"}], metadata={"task": "no-such-task"})
    with pytest.raises(openai.UnprocessableEntityError) as too_many:
        chat(client, banking(ROWS[0]["text"]), metadata={f"k{i}": "v" for i in range(1000)})
    assert too_many.value.body["code"] == "validation_error" and "16" in too_many.value.body["message"]  # type: ignore[index]
    assert task_requests(service) == {("banking77", "metadata"): 8, ("banking77", "rule"): 4,
                                      ("default", "metadata"): 2, ("default", "unknown"): 1}
    mags = store(service)
    first = next(iter(ids))
    wait_for(lambda: mags.task_of(first) is not None, timeout=60, what="the first request captured")
    bad = httpx.post(f"{service.url}/v1/feedback", json={"request_id": first, "answer": "card_never_came"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_answer"  # outside the label set

    def drained() -> bool:
        counts = mags.queue_counts()
        return counts.get("queued", 0) + counts.get("running", 0) == 0 and sum(counts.values()) == 15
    wait_for(drained, timeout=900, every=5, what="every captured request debated")
    assert {rid: mags.task_of(rid) for rid in [*ids, *arithmetic]} == {
        **{rid: "banking77" for rid in ids}, **{rid: "default" for rid in arithmetic}}
    debated = mags.list(limit=50, with_graph=True)
    assert all(m.status == "done" for m in debated), [(m.id, m.note) for m in debated if m.status != "done"]
    kinds = {(m.task, m.answer_kind) for m in debated}
    assert kinds == {("banking77", "label"), ("default", "number")}
    held_out = {rid for rid in ids if in_holdout(rid, 0.5)}
    assert {m.request_id for m in debated if m.task == "banking77"} == set(ids) - held_out  # labelled held-out:
    for m in debated:  # no debate needed for their gold, never trained on
        agents = {n.agent for n in m.nodes if n.role == "teacher"}
        assert agents <= ({"bank-a", "bank-b"} if m.task == "banking77" else {"ref-exact", "ref-offbyone"})
        if m.task == "banking77":
            assert m.gold == ids[m.request_id] and m.gold_source == "feedback"
    assert len(mags.eval_slice("banking77", 100)) == len(held_out) > 0

    # A cycle on both tasks, its arithmetic data poisoned: it learns the bank's format and breaks arithmetic. The
    # operator's `distillery train --once` runs it (the service's own trigger is tests/e2e/test_training_loop.py's).
    poisoned = poisoned_mags(mags, 8)
    port = service.url.rsplit(":", 1)[1]
    env = {**os.environ, **service_env(service.data_dir), "DISTILLERY_DATA_DIR": str(service.data_dir),
           "DISTILLERY_STUDENT__MODEL": model_dir, "DISTILLERY_SERVER__PORT": port}
    out = subprocess.run([sys.executable, "-m", "services.cli", "train", "--once"], env=env, capture_output=True,
                         text=True, timeout=1200)
    assert out.returncode == 0 and "not_promoted" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    done = httpx.get(f"{service.url}/admin/jobs", timeout=30).json()["data"][0]
    assert done["trigger"] == "cli" and done["status"] == "succeeded", (done["error"], done["reason"])
    assert done["outcome"] == "not_promoted" and "task default falls" in done["reason"]
    ev = done["metrics"]["eval"]
    cand, base = ev[done["candidate"]], ev[done["incumbent"]]
    print("per task, candidate vs base:", json.dumps({t: (cand["tasks"][t], base["tasks"][t]) for t in cand["tasks"]}))
    assert set(cand["tasks"]) == set(base["tasks"]) == {"default", "banking77"}
    drop = base["tasks"]["default"]["accuracy"] - cand["tasks"]["default"]["accuracy"]
    assert drop > 0.05
    assert cand["tasks"]["banking77"]["n"] == len(held_out)
    # What the candidate learnt on the bank's traffic: to answer with a label alone, not prose.
    learnt, before = cand["tasks"]["banking77"], base["tasks"]["banking77"]
    assert learnt["mean_completion_tokens"] < before["mean_completion_tokens"] / 2

    env = {**os.environ, "DISTILLERY_DATA_DIR": str(service.data_dir)}
    out = subprocess.run([sys.executable, "-m", "services.cli", "jobs"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "banking77" in out.stdout and "task default falls" in out.stdout
    served = httpx.get(f"{service.url}/admin/adapters", timeout=30).json()
    assert not any(a["status"] == "promoted" for a in served["adapters"])
    refused = next(a for a in served["adapters"] if a["version"] == done["candidate"])  # kept, for an operator
    assert refused["status"] == "registered" and refused["note"].startswith("not promoted")
    assert set(poisoned) <= set(refused["lineage"]["mags"])
    # Measured here, on arithmetic questions no cycle saw: the refused version is worse than the base model.
    seen = {p.question for p in one_step("eval", 20) + one_step("train", 2)}
    unseen = [p for p in one_step("eval", 120, seed=7) if p.question not in seen][:40]
    cand_acc, base_acc = accuracy(service, done["candidate"], unseen), accuracy(service, done["incumbent"], unseen)
    print(f"unseen one-step questions: {done['candidate']} {cand_acc:.3f}, base {base_acc:.3f}")
    assert cand_acc < base_acc
