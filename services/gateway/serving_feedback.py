"""POST /v1/feedback: a client tells us the correct answer to a request it made (its label for the debate)."""

from __future__ import annotations

import asyncio
from typing import Any

from services.gateway.errors import ApiError
from services.gateway.protocol import FeedbackRequest
from services.store.mags import MagStore


class FeedbackService:
    def __init__(self, store: MagStore | None) -> None:
        self.store = store

    async def record(self, body: FeedbackRequest) -> dict[str, Any] | ApiError:
        if self.store is None:
            return ApiError(404, "Feedback needs the capture queue: set capture.enabled", None, "capture_disabled")
        key = body.request_id or body.id
        if not key:
            return ApiError(422, "Give `request_id` (the x-request-id header of the response) or `id` "
                            "(the completion id)", "request_id", "validation_error")
        applied, request_id = await asyncio.to_thread(self.store.add_label, key, body.answer.strip())
        return {"object": "feedback", "request_id": request_id, "answer": body.answer.strip(), "status": applied}
