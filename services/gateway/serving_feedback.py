"""POST /v1/feedback: a client tells us the correct answer to a request it made (its label for the debate)."""

from __future__ import annotations

import asyncio
from typing import Any

from services.config import Settings
from services.gateway.errors import ApiError
from services.gateway.protocol import FeedbackRequest
from services.store.mags import MagStore
from services.tasks.answers import canonical_answer, is_valid


class FeedbackService:
    def __init__(self, store: MagStore | None, settings: Settings) -> None:
        self.store, self.settings = store, settings

    async def record(self, body: FeedbackRequest) -> dict[str, Any] | ApiError:
        if self.store is None:
            return ApiError(404, "Feedback needs the capture queue: set capture.enabled", None, "capture_disabled")
        key = body.request_id or body.id
        if not key:
            return ApiError(422, "Give `request_id` (the x-request-id header of the response) or `id` "
                            "(the completion id)", "request_id", "validation_error")
        answer = body.answer.strip()
        task = await asyncio.to_thread(self.store.task_of, key)
        if task is not None:
            answer = canonical_answer(answer, self.settings.task(task).spec)
        if task is not None and not is_valid(answer, spec := self.settings.task(task).spec):
            allowed = (f"one of the task's {len(spec.labels)} labels" if spec.type == "label" else
                       "JSON valid against the task's schema" if spec.type == "json" else "an answer")
            return ApiError(400, f"`answer` is not a valid answer for task {task!r}: expected {allowed}", "answer",
                            "invalid_answer")
        applied, request_id = await asyncio.to_thread(self.store.add_label, key, answer)
        return {"object": "feedback", "request_id": request_id, "answer": answer, "status": applied}
