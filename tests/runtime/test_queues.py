"""The stage queue: overflow policies, counted drops, closing, and waking the event loop from threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agent.runtime.queues import Closed, StageQueue


def test_drop_oldest_keeps_the_newest_and_counts() -> None:
    q: StageQueue[int] = StageQueue(2, "drop_oldest")
    assert q.put(1) and q.put(2)
    assert not q.put(3)
    assert q.dropped == 1 and q.put_count == 3
    assert [q.get(0), q.get(0)] == [2, 3]


def test_drop_newest_refuses_and_counts() -> None:
    q: StageQueue[int] = StageQueue(1, "drop_newest")
    assert q.put(1) and not q.put(2)
    assert q.dropped == 1 and q.get(0) == 1


def test_block_waits_for_room_and_drops_only_on_timeout() -> None:
    q: StageQueue[int] = StageQueue(1, "block")
    q.put(1)
    assert not q.put(2, timeout=0.01)
    assert q.dropped == 1
    done = threading.Event()

    def producer() -> None:
        q.put(3)  # blocks until the consumer below makes room
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert q.get(1) == 1
    assert done.wait(5) and q.get(1) == 3
    t.join()
    assert q.dropped == 1


def test_close_drains_then_raises() -> None:
    q: StageQueue[int] = StageQueue(4)
    q.put(1)
    q.close()
    with pytest.raises(Closed):
        q.put(2)
    assert q.get(0) == 1
    with pytest.raises(Closed):
        q.get(0)
    with pytest.raises(TimeoutError):
        StageQueue[int](1).get(0.01)


def test_close_wakes_a_blocked_producer() -> None:
    q: StageQueue[int] = StageQueue(1, "block")
    q.put(1)
    raised = threading.Event()

    def producer() -> None:
        try:
            q.put(2)
        except Closed:
            raised.set()

    t = threading.Thread(target=producer)
    t.start()
    q.close()
    t.join(5)
    assert raised.is_set()


def test_get_async_is_woken_by_a_thread_and_sees_every_item_in_order() -> None:
    q: StageQueue[int] = StageQueue(10_000, "block")

    def producer() -> None:
        for i in range(2000):
            q.put(i)
        q.close()

    async def consume() -> list[int]:
        got = []
        threading.Thread(target=producer).start()
        while True:
            try:
                got.append(await q.get_async())
            except Closed:
                return got

    assert asyncio.run(consume()) == list(range(2000))
    assert q.high_water >= 1
