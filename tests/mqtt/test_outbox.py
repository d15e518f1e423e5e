"""The durable outbox on real SQLite files: order, bounds, quarantine, reopening, kill -9, damaged files."""

from __future__ import annotations

import logging
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from agent.errors import PublishError
from agent.mqtt.outbox import Message, Outbox, OutboxSettings, outbox_path

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_box(tmp_path: Path, clock: Clock | None = None, **bounds: float) -> Outbox:
    return Outbox(tmp_path / "outbox.sqlite", OutboxSettings(**bounds), clock=clock or Clock())


def payloads(box: Outbox) -> list[bytes]:
    return [m.payload for m in box.pending(limit=10_000)]


def test_pending_is_publish_order_with_every_field(tmp_path: Path) -> None:
    clock = Clock()
    box = open_box(tmp_path, clock)
    ids = [box.append(f"t/{i}", bytes([i]) * i, qos=i % 3, retain=i % 2 == 1) for i in range(10)]
    ids += box.append_many([("t/many", b"\x00\xff", 0, True), ("t/many", b"", 2, False)])
    assert ids == sorted(ids) and len(set(ids)) == 12
    first = box.pending()
    assert [m.id for m in first] == ids
    assert first[3] == Message(ids[3], "t/3", b"\x03\x03\x03", 0, True, clock.now, 0)
    assert (first[10].payload, first[10].retain, first[11].qos) == (b"\x00\xff", True, 2)
    assert [m.id for m in box.pending(after_id=ids[3], limit=4)] == ids[4:8]
    assert box.pending(after_id=ids[-1]) == []
    with pytest.raises(ValueError, match="qos"):
        box.append("t", b"x", qos=3)


def test_delivered_deletes_exactly_those_ids(tmp_path: Path) -> None:
    box = open_box(tmp_path)
    ids = box.append_many([("t", b"m%d" % i, 1, False) for i in range(6)])
    box.delivered([ids[1], ids[4], ids[4], 999_999])  # a repeated and an unknown id are ignored
    assert [m.id for m in box.pending()] == [ids[0], ids[2], ids[3], ids[5]]
    stats = box.stats()
    assert (stats.appended, stats.delivered, stats.backlog, stats.backlog_bytes) == (6, 2, 4, 4 * (1 + 2))
    box.delivered(iter(ids))
    assert box.pending() == [] and box.stats().backlog_bytes == 0
    # ids keep increasing after the table empties: a publisher's after_id cursor stays valid
    assert box.append("t", b"later") > ids[-1]
    assert [m.payload for m in box.pending(after_id=ids[-1])] == [b"later"]


def test_count_bound_evicts_oldest_never_the_new_one(tmp_path: Path) -> None:
    box = open_box(tmp_path, max_messages=5)
    for i in range(8):
        box.append("t", b"%d" % i)
    assert payloads(box) == [b"3", b"4", b"5", b"6", b"7"]
    assert (box.stats().evicted_full, box.stats().backlog) == (3, 5)
    # a batch larger than the bound keeps its newest five, evicting the oldest first, its own included
    box.append_many([("t", b"b%d" % i, 1, False) for i in range(7)])
    assert payloads(box) == [b"b2", b"b3", b"b4", b"b5", b"b6"]
    assert (box.stats().evicted_full, box.stats().evicted_age) == (10, 0)


def test_byte_bound_counts_topic_and_payload_and_evicts_oldest(tmp_path: Path) -> None:
    box = open_box(tmp_path, max_bytes=1024)
    for i in range(5):
        box.append(f"topic/{i}", bytes(293))  # 7 + 293 = 300 bytes each: three fit
    assert [m.topic for m in box.pending()] == ["topic/2", "topic/3", "topic/4"]
    assert (box.stats().backlog_bytes, box.stats().evicted_full) == (900, 2)
    box.append("big", bytes(1021))  # exactly max_bytes: everything older goes, the new one stays
    assert [m.topic for m in box.pending()] == ["big"]
    assert (box.stats().backlog_bytes, box.stats().evicted_full) == (1024, 5)
    with pytest.raises(PublishError, match=r"exceeds outbox.max_bytes \(1024\)"):
        box.append("big", bytes(1022))
    assert [m.topic for m in box.pending()] == ["big"]  # a refused message evicts nothing


