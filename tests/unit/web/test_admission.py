"""``Admission``: the bounded, first-come-first-served wait for a pooled connection."""

from __future__ import annotations

import asyncio
import time

import pytest

from corral.core.errors import Overloaded
from corral.net.pool import Admission, Slot


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_capacity_is_held_and_waiters_are_served_in_arrival_order() -> None:
    gate = Admission(2, 10, 5.0, "the upstream")
    first, second = await gate.acquire(), await gate.acquire()
    order: list[int] = []

    async def wait(i: int) -> Slot:
        slot = await gate.acquire()
        order.append(i)
        return slot

    waiters = [asyncio.create_task(wait(i)) for i in range(4)]
    await settle()
    assert (gate.held, gate.waiting, order) == (2, 4, [])
    first.release()
    first.release()  # idempotent: frees one slot, not two
    await settle()
    assert order == [0] and gate.waiting == 3 and gate.held == 2
    second.release()
    await settle()
    assert order == [0, 1]
    for task in waiters[:2]:
        (await task).release()
    await settle()
    assert order == [0, 1, 2, 3]
    for task in waiters[2:]:
        (await task).release()
    assert (gate.held, gate.waiting) == (0, 0)


async def test_a_newcomer_does_not_overtake_the_queue() -> None:
    gate = Admission(1, 10, 5.0, "the upstream")
    held = await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await settle()
    held.release()  # the slot goes to the waiter, not to whoever asks next
    late = asyncio.create_task(gate.acquire())
    await settle()
    assert waiter.done() and not late.done()
    (await waiter).release()
    (await late).release()


async def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    gate = Admission(1, 2, 5.0, "the upstream at http://u")
    held = await gate.acquire()
    waiters = [asyncio.create_task(gate.acquire()) for _ in range(2)]
    await settle()
    started = time.monotonic()
    with pytest.raises(Overloaded) as caught:
        await gate.acquire()
    assert time.monotonic() - started < 0.1
    assert "the upstream at http://u is at capacity" in caught.value.message
    assert "max_queued" in caught.value.message
    assert 1.0 <= caught.value.retry_after <= 60.0
    assert caught.value.status == 429
    held.release()
    for task in waiters:
        (await task).release()


async def test_a_wait_is_bounded_and_gives_its_place_back() -> None:
    gate = Admission(1, 5, 0.1, "the upstream")
    held = await gate.acquire()
    started = time.monotonic()
    with pytest.raises(Overloaded) as caught:
        await gate.acquire()
    assert 0.09 <= time.monotonic() - started < 1.0
    assert "stayed at capacity for 0.1s" in caught.value.message
    assert gate.waiting == 0
    held.release()
    assert gate.held == 0
    (await gate.acquire()).release()  # free again at once


async def test_a_cancelled_waiter_leaves_the_queue_and_the_slot_goes_on() -> None:
    gate = Admission(1, 5, 5.0, "the upstream")
    held = await gate.acquire()
    gone = asyncio.create_task(gate.acquire())
    nxt = asyncio.create_task(gate.acquire())
    await settle()
    gone.cancel()
    await settle()
    assert gate.waiting == 1
    held.release()
    slot = await asyncio.wait_for(nxt, 1.0)
    assert gate.held == 1
    slot.release()
    assert (gate.held, gate.waiting) == (0, 0)


async def test_a_slot_granted_as_the_waiter_is_cancelled_is_passed_on() -> None:
    gate = Admission(1, 5, 5.0, "the upstream")
    held = await gate.acquire()
    first = asyncio.create_task(gate.acquire())
    second = asyncio.create_task(gate.acquire())
    await settle()
    held.release()  # granted to ``first`` ...
    first.cancel()  # ... which is cancelled before it runs again
    slot = await asyncio.wait_for(second, 1.0)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert gate.held == 1
    slot.release()
    assert (gate.held, gate.waiting) == (0, 0)


async def test_retry_after_follows_how_long_requests_hold_a_connection() -> None:
    gate = Admission(1, 1, 5.0, "the upstream")
    for _ in range(30):  # requests holding a connection ~20 ms: the estimate stays at its floor
        slot = await gate.acquire()
        await asyncio.sleep(0.02)
        slot.release()
    held = await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await settle()
    with pytest.raises(Overloaded) as caught:
        await gate.acquire()
    assert caught.value.retry_after == 1.0
    held.release()
    (await waiter).release()
