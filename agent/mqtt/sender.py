"""From the durable outbox to the broker: in order, a bounded window in flight, deleted only once acknowledged.

Pipelines append their results to the outbox (``put_many``: one transaction per burst) and go on; this
task hands the oldest undelivered messages to the MQTT link, at most ``max_inflight`` unacknowledged at
a time, and deletes each from the outbox when the broker acknowledges it. While the broker is away,
nothing new is handed over: what was in flight when the connection went is resent by paho after
reconnecting, in order, and everything after it waits on disk, not in memory, where the outbox's bounds
apply. After a restart, whatever the outbox still holds is sent first, before newer results. A message
the broker refuses (an MQTT 5 failure reason code) is retried, and quarantined after ``max_attempts``
refusals instead of being retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from agent.errors import PublishError
from agent.mqtt.link import MqttLink
from agent.mqtt.outbox import Message, Outbox

log = logging.getLogger(__name__)

Item = tuple[str, bytes, int, bool]  # topic, payload, qos, retain
FRESH_MAX = 4096  # appended messages kept in memory for handing over


class OutboxSender:
    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink,
        max_inflight: int,
        on_delivered: Callable[[str], None] = lambda topic: None,
    ) -> None:
        self.outbox = outbox
        self._link = link
        self._window = max_inflight
        self._on_delivered = on_delivered
        self._inflight: dict[int, Message] = {}
        self._handed = 0  # the highest id handed to the link
        self._retry: list[Message] = []  # refused by the broker, to be sent again
        self._acked: list[int] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._progress = asyncio.Event()  # set at every acknowledgement recorded or refusal
        # Messages this process appended, kept to hand over without reading them back from disk; used only
        # while ``_synced``: the outbox was read to its end since the last gap (restart, outage, overflow).
        self._fresh: deque[Message] = deque()
        self._synced = False
        self._appended = 0  # the highest id put_many has seen appended
        self.delivered = 0
        self.refused = 0

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def put_many(self, items: Sequence[Item]) -> None:
        """Make ``items`` durable (one transaction), then let the sender know."""
        ids = await asyncio.to_thread(self.outbox.append_many, items)
        self._appended = max(self._appended, *ids) if ids else self._appended
        if self._synced and len(self._fresh) + len(ids) <= FRESH_MAX:
            now = time.time()
            self._fresh.extend(Message(i, t, p, q, r, now, 0) for i, (t, p, q, r) in zip(ids, items, strict=True))
        else:  # too much waiting: the next ones are read from disk again
            self._synced = False
            self._fresh.clear()
        self._wake.set()

    async def run(self) -> None:
        """Forever: hand over what the window has room for, in id order; record acknowledgements."""
        while True:
            await self._flush_acks()
            if not self._link.connected.is_set():
                # nothing more goes to paho's memory while the broker is away: it waits on disk, where the
                # outbox's bounds apply (what was in flight when the connection went is resent by paho)
                self._synced = False
                self._fresh.clear()
                await self._link.connected.wait()
                continue
            room = self._window - len(self._inflight)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            batch = self._retry[:room]
            del self._retry[: len(batch)]
            if len(batch) < room:
                batch += await self._next(room - len(batch))
            if not batch:
                self._wake.clear()
                await self._wake.wait()
                continue
            for message in batch:
                self._hand(message)

    async def _next(self, limit: int) -> list[Message]:
        """The oldest messages not handed over yet: from memory when synced, else from disk."""
        if self._synced:
            while self._fresh and self._fresh[0].id <= self._handed:  # read from disk meanwhile
                self._fresh.popleft()
            return [self._fresh.popleft() for _ in range(min(limit, len(self._fresh)))]
        rows = await asyncio.to_thread(self.outbox.pending, self._handed, limit)
        seen = rows[-1].id if rows else self._handed
        # read to the end, and nothing appended since was missed: from now on appends come from memory
        if len(rows) < limit and self._appended <= seen:
            self._synced = True
            self._fresh.clear()
        return rows

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for everything appended so far to be acknowledged; the number left."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), timeout)
        await self._flush_acks()
        return self.outbox.stats().backlog

    async def _drained(self) -> None:
        while True:
            self._progress.clear()
            await self._flush_acks()
            if not self._inflight and not self._retry and self.outbox.stats().backlog == 0:
                return
            self._wake.set()
            await self._progress.wait()

    def _hand(self, message: Message) -> None:
        self._handed = max(self._handed, message.id)
        self._inflight[message.id] = message
        fut = self._link.publish(message.topic, message.payload, message.qos, message.retain)
        fut.add_done_callback(partial(self._settled, message))

    def _settled(self, message: Message, fut: asyncio.Future[None]) -> None:
        self._inflight.pop(message.id, None)
        self._room.set()
        self._progress.set()
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self._acked.append(message.id)
            self.delivered += 1
            self._on_delivered(message.topic)
            self._wake.set()  # the run loop records acknowledgements in bursts, one transaction each
            return
        if isinstance(exc, PublishError) and exc.refused:
            self.refused += 1
            if self.outbox.refused(message.id, str(exc)):
                log.error("quarantined the message to %s after repeated refusals: %s", message.topic, exc)
            else:
                self._retry.append(message)
            self._wake.set()
        # any other failure (the link stopped): the message stays in the outbox for the next start

    async def _flush_acks(self) -> None:
        if self._acked:
            ids, self._acked = self._acked, []
            await asyncio.to_thread(self.outbox.delivered, ids)
            self._progress.set()

    def stats(self) -> dict[str, Any]:
        s = self.outbox.stats()
        return {**s.__dict__, "inflight": len(self._inflight), "refused": self.refused}
