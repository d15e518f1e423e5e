#!/usr/bin/env python3
"""Outbox benchmark: how many messages per second the durable outbox stores and clears, and its file size.

Each figure is the median of --repeat runs on fresh files (in a temporary folder, or under --dir: put it on
the state directory's file system), with result-sized JSON payloads (--payload bytes):

  - append, one by one: one transaction (one commit to the WAL) per message;
  - append + delivered, one by one: what the daemon does when each PUBACK is handled on its own;
  - the same with bare sqlite3 (the same pragmas, one INSERT and one DELETE per message, no bounds or
    counters): the floor the outbox is measured against, as a ratio from the same run;
  - append_many, and append_many + delivered(ids), in batches of --batch: one transaction for each call;
  - a backlog of --backlog messages (a broker outage) drained in batches: the file size at the peak, after
    the drain (free pages are given back once the backlog is empty) and after close.

The target is 3,000 append+delivered messages/s.

    .venv/bin/python scripts/bench_outbox.py [--count 10000] [--batch 256] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.mqtt.outbox import Outbox, OutboxSettings  # noqa: E402

TOPIC = "edge/bench/demo/result"
MIB = 1024 * 1024


def payload(size: int, seq: int) -> bytes:
    head = json.dumps({"seq": seq, "ts": time.time(), "model": "bench", "latency_ms": 1.5, "output": ""}).encode()
    return head[:-2] + b"x" * max(0, size - len(head)) + b'"}'


def file_bytes(path: Path) -> int:
    """The database with its -wal and -shm files."""
    return sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*") if p.is_file())


class Bench:
    def __init__(self, folder: Path, args: argparse.Namespace) -> None:
        self.folder = folder
        self.args = args
        self.settings = OutboxSettings(max_messages=max(args.backlog, args.count) + 1, max_bytes=1 << 30)
        self.data = [payload(args.payload, i) for i in range(args.count)]
        self.batches = [
            [(TOPIC, item, 1, False) for item in self.data[first : first + args.batch]]
            for first in range(0, args.count, args.batch)
        ]
        self.files = itertools.count()

    def rate(self, body: Callable[[Outbox], None]) -> float:
        """Median messages/s of body over --repeat fresh outboxes."""
        rates: list[float] = []
        for _ in range(self.args.repeat):
            box = Outbox(self.folder / f"run-{next(self.files)}.sqlite", self.settings)
            start = time.perf_counter()
            body(box)
            rates.append(self.args.count / (time.perf_counter() - start))
            box.close()
        return statistics.median(rates)

    def bare_sqlite(self) -> float:
        rates: list[float] = []
        for _ in range(self.args.repeat):
            conn = sqlite3.connect(self.folder / f"bare-{next(self.files)}.sqlite", isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, topic TEXT, payload BLOB)")
            start = time.perf_counter()
            for item in self.data:
                row = conn.execute("INSERT INTO t (topic, payload) VALUES (?, ?)", (TOPIC, item)).lastrowid
                conn.execute("DELETE FROM t WHERE id = ?", (row,))
            rates.append(self.args.count / (time.perf_counter() - start))
            conn.close()
        return statistics.median(rates)

    def one_by_one(self, box: Outbox) -> None:
        for item in self.data:
            box.append(TOPIC, item)

    def pairs(self, box: Outbox) -> None:
        for item in self.data:
            box.delivered([box.append(TOPIC, item)])

    def batched(self, box: Outbox) -> None:
        for batch in self.batches:
            box.append_many(batch)

    def batched_pairs(self, box: Outbox) -> None:
        for batch in self.batches:
            box.delivered(box.append_many(batch))

    def backlog(self) -> dict[str, Any]:
        path = self.folder / "backlog.sqlite"
        box = Outbox(path, self.settings)
        total = self.args.backlog
        for first in range(0, total, self.args.batch):
            box.append_many(
                [
                    (TOPIC, self.data[i % self.args.count], 1, False)
                    for i in range(first, min(first + self.args.batch, total))
                ]
            )
        out: dict[str, Any] = {
            "backlog": total,
            "backlog_bytes": box.stats().backlog_bytes,
            "file_bytes_peak": file_bytes(path),
        }
        start = time.perf_counter()
        while batch := box.pending(limit=self.args.batch):
            box.delivered(m.id for m in batch)
        out["drain_per_s"] = total / (time.perf_counter() - start)
        out["file_bytes_drained"] = file_bytes(path)
        box.close()
        out["file_bytes_closed"] = file_bytes(path)
        return out

    def run(self) -> dict[str, Any]:
        a = self.args
        out: dict[str, Any] = {"count": a.count, "payload_bytes": a.payload, "batch": a.batch, "repeat": a.repeat}
        out["append_one_per_s"] = self.rate(self.one_by_one)
        out["append_deliver_one_per_s"] = self.rate(self.pairs)
        out["bare_sqlite_insert_delete_per_s"] = self.bare_sqlite()
        out["append_batched_per_s"] = self.rate(self.batched)
        out["append_deliver_batched_per_s"] = self.rate(self.batched_pairs)
        out.update(self.backlog())
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="messages per run")
    parser.add_argument("--payload", type=int, default=300, help="payload bytes (a typical result message)")
    parser.add_argument("--batch", type=int, default=256, help="messages per append_many / delivered call")
    parser.add_argument("--backlog", type=int, default=100_000, help="messages queued during the simulated outage")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is reported)")
    parser.add_argument("--dir", type=Path, help="folder for the outbox files (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-outbox-") as tmp:
        out = Bench(Path(tmp), args).run()
    if args.json:
        print(json.dumps(out, indent=2))
        return
    pair, bare = out["append_deliver_one_per_s"], out["bare_sqlite_insert_delete_per_s"]
    print(
        f"outbox: {out['count']:,} messages of {out['payload_bytes']} bytes, batches of {out['batch']}, "
        f"median of {out['repeat']} runs"
    )
    print(f"  append, one by one                 {out['append_one_per_s']:9,.0f} msg/s")
    print(f"  append + delivered, one by one     {pair:9,.0f} msg/s  ({pair / 3000:.1f}x the 3,000 target)")
    print(f"  bare sqlite3 insert + delete       {bare:9,.0f} msg/s  (the outbox reaches {pair / bare:.0%} of it)")
    print(f"  append_many, batched               {out['append_batched_per_s']:9,.0f} msg/s")
    print(
        f"  append + delivered, batched        {out['append_deliver_batched_per_s']:9,.0f} msg/s  "
        f"({out['append_deliver_batched_per_s'] / 3000:.1f}x the target)"
    )
    print(f"  drain of a {out['backlog']:,}-message backlog  {out['drain_per_s']:9,.0f} msg/s")
    print(
        f"  file: {out['backlog_bytes'] / MIB:.1f} MiB of messages -> {out['file_bytes_peak'] / MIB:.1f} MiB "
        f"at the peak, {out['file_bytes_drained'] / MIB:.2f} MiB drained, {out['file_bytes_closed'] / MIB:.2f} MiB "
        "after close"
    )


if __name__ == "__main__":
    main()
