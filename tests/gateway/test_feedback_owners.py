"""POST /v1/feedback on the real gateway app over HTTP: only keys with the `labeller` scope may post, only on their
own requests (the admin key on any), a bounded number of times; each refusal leaves the stored labels as they were
and the service answering."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from services.config import Settings
from services.gateway.auth import key_id_of
from services.store.db import Database
from services.store.debates import CaptureRow
from services.store.mags import MagStore
from tests.gateway_app import Gateway, serve_gateway

PLAIN, ALICE, BOB, ADMIN = "sk-plain-fb", "sk-alice-fb", "sk-bob-fb", "sk-admin-fb"


def queue(store: MagStore, rid: str, key: str, task: str = "default") -> None:
    """A request `key` made, as the capture sink queues it."""
    store.enqueue([{"request_id": rid, "question": "What is 2 + 3?", "task": task,
                    "key_id": key if key == "anonymous" else key_id_of(key),
                    "messages": [{"role": "user", "content": "What is 2 + 3?"}]}])


def labels(store: MagStore) -> dict[str, tuple]:
    with store.db.session() as s:
        return {r.request_id: (r.label, r.label_key_id, r.label_trusted) for r in s.scalars(select(CaptureRow))}


def post(g: Gateway, key: str | None, rid: str, answer: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{g.url}/v1/feedback", json={"request_id": rid, "answer": answer}, headers=headers,
                      timeout=30)


@pytest.fixture
def keyed(tmp_path: Path, model_dir: str) -> Iterator[tuple[Gateway, MagStore]]:
    intent = {"name": "intent", "answer_type": "label", "labels": ["card_arrival", "card_linking"]}
    settings = Settings(data_dir=tmp_path, capture={"max_relabels": 2}, tasks=[intent], server={
        "api_keys": [PLAIN], "labeller_keys": [ALICE, BOB], "admin_key": ADMIN,
        "trusted_labellers": [key_id_of(BOB)]})
    with serve_gateway(settings, model_dir, feedback=True) as g:
        store = MagStore(Database(settings.db_url))
        queue(store, "r-alice", ALICE)
        queue(store, "r-bob", BOB)
        queue(store, "r-intent", ALICE, task="intent")
        yield g, store


def test_a_label_on_another_keys_request_is_refused_and_not_stored(keyed) -> None:
    g, store = keyed
    for rid, answer in (("r-alice", "6"), ("r-intent", "not one of its labels"), ("r-intent", "card_arrival")):
        r = post(g, BOB, rid, answer)  # refused alike: nothing is told about another key's request, not even its task
        assert r.status_code == 403 and r.json()["error"]["code"] == "not_your_request", (rid, answer)
    r = post(g, PLAIN, "r-alice", "6")  # a client key without the labeller scope
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    assert post(g, None, "r-alice", "6").status_code == 401
    assert labels(store)["r-alice"] == labels(store)["r-intent"] == (None, None, None)
    assert post(g, ALICE, "r-intent", "not one of its labels").status_code == 400  # its owner is told
    assert post(g, ALICE, "r-intent", "Card Arrival\x00").json()["answer"] == "card_arrival"
    # The owner labels it (untrusted: not listed), the admin may label anything (trusted).
    assert post(g, ALICE, "r-alice", "5").json()["status"] == "queued"
    assert labels(store)["r-alice"] == ("5", key_id_of(ALICE), False)
    assert post(g, ADMIN, "r-bob", "5").status_code == 202
    assert post(g, BOB, "r-bob", "5").status_code == 202
    assert labels(store)["r-bob"] == ("5", key_id_of(BOB), True)
    assert httpx.get(f"{g.url}/v1/models", headers={"Authorization": f"Bearer {ALICE}"}).status_code == 200


def test_a_relabel_flood_is_bounded(keyed) -> None:
    g, store = keyed
    codes = [post(g, ALICE, "r-alice", str(5 + i % 2)).status_code for i in range(12)]
    assert codes == [202, 202, 202] + [409] * 9  # the first label, then capture.max_relabels=2
    assert post(g, ALICE, "r-alice", "5").json()["error"]["code"] == "relabel_limit"
    assert labels(store)["r-alice"] == ("5", key_id_of(ALICE), False)  # the last accepted label stands
    assert store.queue_counts() == {"queued": 3}
    assert post(g, BOB, "r-bob", "5").status_code == 202  # other requests are labelled as usual


def test_without_keys_on_loopback_everyone_may_label(tmp_path: Path, model_dir: str) -> None:
    settings = Settings(data_dir=tmp_path)
    with serve_gateway(settings, model_dir, feedback=True) as g:
        store = MagStore(Database(settings.db_url))
        store.enqueue([{"request_id": "r1", "question": "q", "key_id": "anonymous", "messages": []}])
        assert post(g, None, "r1", "5").json()["status"] == "queued"
        assert labels(store)["r1"] == ("5", "anonymous", True)


def test_a_free_form_label_is_redacted_before_it_is_stored(tmp_path: Path, model_dir: str) -> None:
    reply, total = {"name": "reply", "answer_type": "text"}, {"name": "total", "answer_type": "number"}
    settings = Settings(data_dir=tmp_path, tasks=[reply, total])
    with serve_gateway(settings, model_dir, feedback=True) as g:
        store = MagStore(Database(settings.db_url))
        queue(store, "r-text", "anonymous", task="reply")
        queue(store, "r-number", "anonymous", task="total")
        secret = "Write to jane.doe@example.com, key sk-proj-4f9c2b7e1a6d8c3b5e0f9a2d7c4b1e6f"
        assert post(g, None, "r-text", secret).status_code == 202
        stored = labels(store)["r-text"][0]
        assert "jane.doe@example.com" not in stored and "sk-proj-4f9c" not in stored and stored.startswith("Write to")
        assert post(g, None, "r-number", "1234567").status_code == 202  # a number answer is checked, not redacted
        assert labels(store)["r-number"][0] == "1234567"
