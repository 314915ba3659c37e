"""The server-sent-events response of a generation, which always gives its admission slot back.

Starlette's StreamingResponse leaves its body iterator alone when the client goes away: a body that never started
(the client left before the first frame) never runs its `finally`, so the request's in-flight slot would stay taken
and its generation keep running. This response watches for the client leaving itself, bounds how long one frame
may wait for a client that stopped reading, and always ends with `Served.close`, which finishes the request
(metrics, slot) and aborts the student's generation if it was not done.
"""

from __future__ import annotations

import logging

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from services.gateway.generation import Served

log = logging.getLogger(__name__)


class GenerationStream(StreamingResponse):
    def __init__(self, served: Served, headers: dict[str, str]) -> None:
        assert served.stream is not None and served.close is not None
        super().__init__(served.stream, media_type="text/event-stream", headers=headers)
        self.close = served.close
        self.send_timeout_s = served.send_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_in_time(message: Message) -> None:
            with anyio.fail_after(self.send_timeout_s):
                await send(message)

        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    try:
                        await self.stream_response(send_in_time)
                    except TimeoutError:
                        log.warning("stream dropped: its client read nothing for %ss", self.send_timeout_s)
                    except OSError:
                        pass  # the client went away mid-frame
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                try:
                    await self.listen_for_disconnect(receive)
                except Exception as e:  # the server's receive failed (Ray Serve cancels it once its proxy lost
                    log.debug("stream ended: receive failed with %r", e)  # the client): the client is gone too
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.close()
