"""POST /v1/feedback's service: a label is checked against its request's task before it is stored (real store)."""

from __future__ import annotations

import asyncio

import pytest

from services.config import Settings
from services.gateway.auth import LABELLER, TRUSTED, Principal
from services.gateway.errors import ApiError
from services.gateway.protocol import FeedbackRequest
from services.gateway.serving_feedback import FeedbackService
from services.store.debates import CaptureRow, LabelRow
from services.store.mags import MagStore


@pytest.fixture
def service(store: MagStore) -> FeedbackService:
    settings = Settings(tasks=[
        {"name": "intent", "answer_type": "label", "labels": ["card_arrival", "card_linking"]},
        {"name": "extract", "answer_type": "json",
         "json_schema": {"type": "object", "required": ["amount"], "properties": {"amount": {"type": "number"}}}},
    ])
    for rid, task in (("r-intent", "intent"), ("r-extract", "extract"), ("r-default", "default")):
        store.enqueue([{"request_id": rid, "response_id": f"chatcmpl-{rid}", "question": "q", "task": task,
                        "messages": [{"role": "user", "content": "q"}]}])
    return FeedbackService(store, settings)


def record(service: FeedbackService, **body: str) -> dict | ApiError:
    anonymous = Principal("anonymous", frozenset({LABELLER, TRUSTED}))
    return asyncio.run(service.record(FeedbackRequest(**body), anonymous))


def stored(store: MagStore) -> tuple[dict[str, str | None], dict[str, str]]:
    with store.db.session() as s:
        return ({r.request_id: r.label for r in s.query(CaptureRow)},
                {r.request_id: r.answer for r in s.query(LabelRow)})


def test_an_answer_outside_the_tasks_label_set_is_refused_and_nothing_stored(service, store) -> None:
    before = stored(store)
    for key in ({"request_id": "r-intent"}, {"id": "chatcmpl-r-intent"}):
        err = record(service, **key, answer="card_delivery_estimate")
        assert isinstance(err, ApiError) and (err.status, err.code, err.param) == (400, "invalid_answer", "answer")
        assert "task 'intent'" in err.message and "one of the task's 2 labels" in err.message
    assert isinstance(record(service, request_id="r-intent", answer="card arrival or card linking"), ApiError)
    assert stored(store) == before


def test_a_label_of_the_set_is_stored(service, store) -> None:
    assert record(service, request_id="r-intent", answer=" card_arrival\n") == {
        "object": "feedback", "request_id": "r-intent", "answer": "card_arrival", "status": "queued"}
    assert stored(store)[0]["r-intent"] == "card_arrival"
    # Another spelling of a label of the set is stored as the set writes it.
    assert record(service, id="chatcmpl-r-intent", answer="Card Linking")["answer"] == "card_linking"
    assert stored(store)[0]["r-intent"] == "card_linking"


def test_a_json_tasks_answer_must_satisfy_its_schema(service, store) -> None:
    err = record(service, request_id="r-extract", answer='{"amount": "ten"}')
    assert isinstance(err, ApiError) and err.code == "invalid_answer" and "schema" in err.message
    ok = record(service, request_id="r-extract", answer='{"amount": 10}')
    assert ok["status"] == "queued" and ok["answer"] == '{"amount":10}'  # canonical JSON
    assert stored(store)[0]["r-extract"] == '{"amount":10}'
    assert record(service, request_id="r-default", answer="anything at all")["status"] == "queued"  # text


def test_a_request_not_captured_yet_is_accepted_as_pending(service, store) -> None:
    out = record(service, request_id="r-later", answer="whatever the client says")
    assert out == {"object": "feedback", "request_id": "r-later", "answer": "whatever the client says",
                   "status": "pending"}
    assert stored(store)[1] == {"r-later": "whatever the client says"}


def test_without_a_store_or_a_key_feedback_is_refused(store) -> None:
    assert isinstance(record(FeedbackService(store, Settings()), answer="5"), ApiError)
    off = record(FeedbackService(None, Settings()), request_id="r", answer="5")
    assert isinstance(off, ApiError) and off.status >= 400
