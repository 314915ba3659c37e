"""The loop's second half on the real model: seeded MAGs -> trees -> SFT -> T-DPO (Ray Train) -> evaluation
through the service -> gate -> promotion (hot swap); a killed job changing nothing. (A worse candidate refused by
the gate, started by `distillery train --once`, is tests/e2e/test_tasks.py's.)

One service, its scheduler's periodic trigger off (cycles start by POST /admin/train), small training and
evaluation sizes so CI stays quick (`distillery experiment` measures the method at size). The tests do not take
the cycle's word for what it learnt: after the cycle they ask questions no cycle saw, through the `openai` client,
of the new version and of the base model, and grade the replies themselves (the last number in the reply); T-DPO's
effect is measured on held-out preference pairs with the stage adapters loaded in this process.

What is simulated, and why: the MAGs come from real debates (the engine, three reference teachers over HTTP) whose
student is a reference agent erring on 70% of its answers, not the served 135M model, and the problems are the
suite's one-step problems. In the 12 CPU steps a test can afford, the student learns those (the answer format
and one operation): +0.15 on the gate's 20 questions, 0.575 vs 0.150 on 40 unseen ones. On the full suite the
gain is a coin flip at this size (0.125 vs 0.100 measured here); with the served student debating its own mistakes
(24 questions sent as traffic with labels), one run measured no gain (0.200 vs 0.225), which a test cannot assert.
`distillery experiment` runs the served student's own debates at size.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from ray_jobs.tdpo.packing import Tree
from ray_jobs.trees.build import build
from ray_jobs.trees.encode import Encoder
from services.store.db import Database
from services.store.mags import MagStore
from services.student.tokenizer import PromptTokenizer
from services.tasks.arithmetic import Problem
from tests.conftest import Service, start_service, stop_service
from tests.http_servers import wait_for
from tests.ray_jobs.mags import debate_mags, one_step

pytestmark = pytest.mark.e2e

# The service is idle while a cycle trains: its worker takes both cores, and short rows need no activation
# checkpointing (the same gradients, without recomputing the forward pass). Shared with tests/e2e/test_tasks.py.
FAST_TRAINING_ENV = {"DISTILLERY_TRAINING__TORCH_THREADS": "2", "DISTILLERY_TRAINING__GRADIENT_CHECKPOINTING": "false"}

TRAIN_ENV = {
    "DISTILLERY_CAPTURE__ENABLED": "false",
    "DISTILLERY_TRAINING__ENABLED": "false",
    "DISTILLERY_TRAINING__MIN_MAGS": "4",
    "DISTILLERY_TRAINING__MAX_PROMPT_TOKENS": "512",
    "DISTILLERY_TRAINING__MAX_COMPLETION_TOKENS": "160",
    **FAST_TRAINING_ENV,
    "DISTILLERY_TRAINING__SFT__BATCH_SIZE": "4",
    "DISTILLERY_TRAINING__SFT__MAX_STEPS": "12",
    "DISTILLERY_TRAINING__SFT__EPOCHS": "3",
    "DISTILLERY_TRAINING__TDPO__TREES_PER_STEP": "2",
    "DISTILLERY_TRAINING__TDPO__MAX_STEPS": "2",
    "DISTILLERY_TRAINING__EVAL__MAX_TOKENS": "96",
    "DISTILLERY_TRAINING__GATE__MIN_ACCURACY_GAIN": "0.05",
    "DISTILLERY_TRAINING__GATE__MAX_TOKENS_INCREASE": "0.5",
}
JOB_TIMEOUT_S = 900


def eval_task(eval_set: Path) -> dict[str, str]:
    """The one task, measured on the 20-question golden file (one task: no other task's tolerance to protect)."""
    return {"DISTILLERY_TASKS": json.dumps([{"name": "default", "answer_type": "number", "eval": {
        "holdout": 0, "golden": str(eval_set), "golden_n": 20, "tolerance": 1.0}}])}


@pytest.fixture(scope="module")
def service(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("training")
    db = Database(f"sqlite:///{data_dir / 'distillery.db'}")
    db.create_all()
    seeded = debate_mags(MagStore(db), 24, simple=True)
    eval_set = data_dir / "eval.jsonl"
    golden = one_step("eval", 20)
    eval_set.write_text("".join(json.dumps({"question": p.question, "answer": p.answer}) + "\n" for p in golden))
    svc = start_service(model_dir, data_dir, {**TRAIN_ENV, **eval_task(eval_set)})
    svc.seeded = seeded  # type: ignore[attr-defined]
    seen = {p.question for p in golden + one_step("train", 24)}  # the gate's set and the training debates
    svc.unseen = [p for p in one_step("eval", 120, seed=7) if p.question not in seen][:40]  # type: ignore[attr-defined]
    try:
        yield svc
    finally:
        stop_service(svc)


def job(svc: Service, job_id: int) -> dict[str, Any]:
    r = httpx.get(f"{svc.url}/admin/jobs/{job_id}", timeout=30, headers=svc.admin_headers())
    assert r.status_code == 200, r.text
    return r.json()


def wait_job(svc: Service, job_id: int, timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
    wait_for(lambda: job(svc, job_id)["status"] != "running", timeout=timeout, every=3,
             what=f"training job {job_id} to end")
    return job(svc, job_id)


def served_adapter(svc: Service) -> str:
    client = openai.OpenAI(base_url=f"{svc.url}/v1", api_key=svc.admin_key or "none")
    raw = client.chat.completions.with_raw_response.create(
        model="student", messages=[{"role": "user", "content": "Mia has 5 apples. She buys 3 more apples. "
                                    "How many apples does Mia have now?"}], max_tokens=16, temperature=0)
    assert raw.parse().choices[0].message.content is not None
    return raw.headers["x-distillery-adapter"]


def adapters(svc: Service) -> dict[str, Any]:
    r = httpx.get(f"{svc.url}/admin/adapters", timeout=30, headers=svc.admin_headers())
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def accuracy(svc: Service, model: str, problems: list[Problem]) -> float:
    """The share of `problems` that `model` answers right, graded here: the last number of the reply."""
    client = openai.OpenAI(base_url=f"{svc.url}/v1", api_key="none", max_retries=5)

    def right(p: Problem) -> bool:
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": p.question}],
                                               max_tokens=96, temperature=0).choices[0].message.content or ""
        numbers = re.findall(r"-?\d+(?:\.\d+)?", reply.replace(",", ""))
        return bool(numbers) and float(numbers[-1]) == float(p.answer)

    with ThreadPoolExecutor(16) as pool:
        return sum(pool.map(right, problems)) / len(problems)


def held_out_trees(model_dir: str, tmp: Path) -> list[Tree]:
    """Preference trees from debates on training problems no cycle trained on, encoded as the cycle encodes."""
    db = Database(f"sqlite:///{tmp / 'held-out.db'}")
    db.create_all()
    store = MagStore(db)
    debate_mags(store, 4, seed=3, simple=True)
    mags = store.list(limit=4, with_graph=True, newest_first=False)
    assert not {m.question for m in mags} & {p.question for p in one_step("train", 24)}
    data = build(mags)
    return Encoder(PromptTokenizer(model_dir), 512, 160).trees(data.trees, 1.0, data.counts)


def mean_margin(model_dir: str, adapter: Path, trees: list[Tree]) -> float:
    """Mean over the trees' pairs of log p(chosen) - log p(rejected), summed over completion tokens."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                                      str(adapter)).eval()

    def logps(prompt: list[int], children: list[list[int]]) -> list[float]:
        """Each child's summed token log-prob after the prompt, in one padded forward pass."""
        width = len(prompt) + max(map(len, children))
        ids = torch.zeros(len(children), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, c in enumerate(children):
            ids[i, :len(prompt) + len(c)] = torch.tensor(prompt + c)
            mask[i, :len(prompt) + len(c)] = 1
        with torch.no_grad():
            scores = model(input_ids=ids, attention_mask=mask).logits[:, :-1].log_softmax(-1)
        token = scores.gather(2, ids[:, 1:, None])[..., 0]
        return [token[i, len(prompt) - 1:len(prompt) - 1 + len(c)].sum().item() for i, c in enumerate(children)]

    margins = []
    for t in trees:
        lp = logps(t.prompt_ids, t.children)
        margins += [lp[c] - lp[r] for c, r in t.pairs]
    return sum(margins) / len(margins)


def test_a_cycle_trains_evaluates_and_promotes(service: Service) -> None:
    base = served_adapter(service)
    r = httpx.post(f"{service.url}/admin/train", timeout=60)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    second = httpx.post(f"{service.url}/admin/train", timeout=60)  # never two runs at once
    assert second.status_code == 409 and second.json()["error"]["code"] == "job_running"

    done = wait_job(service, job_id)
    assert done["status"] == "succeeded", (done["error"], done["reason"])
    assert done["outcome"] == "promoted", done["reason"]
    assert done["candidate"] == "student@v1" and done["incumbent"] == base
    assert done["data"]["mags"] == len(service.seeded) and done["data"]["tree_pairs"] > 0  # type: ignore[attr-defined]
    train = done["metrics"]["train"]
    assert train["sft_steps"] == min(12, math.ceil(done["data"]["sft_examples"] * 3 / 4))  # 3 epochs, batch 4
    assert train["tdpo_steps"] == 2 and train["stage"] == "tdpo" and train["sft_examples"] > 24
    ev = done["metrics"]["eval"]
    assert ev["student@v1"]["accuracy"] >= ev[base]["accuracy"] + 0.1  # two of the 20 questions

    assert served_adapter(service) == "student@v1"  # the hot swap happened
    # Measured here, on questions no cycle saw: `student` (now v1) against the base model.
    trained, untrained = accuracy(service, "student", service.unseen), accuracy(service, base, service.unseen)
    print(f"unseen one-step questions: student@v1 {trained:.3f}, base {untrained:.3f}")
    assert trained >= untrained + 0.2  # eight of the 40 questions
    service.first_job = job_id  # type: ignore[attr-defined]
    v1 = next(a for a in adapters(service)["adapters"] if a["version"] == "student@v1")
    assert v1["status"] == "promoted"
    assert sorted(v1["lineage"]["mags"]) == sorted(service.seeded)  # type: ignore[attr-defined]
    assert len(v1["lineage"]["trees"]) == done["data"]["trees"] and v1["metrics"]["eval"]["n"] == 20

    metrics = httpx.get(f"{service.url}/metrics", timeout=30).text
    assert 'distillery_training_runs{outcome="promoted"} 1.0' in metrics
    assert f'distillery_eval_accuracy{{version="student@v1"}} {ev["student@v1"]["accuracy"]}' in metrics


def test_tdpo_raises_the_preference_margin_over_sft_on_held_out_pairs(service: Service, model_dir: str,
                                                                      tmp_path: Path) -> None:
    trees = held_out_trees(model_dir, tmp_path)
    assert sum(len(t.pairs) for t in trees) >= 8
    job_dir = service.data_dir / "jobs" / f"job-{service.first_job}"  # type: ignore[attr-defined]
    sft, tdpo = (mean_margin(model_dir, job_dir / f"adapter-{stage}", trees) for stage in ("sft", "tdpo"))
    print(f"held-out pairs: mean chosen-over-rejected log-prob margin SFT {sft:.3f}, T-DPO {tdpo:.3f}")
    assert tdpo > sft


def test_a_killed_job_changes_nothing_served(service: Service) -> None:
    before = adapters(service)
    r = httpx.post(f"{service.url}/admin/train", timeout=60)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    wait_for(lambda: job(service, job_id)["phase"] == "training", timeout=300, every=1,
             what="the job to reach training")
    time.sleep(5)  # mid-run: Ray Train is loading the model or stepping
    pid = job(service, job_id)["pid"]
    os.killpg(pid, signal.SIGKILL)  # the job process and everything in its group

    failed = wait_job(service, job_id, timeout=120)
    assert failed["status"] == "failed" and failed["outcome"] == "failed"
    assert "SIGKILL" in failed["error"] or "died" in failed["error"] or "exited" in failed["error"]
    after = adapters(service)
    assert [a["version"] for a in after["adapters"]] == [a["version"] for a in before["adapters"]]
    assert after["promoted"] == before["promoted"] == "student@v1"
    assert served_adapter(service) == "student@v1"
    # and the service trains again afterwards: the failed run released the one-job lock
    again = httpx.post(f"{service.url}/admin/train", timeout=60)
    assert again.status_code == 202, again.text
    httpx.post(f"{service.url}/admin/jobs/{again.json()['id']}/cancel", timeout=60).raise_for_status()
    assert job(service, again.json()["id"])["error"] == "cancelled by an operator"