def test_age_bound_on_append_and_on_expire(tmp_path: Path) -> None:
    clock = Clock()
    box = open_box(tmp_path, clock, max_age_s=100)
    box.append("t", b"old")
    clock.now += 60
    box.append("t", b"mid")
    clock.now += 60  # "old" is 120 s old, "mid" 60 s
    box.append("t", b"new")
    assert payloads(box) == [b"mid", b"new"]
    assert (box.stats().evicted_age, box.stats().evicted_full) == (1, 0)
    assert box.expire(now=clock.now + 30) == 0
    assert box.expire(now=clock.now + 50) == 1  # "mid" is 110 s old then
    assert payloads(box) == [b"new"]
    assert (box.stats().evicted_age, box.stats().backlog) == (2, 1)
    box.close()
    unlimited = open_box(tmp_path, clock, max_age_s=0)
    assert unlimited.expire(now=clock.now + 10 * 365 * 86400) == 0
    assert payloads(unlimited) == [b"new"]


def test_refused_max_attempts_times_is_quarantined_and_kept(tmp_path: Path) -> None:
    box = open_box(tmp_path, max_attempts=3)
    bad, good = box.append("t/bad", b"bad"), box.append("t/good", b"good")
    assert [box.refused(bad, "0x97 quota exceeded") for _ in range(2)] == [False, False]
    assert box.pending()[0].attempts == 2
    assert box.refused(bad, "0x87 not authorized") is True
    assert [m.id for m in box.pending()] == [good]
    assert box.refused(bad, "again") is False  # no longer in the outbox
    [(message, reason)] = box.quarantine()
    assert (message.id, message.topic, message.payload, message.attempts) == (bad, "t/bad", b"bad", 3)
    assert reason == "0x87 not authorized"
    assert (box.stats().quarantined, box.stats().backlog, box.stats().backlog_bytes) == (1, 1, len("t/good") + 4)
    box.close()
    reopened = open_box(tmp_path, max_attempts=3)
    assert [(m.id, r) for m, r in reopened.quarantine()] == [(bad, "0x87 not authorized")]
    assert reopened.stats().quarantined == 1
    assert reopened.append("t", b"x") > bad  # a quarantined id is never handed out again


def test_reopen_keeps_everything_and_counts_possible_duplicates(tmp_path: Path) -> None:
    box = open_box(tmp_path, max_attempts=5)
    ids = box.append_many([(f"t/{i}", b"p%d" % i, i % 3, i == 0) for i in range(5)])
    box.refused(ids[2], "try later")
    box.delivered([ids[0]])
    before = box.pending()
    conn = sqlite3.connect(tmp_path / "outbox.sqlite")  # a second reader, as WAL allows
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone() == (4,)  # committed, not buffered
    conn.close()
    box.close()
    with pytest.raises(PublishError, match="closed"):
        box.append("t", b"x")

    reopened = open_box(tmp_path, max_attempts=5)
    assert reopened.pending() == before
    assert before[1].attempts == 1  # ids[2], refused once
    stats = reopened.stats()
    assert (stats.backlog, stats.backlog_bytes, stats.appended, stats.delivered) == (4, 4 * 5, 0, 0)
    assert reopened.mark_restart() == 4
    fresh = reopened.append("t/new", b"new")
    assert fresh > ids[-1]
    reopened.delivered([ids[1], ids[2], fresh])
    assert (reopened.stats().delivered, reopened.stats().duplicates_possible) == (3, 2)


def test_a_drained_backlog_gives_its_disk_space_back(tmp_path: Path) -> None:
    box = open_box(tmp_path)
    ids = box.append_many([("t", bytes(4000), 1, False)] * 2000)  # 8 MB queued during an outage

    def files() -> int:
        return sum(p.stat().st_size for p in tmp_path.glob("outbox.sqlite*"))

    assert files() > 8_000_000
    for first in range(0, len(ids), 256):
        box.delivered(ids[first : first + 256])
    assert files() < 1_000_000
    assert box.append("t", b"after") > ids[-1]


