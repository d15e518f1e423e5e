"""The durable outbox: every message bound for the broker is stored here first and deleted on its PUBACK.

One SQLite file (``<state_dir>/outbox.sqlite``) in WAL mode with ``synchronous=NORMAL``: a commit is in the
WAL before ``append`` returns, so a kill -9 of the daemon loses nothing appended; a power cut may lose the
last transactions but never corrupts the file. Ids are never reused and increase with every append, also
across restarts, so id order is publish order and an ``after_id`` cursor stays valid after the table empties.
They are counted in memory from blocks reserved on disk (like ``agent.state.SeqAllocator``) rather than by
AUTOINCREMENT, whose extra page write per commit costs a third of the one-by-one throughput.

Bounds (count, bytes, age) are enforced on every append by evicting the oldest messages, never the new one.
A message the broker refuses ``max_attempts`` times moves to a quarantine table, kept for inspection.
One lock guards the connection, so the event loop thread and a worker thread may both use an Outbox.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from agent.errors import PublishError
from agent.schema import Section

log = logging.getLogger(__name__)

FILE_NAME = "outbox.sqlite"
SCHEMA_VERSION = 1
QUARANTINE_KEEP = 1000  # quarantined messages kept (newest); a broker refusing everything must not fill the disk
VACUUM_BYTES = 4 * 1024 * 1024  # once the backlog is empty and this much was deleted, give free pages back to the FS
AGE_CHECK_S = 1.0  # appends look for messages past max_age_s at most this often (each look is a query)
_CHUNK = 500  # ids per statement, well below SQLite's variable limit
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26  # primary result codes meaning "this file is damaged, not unreadable"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    retain INTEGER NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    retain INTEGER NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL, reason TEXT NOT NULL,
    quarantined REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
TABLES = ("outbox", "quarantine")
ID_BLOCK = 10_000  # ids reserved per write of the high-water mark; a restart skips the unused rest
_COLUMNS = "id, topic, payload, qos, retain, created, attempts"


class OutboxSettings(Section):
    max_messages: int = Field(
        100_000,
        ge=1,
        description="Messages kept while the broker is unreachable; beyond "
        "this the oldest are dropped (counted as evicted_full).",
    )
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Bytes (topics + payloads) kept while the broker "
        "is unreachable; beyond this the oldest messages are dropped.",
    )
    max_age_s: float = Field(
        7 * 86400.0,
        ge=0,
        description="Messages older than this are dropped unsent (counted as evicted_age); 0: no age limit.",
    )
    max_attempts: int = Field(
        5,
        ge=1,
        description="A message the broker refused this many times is moved to "
        "quarantine (kept in the file, counted, no longer sent).",
    )
    path: Path | None = Field(None, description="The outbox file; default: outbox.sqlite in the state directory.")


def outbox_path(settings: OutboxSettings, state_dir: Path) -> Path:
    return settings.path if settings.path is not None else state_dir / FILE_NAME


@dataclass(frozen=True)
class Message:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float  # unix time of the append
    attempts: int  # times the broker refused it


@dataclass
class OutboxStats:
    """``backlog*`` and ``quarantined`` describe the file now; the other counters count since this open."""

    backlog: int = 0
    backlog_bytes: int = 0
    appended: int = 0
    delivered: int = 0
    evicted_full: int = 0
    evicted_age: int = 0
    quarantined: int = 0  # messages held in quarantine
    duplicates_possible: int = 0  # delivered messages from a previous run: the broker may have had them already


class _Damaged(Exception):
    """The file is not a usable outbox; it is moved aside."""


def _size(topic: str, payload: bytes) -> int:
    return len(topic.encode()) + len(payload)


def _message(row: Sequence[Any]) -> Message:
    return Message(row[0], row[1], bytes(row[2]), row[3], bool(row[4]), row[5], row[6])


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


class Outbox:
    def __init__(self, path: Path, settings: OutboxSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.settings = settings
        self._clock = clock  # wall clock: ages must survive restarts
        self._lock = threading.RLock()
        self._stats = OutboxStats()
        self._restart_boundary = 0  # ids up to this were in the file when mark_restart ran
        self._evicting = False  # log the start of an eviction streak once, not every append
        self._next_age_check = float("-inf")
        self._deleted_bytes = 0  # since the file last gave free pages back
        self._conn: sqlite3.Connection | None = self._open()
        with self._lock, self._tx() as conn:
            self._stats.backlog, self._stats.backlog_bytes = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
            ).fetchone()
            self._stats.quarantined = conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
            highest = [conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {t}").fetchone()[0] for t in TABLES]
            row = conn.execute("SELECT value FROM meta WHERE key = 'reserved'").fetchone()
            self._reserved = max([*highest, row[0] if row else 0])  # every id handed out so far is <= this
            self._next_id = self._reserved + 1

    # -- opening ---------------------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except _Damaged as exc:
            reason = str(exc)
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                raise self._error("cannot open", exc) from exc
            reason = str(exc)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for n in range(1, 1000):  # two damaged files in one second keep their own names
            if not aside.exists():
                break
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").replace(f"{aside}{suffix}")
        log.warning("outbox %s is damaged (%s): moved aside to %s, starting an empty outbox", self.path, reason, aside)
        try:
            return self._connect()
        except (sqlite3.Error, _Damaged) as exc:
            raise self._error("cannot create", exc) from exc

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PublishError(f"cannot create the outbox folder {self.path.parent}: {exc.strerror or exc}") from exc
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # a file that is no database fails here
            if version > SCHEMA_VERSION:
                raise _Damaged(f"written by a newer agent (schema {version})")
            # before any write, so a damaged file is moved aside as it was found
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise _Damaged(check)
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect only on a new file
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                log.warning(
                    "outbox %s: journal mode %s instead of WAL (file system without shared memory?)", self.path, mode
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA journal_size_limit = 8388608")  # truncate the WAL back to 8 MiB after checkpoints
            conn.executescript(_SCHEMA)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _error(self, what: str, exc: BaseException) -> PublishError:
        return PublishError(
            f"{what} the outbox {self.path}: {exc}; check the state directory's permissions and free space"
        )

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise PublishError(f"the outbox {self.path} is closed")
        return self._conn

    def _read(self, sql: str, params: tuple[int, ...]) -> list[Any]:
        with self._lock:
            try:
                return self._live().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error("cannot read", exc) from exc

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; callers hold the lock until they have applied its effects to the counters."""
        conn = self._live()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise self._error("cannot write", exc) from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- writing ---------------------------------------------------------------------------------------------

    def append(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Store one message; it is durable when this returns. Returns its id."""
        return self.append_many([(topic, payload, qos, retain)])[0]

    def append_many(self, items: Sequence[tuple[str, bytes, int, bool]]) -> list[int]:
        """Store messages in one transaction, in order; returns their ids (increasing)."""
        now = self._clock()
        rows = []
        for topic, payload, qos, retain in items:
            if qos not in (0, 1, 2):
                raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
            data = bytes(payload)
            size = _size(topic, data)
            if size > self.settings.max_bytes:
                raise PublishError(
                    f"a message of {size} bytes on {topic} exceeds outbox.max_bytes "
                    f"({self.settings.max_bytes}); raise it or send smaller messages"
                )
            rows.append((topic, data, qos, int(retain), now, size))
        if not rows:
            return []
        with self._lock:
            ids = list(range(self._next_id, self._next_id + len(rows)))
            reserved = self._reserved
            with self._tx() as conn:
                if ids[-1] > reserved:
                    reserved = ids[-1] + ID_BLOCK
                    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('reserved', ?)", (reserved,))
                conn.executemany(
                    "INSERT INTO outbox (id, topic, payload, qos, retain, created, size) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(id_, *row) for id_, row in zip(ids, rows, strict=True)],
                )
                count = self._stats.backlog + len(rows)
                nbytes = self._stats.backlog_bytes + sum(row[5] for row in rows)
                by_age, by_bounds = self._evict(conn, ids[-1], now, count, nbytes)
            self._next_id, self._reserved = ids[-1] + 1, reserved
            self._stats.appended += len(rows)
            self._stats.evicted_age += len(by_age)
            self._stats.evicted_full += len(by_bounds)
            self._stats.backlog = count - len(by_age) - len(by_bounds)
            self._stats.backlog_bytes = nbytes - sum(by_age.values()) - sum(by_bounds.values())
        return ids

    def _evict(
        self, conn: sqlite3.Connection, newest: int, now: float, count: int, nbytes: int
    ) -> tuple[dict[int, int], dict[int, int]]:
        """Oldest first: messages past max_age_s, then as many as the bounds need. -> ({id: size} by age, by bounds)."""
        cutoff = None
        if self.settings.max_age_s > 0 and now >= self._next_age_check:
            cutoff = now - self.settings.max_age_s
            self._next_age_check = now + AGE_CHECK_S
        over = count > self.settings.max_messages or nbytes > self.settings.max_bytes
        by_age: dict[int, int] = {}
        by_bounds: dict[int, int] = {}
        if cutoff is None and not over:
            self._evicting = False
            return by_age, by_bounds
        oldest = conn.execute("SELECT id, size, created FROM outbox WHERE id < ? ORDER BY id", (newest,))
        for id_, size, created in oldest:
            if cutoff is not None and created < cutoff:
                by_age[id_] = size
            elif count > self.settings.max_messages or nbytes > self.settings.max_bytes:
                by_bounds[id_] = size
            else:
                break
            count -= 1
            nbytes -= size
        oldest.close()  # finish the read before deleting
        for chunk in _chunks([*by_age, *by_bounds]):
            conn.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        if by_bounds and not self._evicting:
            log.warning(
                "outbox full (outbox.max_messages %d, max_bytes %d): dropping the oldest messages",
                self.settings.max_messages,
                self.settings.max_bytes,
            )
        self._evicting = bool(by_bounds)
        return by_age, by_bounds

    def delivered(self, ids: Iterable[int]) -> None:
        """The broker acknowledged these: delete them (one transaction; unknown ids are ignored)."""
        wanted = sorted(set(ids))
        if not wanted:
            return
        with self._lock:
            with self._tx() as conn:
                gone: list[tuple[int, int]] = []
                for chunk in _chunks(wanted):
                    gone += conn.execute(
                        f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))}) RETURNING id, size", chunk
                    ).fetchall()
            self._deleted_bytes += sum(size for _, size in gone)
            if len(gone) == self._stats.backlog and self._deleted_bytes > VACUUM_BYTES:
                self._deleted_bytes = 0
                self._shrink()
            self._stats.delivered += len(gone)
            self._stats.duplicates_possible += sum(1 for id_, _ in gone if id_ <= self._restart_boundary)
            self._stats.backlog -= len(gone)
            self._stats.backlog_bytes -= sum(size for _, size in gone)

    def _shrink(self) -> None:
        """The backlog is gone: give its free pages back to the file system (a disk fills during outages)."""
        try:
            # executescript steps the pragma to the end; execute() would free a single page
            self._live().executescript("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")
        except sqlite3.Error as exc:  # only space lost; the messages are safe
            log.warning("outbox %s: cannot shrink the file: %s", self.path, exc)

    def refused(self, id: int, reason: str) -> bool:
        """The broker refused it: count an attempt; at max_attempts quarantine it and return True."""
        with self._lock:
            with self._tx() as conn:
                row = conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1 WHERE id = ? RETURNING attempts, size, topic", (id,)
                ).fetchone()
                if row is None or row[0] < self.settings.max_attempts:
                    return False  # the attempt is committed
                conn.execute(
                    f"INSERT INTO quarantine ({_COLUMNS}, reason, quarantined) SELECT {_COLUMNS}, ?, ? "
                    "FROM outbox WHERE id = ?",
                    (reason[:500], self._clock(), id),
                )
                conn.execute("DELETE FROM outbox WHERE id = ?", (id,))
                conn.execute(
                    "DELETE FROM quarantine WHERE id NOT IN (SELECT id FROM quarantine ORDER BY id DESC LIMIT ?)",
                    (QUARANTINE_KEEP,),
                )
                held = conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
            self._stats.backlog -= 1
            self._stats.backlog_bytes -= row[1]
            self._stats.quarantined = held
        log.warning(
            "outbox: message %d on %s refused %d times (%s); quarantined, no longer sent", id, row[2], row[0], reason
        )
        return True

    def expire(self, now: float | None = None) -> int:
        """Drop messages older than max_age_s; returns how many."""
        if self.settings.max_age_s <= 0:
            return 0
        cutoff = (self._clock() if now is None else now) - self.settings.max_age_s
        with self._lock:
            with self._tx() as conn:
                sizes = [
                    size
                    for (size,) in conn.execute(
                        "DELETE FROM outbox WHERE created < ? RETURNING size", (cutoff,)
                    ).fetchall()
                ]
            self._stats.evicted_age += len(sizes)
            self._stats.backlog -= len(sizes)
            self._stats.backlog_bytes -= sum(sizes)
        if sizes:
            log.warning(
                "outbox: dropped %d messages older than outbox.max_age_s (%g s)", len(sizes), self.settings.max_age_s
            )
        return len(sizes)

    def mark_restart(self) -> int:
        """Call once after opening: messages left by a previous run count as possible duplicates when delivered."""
        with self._lock:
            self._restart_boundary = self._read("SELECT COALESCE(MAX(id), 0) FROM outbox", ())[0][0]
            if self._stats.backlog:
                log.info(
                    "outbox: %d messages from the previous run will be sent; the broker may have some already",
                    self._stats.backlog,
                )
            return self._stats.backlog

    # -- reading ---------------------------------------------------------------------------------------------

    def pending(self, after_id: int = 0, limit: int = 256) -> list[Message]:
        """Messages waiting for the broker with ids above after_id, in publish order."""
        rows = self._read(f"SELECT {_COLUMNS} FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
        return [_message(row) for row in rows]

    def quarantine(self, limit: int = 100) -> list[tuple[Message, str]]:
        """Quarantined messages, oldest first, with the broker's reason."""
        rows = self._read(f"SELECT {_COLUMNS}, reason FROM quarantine ORDER BY id LIMIT ?", (limit,))
        return [(_message(row[:7]), row[7]) for row in rows]

    def stats(self) -> OutboxStats:
        with self._lock:
            return dataclasses.replace(self._stats)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()  # the last connection checkpoints and removes the WAL
                self._conn = None
