"""Which adapter versions are in the engine, how many requests run on each, and what `student` points to.

Each version `student@vN` maps to vLLM lora_int_id N, unique forever because versions are immutable. A version
is unloaded only once no request runs on it, so a swap never changes the weights under a running request.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class Loaded:
    name: str
    number: int
    path: str
    inflight: int = 0


class AdapterSlots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._loaded: OrderedDict[int, Loaded] = OrderedDict()  # LRU order: oldest first
        self._idle = asyncio.Condition()
        self.promoted: int | None = None  # number of the version `student` resolves to; None = base

    def get(self, number: int) -> Loaded | None:
        slot = self._loaded.get(number)
        if slot is not None:
            self._loaded.move_to_end(number)
        return slot

    def add(self, slot: Loaded) -> None:
        self._loaded[slot.number] = slot

    def remove(self, number: int) -> None:
        self._loaded.pop(number, None)

    def names(self) -> list[Loaded]:
        return sorted(self._loaded.values(), key=lambda s: s.number)

    def evictable(self) -> Loaded | None:
        """Least recently used version that may leave to make room: not promoted, nothing running on it."""
        if len(self._loaded) < self.capacity:
            return None
        for slot in self._loaded.values():
            if slot.number != self.promoted and slot.inflight == 0:
                return slot
        return None

    def acquire(self, number: int) -> None:
        self._loaded[number].inflight += 1

    async def release(self, number: int) -> None:
        slot = self._loaded.get(number)
        if slot is not None:
            slot.inflight -= 1
            if slot.inflight == 0:
                async with self._idle:
                    self._idle.notify_all()

    async def wait_idle(self, number: int, timeout: float) -> bool:
        async with self._idle:
            try:
                await asyncio.wait_for(
                    self._idle.wait_for(lambda: (s := self._loaded.get(number)) is None or s.inflight == 0),
                    timeout,
                )
            except TimeoutError:
                return False
        return True
