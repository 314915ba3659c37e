"""The worker drains the capture queue through real debates; a killed worker's debates are resumed by re-running."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from services.debate.engine import DebateEngine
from services.debate.worker import DebateWorker
from services.store.controls import Controls
from services.store.debates import CaptureRow, utcnow
from services.tasks.arithmetic import generate
from tests.debate.conftest import agent, debate_config, reference_agents, run_briefly
from tests.http_servers import Script, scripted_app, serve_app

PROBLEMS = generate("eval", 3)


async def test_worker_debates_every_queued_request_and_a_dead_workers_item_is_rerun(store, reference_url):
    store.enqueue([{"request_id": f"r{i}", "question": p.question, "messages": []} for i, p in enumerate(PROBLEMS)])
    # A worker that died mid-debate: item r0 claimed, half a debate recorded, lease lapsed.
    [dead] = store.claim("dead-worker", 1, 60)
    did = store.start_debate(capture_id=dead.id, question=dead.question, answer_kind="number",
                             prompt_version="v", agents=[], status="running")
    store.attach_debate(dead.id, did)
    with store.db.session() as s:
        s.execute(update(CaptureRow).values(lease_until=utcnow() - timedelta(seconds=1)))
    cfg = debate_config(concurrency=2)
    with serve_app(scripted_app(lambda p: Script("### Answer\nx\nFinal answer: 0"))) as surl:
        engine = DebateEngine(agent("student", f"{surl}/v1", role="student"), reference_agents(reference_url),
                              cfg, store)
        worker = DebateWorker(engine, store, cfg, owner="w1")
        assert store.reclaim_expired(cfg.max_attempts) == (1, 0)
        await worker.drain()
    assert store.queue_counts() == {"done": 3}
    assert store.get(did).status == "interrupted"
    done = store.list(status="done")
    assert sorted(m.request_id for m in done) == ["r0", "r1", "r2"]
    # Two exact teachers agree with accepted rationales: the teachers' consensus, usable, student wrong.
    assert all(m.gold_source == "consensus" and m.usable and m.student_correct_first is False for m in done)
    assert store.usable_since(None)[0].nodes  # the training loop's query returns whole graphs


async def test_a_paused_worker_claims_nothing(store):
    store.enqueue([{"request_id": "r0", "question": PROBLEMS[0].question, "messages": []}])
    controls = Controls(store.db, cache_s=0)
    controls.pause("budget")
    worker = DebateWorker(None, store, debate_config(poll_s=0.05), owner="w1", controls=controls)  # type: ignore[arg-type]
    await run_briefly(worker)
    assert store.queue_counts() == {"queued": 1} and not worker.running
