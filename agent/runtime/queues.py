"""A bounded queue between pipeline stages, shared by threads and the asyncio loop, that counts drops.

Sources and the inference worker are threads; the publisher is a coroutine. ``put`` and ``get`` are for
threads, ``get_async`` for the loop. The loop is only woken across threads when it is actually waiting,
so a busy pipeline pays no per-item wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
Overflow = Literal["drop_oldest", "drop_newest", "block"]


class Closed(Exception):
    """The queue was closed and is empty: the producer is done."""


class StageQueue(Generic[T]):
    def __init__(self, maxsize: int, overflow: Overflow = "drop_oldest") -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self.overflow = overflow
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self.put_count = 0
        self.dropped = 0
        self.high_water = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Add an item. Returns False when it (or, for drop_oldest, an older one) was dropped.

        With ``block`` it waits for room (up to ``timeout``; then the item is dropped and counted).
        """
        with self._cond:
            if self._closed:
                raise Closed
            accepted = True
            if len(self._items) >= self.maxsize:
                if self.overflow == "drop_newest":
                    self.dropped += 1
                    return False
                if self.overflow == "drop_oldest":
                    self._items.popleft()
                    self.dropped += 1
                    accepted = False
                elif not self._cond.wait_for(lambda: len(self._items) < self.maxsize or self._closed, timeout):
                    self.dropped += 1
                    return False
                elif self._closed:
                    raise Closed
            self._items.append(item)
            self.put_count += 1
            self.high_water = max(self.high_water, len(self._items))
            self._cond.notify_all()
            self._wake_async()
            return accepted

    def get(self, timeout: float | None = None) -> T:
        """Blocking get for threads; raises Closed once closed and drained, TimeoutError on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                raise TimeoutError
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()
                return item
            raise Closed

    def drain_nowait(self, limit: int) -> list[T]:
        """Up to ``limit`` items that are there now, without waiting."""
        with self._cond:
            items = [self._items.popleft() for _ in range(min(limit, len(self._items)))]
            if items:
                self._cond.notify_all()
            return items

    async def get_async(self) -> T:
        """Get for the event loop; raises Closed once closed and drained."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._items:
                    item = self._items.popleft()
                    self._cond.notify_all()
                    return item
                if self._closed:
                    raise Closed
                fut: asyncio.Future[None] = loop.create_future()
                self._waiter = (loop, fut)
            try:
                await fut
            finally:
                with self._cond:
                    if self._waiter is not None and self._waiter[1] is fut:
                        self._waiter = None

    def close(self) -> None:
        """No more puts; getters drain what is left, then get Closed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._wake_async()

    def _wake_async(self) -> None:  # called with the lock held
        if self._waiter is not None:
            loop, fut = self._waiter
            self._waiter = None
            with contextlib.suppress(RuntimeError):  # the loop has closed; nobody is waiting any more
                loop.call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
