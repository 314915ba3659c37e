"""/admin/distillation: pause and resume the whole loop (capture, debates, scheduled training) without a restart.
Serving is untouched; the switch lives in the store, so every replica and process follows it."""

from __future__ import annotations

import asyncio
from typing import Any

from services.gateway.errors import ApiError
from services.store.controls import Controls


class DistillationService:
    def __init__(self, controls: Controls | None) -> None:
        self.controls = controls

    def _missing(self) -> ApiError:
        return ApiError(404, "This deployment has no store to keep the distillation switch in", None,
                        "distillation_unavailable")

    async def state(self) -> dict[str, Any] | ApiError:
        return await asyncio.to_thread(self.controls.state) if self.controls else self._missing()

    async def pause(self, reason: str | None) -> dict[str, Any] | ApiError:
        return await asyncio.to_thread(self.controls.pause, reason) if self.controls else self._missing()

    async def resume(self, reason: str | None) -> dict[str, Any] | ApiError:
        return await asyncio.to_thread(self.controls.resume, reason) if self.controls else self._missing()
