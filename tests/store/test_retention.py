"""Retention on a real store (SQLite and Postgres): old rows of each kind go, with their files; nothing in flight,
nothing referenced, and neither the promoted adapter version nor its rollback target is touched."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sqlalchemy import select, text, update

from services.config import RetentionConfig, Settings
from services.registry import AdapterRegistry, RegistryError
from services.registry.storage import LocalStorage
from services.scheduler.retention import Retention
from services.store.db import Database
from services.store.debates import CaptureRow, DebateRow, EdgeRow, LabelRow, NodeRow, utcnow
from services.store.jobs import JobRow, JobStore
from services.store.mags import Edge, MagStore, Node

OLD = utcnow() - timedelta(days=400)


def tiny_adapter(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                            "target_modules": ["q_proj"]}))
    torch.manual_seed(seed)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": torch.randn(2, 8), f"{prefix}.lora_B.weight": torch.randn(8, 2)},
              str(folder / "adapter_model.safetensors"))
    return folder


def capture(store: MagStore, request_id: str, *, status: str, created_at=None) -> int:
    row = {"request_id": request_id, "question": f"q {request_id}", "messages": [], "status": status}
    store.enqueue([{**row, "created_at": created_at} if created_at else row])
    with store.db.session() as s:
        return s.scalar(select(CaptureRow.id).where(CaptureRow.request_id == request_id))


def mag(store: MagStore, capture_id: int | None, *, status: str = "done", finished_at=None) -> int:
    debate = store.start_debate(question="What is 2+2?", answer_kind="number", prompt_version="test",
                                capture_id=capture_id, status=status, finished_at=finished_at,
                                created_at=finished_at or utcnow())
    nodes = [Node(round=0, agent=a, role="teacher", kind="answer", text="4", status="ok") for a in ("a", "b")]
    store.add_nodes(debate, nodes)
    store.add_edges(debate, [Edge(nodes[0].id, nodes[1].id, "saw")])  # type: ignore[arg-type]
    if capture_id is not None:
        store.attach_debate(capture_id, debate)
    return debate


def finished_job(jobs: JobStore, settings: Settings, finished_at) -> int:
    job = jobs.start("cli")
    jobs.finish(job, status="succeeded", outcome="not_promoted", phase="done")
    with jobs.db.session() as s:
        s.execute(update(JobRow).where(JobRow.id == job).values(finished_at=finished_at))
    folder = settings.jobs_dir / f"job-{job}"
    folder.mkdir(parents=True)
    (folder / "job.log").write_text("trained")
    return job


def test_purge_deletes_exactly_what_is_past_retention_and_the_store_keeps_working(db_url, tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILLERY_CONFIG", raising=False)
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, retention=RetentionConfig(
        captures_days=30, mags_days=90, jobs_days=30, adapter_versions_keep=1))
    db = Database(db_url)
    db.create_all()
    store, jobs = MagStore(db), JobStore(db)

    old_done = capture(store, "old-done", status="done", created_at=OLD)
    old_failed = capture(store, "old-failed", status="failed", created_at=OLD)
    old_queued = capture(store, "old-queued", status="queued", created_at=OLD)  # in flight: kept however old
    old_running = capture(store, "old-running", status="running", created_at=OLD)
    new_done = capture(store, "new-done", status="done")
    store.add_label("never-captured-old", "4")
    store.add_label("never-captured-new", "5")
    with db.session() as s:
        s.execute(update(LabelRow).where(LabelRow.request_id == "never-captured-old").values(created_at=OLD))

    old_mag = mag(store, new_done, finished_at=OLD)  # an old debate of a recent capture: the capture forgets it
    kept_mag = mag(store, old_done)  # a recent debate of an old capture: it forgets the capture, keeps its graph
    old_running_mag = mag(store, None, status="running", finished_at=None)
    with db.session() as s:
        s.execute(update(DebateRow).where(DebateRow.id == old_running_mag).values(created_at=OLD))

    old_job = finished_job(jobs, settings, OLD)
    new_job = finished_job(jobs, settings, utcnow())

    registry = AdapterRegistry(db, LocalStorage(settings.adapters_dir), served_name="student", base_model="base",
                               base_model_dir=None, max_rank=16)
    versions = [registry.publish(tiny_adapter(tmp_path / f"a{i}", i)) for i in range(1, 6)]
    for v in versions[:3]:
        registry.promote(v.name)  # v3 served, v2 its rollback target, v1 superseded
    registry.rollback()  # v2 served again, v1 its rollback target; v3 rolled back
    # v5 is the newest (kept: adapter_versions_keep=1), v4 a candidate the gate refused: v3 and v4 go.

    retention = Retention(settings, db, registry)
    dry = retention.run(dry_run=True).as_dict()
    assert dry["captures"] == [old_done, old_failed] and dry["labels"] == ["never-captured-old"]
    assert dry["mags"] == [old_mag] and dry["jobs"] == [old_job]
    assert dry["job_folders"] == [str(settings.jobs_dir / f"job-{old_job}")]
    assert dry["adapter_versions"] == ["student@v3", "student@v4"]
    assert (settings.jobs_dir / f"job-{old_job}").is_dir() and store.get(old_mag) is not None  # nothing deleted

    done = retention.run().as_dict()
    assert {k: v for k, v in done.items() if k != "mags_skipped"} == {
        k: v for k, v in dry.items() if k != "mags_skipped"}

    with db.session() as s:
        assert set(s.scalars(select(CaptureRow.id))) == {old_queued, old_running, new_done}
        assert list(s.scalars(select(LabelRow.request_id))) == ["never-captured-new"]
        assert set(s.scalars(select(DebateRow.id))) == {kept_mag, old_running_mag}
        assert not list(s.scalars(select(NodeRow.id).where(NodeRow.debate_id == old_mag)))
        assert not list(s.scalars(select(EdgeRow.id).where(EdgeRow.debate_id == old_mag)))
        assert s.get(CaptureRow, new_done).debate_id is None  # it pointed at the deleted MAG
        assert s.get(DebateRow, kept_mag).capture_id is None  # it pointed at the deleted capture
        assert set(s.scalars(select(JobRow.id))) == {new_job}
        if db_url.startswith("sqlite"):
            assert s.execute(text("PRAGMA foreign_key_check")).all() == []
    kept = store.get(kept_mag)
    assert kept is not None and len(kept.nodes) == 2 and len(kept.edges) == 1  # its graph whole
    assert not (settings.jobs_dir / f"job-{old_job}").exists() and (settings.jobs_dir / f"job-{new_job}").is_dir()

    status = {v.name: v.status for v in registry.list()}  # a purged version is served (and listed) no more
    assert status == {"student@v1": "superseded", "student@v2": "promoted", "student@v5": "registered"}
    for gone in ("student@v3", "student@v4"):
        with pytest.raises(RegistryError):
            registry.get(gone)
    for v in versions:
        assert Path(v.path).is_dir() == (v.name not in {"student@v3", "student@v4"})
    assert registry.rollback().name == "student@v1"  # the rollback target survived, files and all
    assert registry.publish(tiny_adapter(tmp_path / "a6", 6)).name == "student@v6"  # numbers never reused

    # The store still works: a new request is queued and claimed, the MAGs read back.
    capture(store, "after-purge", status="queued")
    assert {i.request_id for i in store.claim("w", 10, 60)} == {"old-queued", "after-purge"}
    assert {m.id for m in store.list()} == {kept_mag, old_running_mag}
    # Now v1 is served (its target: the base model) and v6 the newest: v2 (rolled back) and v5 go, nothing else.
    again = retention.run()
    assert again.adapter_versions == ["student@v2", "student@v5"] and again.deleted() == 2
    assert registry.promoted().name == "student@v1" and Path(registry.promoted().path).is_dir()


def test_no_mag_or_adapter_version_is_purged_while_a_training_job_runs(db_url, tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILLERY_CONFIG", raising=False)
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url,
                        retention=RetentionConfig(adapter_versions_keep=1))
    db = Database(db_url)
    db.create_all()
    store = MagStore(db)
    old = mag(store, None, finished_at=OLD)
    registry = AdapterRegistry(db, LocalStorage(settings.adapters_dir), served_name="student", base_model="base",
                               base_model_dir=None, max_rank=16)
    for i in range(3):
        registry.publish(tiny_adapter(tmp_path / f"a{i}", i))
    running = JobStore(db).start("schedule")

    report = Retention(settings, db, registry).run()
    assert report.store.mags == [] and report.store.mags_skipped == "a training job is running"
    assert report.adapter_versions == [] and store.get(old) is not None
    assert report.store.jobs == [] and JobStore(db).get(running).status == "running"  # never a running job
    JobStore(db).finish(running, status="succeeded", outcome="skipped", phase="done")
    report = Retention(settings, db, registry).run()
    assert report.store.mags == [old] and report.adapter_versions == ["student@v1", "student@v2"]


@pytest.mark.parametrize("days", [0, -1])
def test_a_retention_period_must_be_positive(days):
    with pytest.raises(ValueError):
        RetentionConfig(captures_days=days)


def test_every_version_a_rollback_can_return_to_and_every_labelled_one_is_kept(db_url, tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILLERY_CONFIG", raising=False)
    settings = Settings(data_dir=tmp_path, database_url=db_url, retention=RetentionConfig(adapter_versions_keep=1))
    db = Database(db_url)
    db.create_all()
    registry = AdapterRegistry(db, LocalStorage(settings.adapters_dir), served_name="student", base_model="base",
                               base_model_dir=None, max_rank=16)
    versions = [registry.publish(tiny_adapter(tmp_path / f"a{i}", i)) for i in range(1, 5)]
    canary = registry.publish(tiny_adapter(tmp_path / "a5", 5), label="canary")
    newest = registry.publish(tiny_adapter(tmp_path / "a6", 6))
    for v in versions[:3]:
        registry.promote(v.name)  # the stack: v1 <- v2 <- v3 (served); v4 never promoted
    assert Retention(settings, db, registry).run().adapter_versions == ["student@v4"]
    assert registry.get("canary").name == canary.name and Path(canary.path).is_dir()
    assert registry.rollback().name == "student@v2" and registry.rollback().name == "student@v1"  # two deep
    assert Path(registry.promoted().path).is_dir() and Path(newest.path).is_dir()