def test_threads_share_one_outbox(tmp_path: Path) -> None:
    box = open_box(tmp_path)
    got: dict[str, list[int]] = {"a": [], "b": []}

    def producer(name: str) -> None:
        for i in range(300):
            got[name].append(box.append(name, b"%d" % i))

    def consumer() -> None:
        for _ in range(300):
            box.delivered(m.id for m in box.pending(limit=3))

    threads = [threading.Thread(target=producer, args=(n,)) for n in got] + [threading.Thread(target=consumer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(ids == sorted(ids) for ids in got.values())
    assert len(set(got["a"]) | set(got["b"])) == 600
    left = box.pending(limit=1000)
    assert [m.id for m in left] == sorted(m.id for m in left)
    stats = box.stats()
    assert stats.appended == 600 and stats.backlog == len(left) == 600 - stats.delivered


# -- kill -9 in the middle of appending -------------------------------------------------------------------------

CHILD = """
import sys
from pathlib import Path
from agent.mqtt.outbox import Outbox, OutboxSettings
from tests.mqtt.test_outbox import child_payload
box = Outbox(Path(sys.argv[1]), OutboxSettings())
batch, i = int(sys.argv[2]), 0
while True:  # until killed
    ids = box.append_many([(f"t/{j}", child_payload(j), 1, False) for j in range(i, i + batch)])
    i += batch
    print(" ".join(map(str, ids)), flush=True)  # acknowledged: append_many has returned
"""


def child_payload(i: int) -> bytes:
    # sizes from 0 to ~9 KiB: some span overflow pages, so a torn write would show as a damaged payload
    return (b"%08d|" % i) * ((i * 37) % 1000)


def read_ids(proc: subprocess.Popen[bytes], wanted: int) -> list[int]:
    """Ids the child reported as appended, until at least `wanted` (fails instead of hanging)."""
    assert proc.stdout is not None
    ids: list[int] = []
    deadline = time.monotonic() + 60
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while len(ids) < wanted:
            assert sel.select(timeout=max(0.0, deadline - time.monotonic())), "the child reported nothing for 60 s"
            line = proc.stdout.readline()
            assert line, f"the child exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            ids += map(int, line.split())
    return ids


@pytest.mark.parametrize("batch", [1, 7])
def test_kill_9_while_appending_loses_no_acknowledged_message(tmp_path: Path, batch: int) -> None:
    path = tmp_path / "outbox.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(batch)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        acknowledged = read_ids(proc, 400)
        os.kill(proc.pid, signal.SIGKILL)  # the child is still appending
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    box = Outbox(path, OutboxSettings())
    stored = box.pending(limit=1_000_000)
    by_id = {m.id: m for m in stored}
    assert set(acknowledged) <= set(by_id), "an acknowledged append was lost"
    assert [m.id for m in stored] == sorted(by_id)
    for message in stored:  # acknowledged or not, every stored message is whole
        i = int(message.topic.removeprefix("t/"))
        assert message.id == i + 1
        assert message.payload == child_payload(i)
    assert box.stats().backlog == len(stored) >= len(acknowledged)


# -- damaged files ----------------------------------------------------------------------------------------------


def damage_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[4096 * 2 : 4096 * 6] = b"\xff" * (4096 * 4)  # b-tree pages overwritten, the header intact
    path.write_bytes(bytes(data))


def make_newer(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()


@pytest.mark.parametrize("damage", ["garbage", "pages", "newer-schema"])
def test_damaged_file_is_moved_aside_and_a_fresh_outbox_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    path = tmp_path / "outbox.sqlite"
    if damage == "garbage":
        path.write_bytes(b"this is not an SQLite file\n" * 200)
    else:
        box = Outbox(path, OutboxSettings())
        box.append_many([("t", bytes(3000), 1, False)] * 50)
        box.close()
        damage_pages(path) if damage == "pages" else make_newer(path)
    original = path.read_bytes()

    with caplog.at_level(logging.WARNING, logger="agent.mqtt.outbox"):
        box = Outbox(path, OutboxSettings())
    [aside] = tmp_path.glob("outbox.sqlite.corrupt-*")
    assert aside.read_bytes() == original
    assert any("moved aside" in r.getMessage() and str(aside) in r.getMessage() for r in caplog.records)
    assert box.stats().backlog == 0
    box.append("t", b"after")
    box.close()
    assert payloads(Outbox(path, OutboxSettings())) == [b"after"]


def test_an_unopenable_path_is_an_error_not_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.mkdir()  # e.g. a mistake in outbox.path: nothing here may be renamed away
    with pytest.raises(PublishError, match="cannot open the outbox"):
        Outbox(path, OutboxSettings())
    assert path.is_dir() and list(tmp_path.iterdir()) == [path]


def test_default_path_is_in_the_state_dir(tmp_path: Path) -> None:
    assert outbox_path(OutboxSettings(), tmp_path) == tmp_path / "outbox.sqlite"
    assert outbox_path(OutboxSettings(path=tmp_path / "x.db"), Path("/elsewhere")) == tmp_path / "x.db"
    with pytest.raises(ValueError, match="max_messages"):
        OutboxSettings(max_messages=0)
    with pytest.raises(ValueError, match="extra"):
        OutboxSettings(max_size=1)  # type: ignore[call-arg]


# -- any interleaving matches a model ---------------------------------------------------------------------------


@dataclass
class Model:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    attempts: int = 0

    @property
    def size(self) -> int:
        return len(self.topic.encode()) + len(self.payload)


MAX_MESSAGES, MAX_BYTES, MAX_ATTEMPTS = 8, 1024, 2
items = st.tuples(st.sampled_from(["a", "b/c", "ü"]), st.binary(max_size=300), st.integers(0, 2), st.booleans())


class OutboxMachine(RuleBasedStateMachine):
    """The outbox against an ordered dict: appends (with bounds), deliveries, refusals and reopens."""

    @initialize()
    def setup(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.settings = OutboxSettings(max_messages=MAX_MESSAGES, max_bytes=MAX_BYTES, max_attempts=MAX_ATTEMPTS)
        self.box = Outbox(Path(self.tmp.name) / "o.sqlite", self.settings, clock=Clock())
        self.model: dict[int, Model] = {}
        self.quarantined: list[tuple[int, Model]] = []
        self.counts = {"appended": 0, "delivered": 0, "evicted_full": 0}
        self.highest = 0

    def teardown(self) -> None:
        if hasattr(self, "box"):
            self.box.close()
            self.tmp.cleanup()

    def _append(self, batch: list[tuple[str, bytes, int, bool]]) -> None:
        ids = self.box.append_many(batch)
        assert len(ids) == len(batch) and ids == sorted(set(ids)) and ids[0] > self.highest
        self.highest = ids[-1]
        self.model.update((i, Model(*item)) for i, item in zip(ids, batch, strict=True))
        self.counts["appended"] += len(batch)
        while len(self.model) > MAX_MESSAGES or sum(m.size for m in self.model.values()) > MAX_BYTES:
            oldest = next(iter(self.model))
            assert oldest != ids[-1]
            del self.model[oldest]
            self.counts["evicted_full"] += 1

    @rule(item=items)
    def append(self, item: tuple[str, bytes, int, bool]) -> None:
        self._append([item])

    @rule(batch=st.lists(items, min_size=1, max_size=10))
    def append_many(self, batch: list[tuple[str, bytes, int, bool]]) -> None:
        self._append(batch)

    @rule(picks=st.lists(st.integers(0, 20)), unknown=st.booleans())
    def delivered(self, picks: list[int], unknown: bool) -> None:
        known = list(self.model)
        ids = {known[p % len(known)] for p in picks} if known else set()
        self.box.delivered([*ids, self.highest + 1000] if unknown else ids)
        for i in ids:
            del self.model[i]
        self.counts["delivered"] += len(ids)

    @precondition(lambda self: bool(self.model))
    @rule(pick=st.integers(0, 20))
    def refused(self, pick: int) -> None:
        id_ = list(self.model)[pick % len(self.model)]
        self.model[id_].attempts += 1
        quarantined = self.model[id_].attempts >= MAX_ATTEMPTS
        assert self.box.refused(id_, f"reason {id_}") is quarantined
        if quarantined:
            self.quarantined.append((id_, self.model.pop(id_)))

    @rule()
    def reopen(self) -> None:
        self.box.close()
        self.box = Outbox(Path(self.tmp.name) / "o.sqlite", self.settings, clock=Clock())
        self.counts = dict.fromkeys(self.counts, 0)

    @invariant()
    def matches_the_model(self) -> None:
        if not hasattr(self, "box"):
            return
        got = [(m.id, m.topic, m.payload, m.qos, m.retain, m.attempts) for m in self.box.pending(limit=100)]
        assert got == [(i, m.topic, m.payload, m.qos, m.retain, m.attempts) for i, m in self.model.items()]
        assert [(m.id, m.payload, r) for m, r in self.box.quarantine(limit=1000)] == [
            (i, m.payload, f"reason {i}") for i, m in sorted(self.quarantined, key=lambda q: q[0])
        ]
        stats = self.box.stats()
        assert stats.backlog == len(self.model)
        assert stats.backlog_bytes == sum(m.size for m in self.model.values())
        assert stats.quarantined == len(self.quarantined)
        assert (stats.appended, stats.delivered, stats.evicted_full) == tuple(self.counts.values())


OutboxMachine.TestCase.settings = hypothesis_settings(
    max_examples=60, stateful_step_count=25, deadline=None, database=None
)
test_any_interleaving_matches_the_model = OutboxMachine.TestCase
