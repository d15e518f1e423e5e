"""File-system steps that survive a power cut: fsynced folders, symlinks moved atomically, folders
removed without ever leaving a half-deleted one under a live name."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def point_link(link: Path, version: int | None) -> None:
    """Move a symlink atomically (a temporary link renamed over it), or remove it."""
    if version is None:
        if os.path.lexists(link):
            link.unlink()
            fsync_path(link.parent)
        return
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(str(version))
    tmp.replace(link)
    fsync_path(link.parent)


def discard(folder: Path) -> None:
    """Delete a release folder; renamed first, so no half-deleted folder ever sits under a version's name."""
    hidden = folder.with_name(f".prune-{folder.name}")
    if hidden.exists():
        shutil.rmtree(hidden)
    folder.rename(hidden)
    fsync_path(folder.parent)
    shutil.rmtree(hidden)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def makedirs_synced(path: Path) -> None:
    """mkdir -p, fsyncing each parent a folder is added to so the new folders survive a power cut."""
    if path.is_dir():
        return
    makedirs_synced(path.parent)
    path.mkdir(exist_ok=True)
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
