"""In-flight accounting that keeps a version's weights in place until its last request ends."""

from __future__ import annotations

import asyncio

from services.student.adapters import AdapterSlots, Loaded


async def test_wait_idle_returns_when_last_request_releases():
    slots = AdapterSlots(capacity=4)
    slots.add(Loaded("student@v1", 1, "/p"))
    slots.acquire(1)
    slots.acquire(1)
    assert not await slots.wait_idle(1, timeout=0.05)
    waiter = asyncio.create_task(slots.wait_idle(1, timeout=5))
    await slots.release(1)
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await slots.release(1)
    assert await waiter


def test_eviction_skips_promoted_and_busy_versions_in_lru_order():
    slots = AdapterSlots(capacity=3)
    for n in (1, 2, 3):
        slots.add(Loaded(f"student@v{n}", n, "/p"))
    slots.promoted = 1
    slots.acquire(2)
    assert slots.evictable().number == 3
    slots.get(3)  # touching moves it to the end: still the only candidate
    assert slots.evictable().number == 3
    slots.acquire(3)
    assert slots.evictable() is None
    slots.remove(3)
    assert slots.evictable() is None  # below capacity: nothing needs to go
