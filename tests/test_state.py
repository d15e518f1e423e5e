"""Sequence numbers survive restarts; the state directory is chosen and checked."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.state import SEQ_BLOCK, SeqAllocator, resolve_state_dir


def test_seq_strictly_increases_across_restarts(tmp_path: Path) -> None:
    first = SeqAllocator(tmp_path, "p")
    a = [first.next() for _ in range(5)]
    second = SeqAllocator(tmp_path, "p")  # a restart, or a crash: the reserved block is skipped
    b = [second.next() for _ in range(SEQ_BLOCK + 5)]
    third = SeqAllocator(tmp_path, "p")
    c = third.next()
    seqs = [*a, *b, c]
    assert a == [1, 2, 3, 4, 5]
    assert all(y > x for x, y in itertools.pairwise(seqs))
    assert SeqAllocator(tmp_path, "other").next() == 1


def test_corrupt_seq_state_continues_above_anything_seen(tmp_path: Path) -> None:
    alloc = SeqAllocator(tmp_path, "p")
    last = [alloc.next() for _ in range(3)][-1]
    (tmp_path / "seq-p.json").write_text("{not json")
    assert SeqAllocator(tmp_path, "p").next() > last


def test_state_dir_prefers_config_then_systemd(tmp_path: Path) -> None:
    assert resolve_state_dir(tmp_path / "a", {}) == tmp_path / "a"
    assert resolve_state_dir(None, {"STATE_DIRECTORY": f"{tmp_path}/b:{tmp_path}/c"}) == tmp_path / "b"


def test_unusable_state_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="no usable state directory"):
        resolve_state_dir(blocker / "sub", {})
