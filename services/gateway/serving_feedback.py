"""POST /v1/feedback: a client tells us the correct answer to a request it made (its label for the debate).

Only the key that made the request (or the admin key) may label it, a bounded number of times; the label records
who gave it and whether that labeller is trusted (only trusted labels count in the rollback watch or become gold
without the teachers' agreement). A free-form label (a text or JSON answer, or one for a request of no task) goes
through the capture redactor before it is stored, as the request's own messages do; a number, choice or label
answer is checked against its task instead, so there is nothing free-form left in it to redact."""

from __future__ import annotations

import asyncio
from typing import Any

from services.capture.clean import clean_text
from services.capture.redact import Redactor, build_redactor
from services.config import Settings
from services.gateway.auth import TRUSTED, Principal
from services.gateway.errors import ApiError
from services.gateway.protocol import FeedbackRequest
from services.store.mags import MagStore
from services.tasks.answers import canonical_answer, is_valid

_FREE_FORM = {"text", "json"}


class FeedbackService:
    def __init__(self, store: MagStore | None, settings: Settings, redact: Redactor | None = None) -> None:
        self.store, self.settings = store, settings
        self._redact = redact  # built on the first free-form label (`presidio` takes seconds to load)

    def redact(self, text: str) -> str:
        if self._redact is None:
            self._redact = build_redactor(self.settings.capture)
        return self._redact(text)

    async def record(self, body: FeedbackRequest, principal: Principal) -> dict[str, Any] | ApiError:
        if self.store is None:
            return ApiError(404, "Feedback needs the capture queue: set capture.enabled", None, "capture_disabled")
        key = body.request_id or body.id
        if not key:
            return ApiError(422, "Give `request_id` (the x-request-id header of the response) or `id` "
                            "(the completion id)", "request_id", "validation_error")
        answer = clean_text(body.answer).strip()
        task = await asyncio.to_thread(self.store.task_of, key, principal.key_id)
        if task is not None:
            answer = canonical_answer(answer, self.settings.task(task).spec)
        if task is not None and not is_valid(answer, spec := self.settings.task(task).spec):
            allowed = (f"one of the task's {len(spec.labels)} labels" if spec.type == "label" else
                       "JSON valid against the task's schema" if spec.type == "json" else "an answer")
            return ApiError(400, f"`answer` is not a valid answer for task {task!r}: expected {allowed}", "answer",
                            "invalid_answer")
        if task is None or self.settings.task(task).spec.type in _FREE_FORM:
            answer = await asyncio.to_thread(self.redact, answer)
        applied, request_id = await asyncio.to_thread(
            self.store.add_label, key, answer, key_id=principal.key_id, trusted=TRUSTED in principal.scopes,
            max_relabels=self.settings.capture.max_relabels, max_pending=self.settings.capture.max_pending_labels)
        if applied == "forbidden":
            return ApiError(403, "This request was made with another API key: only its own key (or the admin key) "
                            "may label it", "request_id", "not_your_request")
        if applied == "pending_limit":
            return ApiError(429, f"This key already has {self.settings.capture.max_pending_labels} labels waiting for "
                            "requests that were never captured (capture.max_pending_labels)", "request_id",
                            "pending_label_limit")
        if applied == "relabel_limit":
            return ApiError(409, f"This request was already relabelled {self.settings.capture.max_relabels} times "
                            "(capture.max_relabels)", "request_id", "relabel_limit")
        return {"object": "feedback", "request_id": request_id, "answer": answer, "status": applied}
