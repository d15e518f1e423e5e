"""Versions of a model on disk, installed and switched so that a crash at any moment leaves a usable state.

Layout under ``root`` (``<state_dir>/ota``)::

    staging/<name>-<version>/      downloads in progress (*.part), kept across restarts for resume
    releases/<name>/<version>/     complete releases (manifest.json + files), never modified once there
    releases/<name>/current        -> <version> (relative symlink; absent: the factory model)
    releases/<name>/previous       -> <version>
    journal-<name>.json            the last switch: {"version", "from", "step", "at"} (+ "reason" on a rollback)
    rejected-<name>.json           {"<version>": "reason"}: versions not to be tried again

Two atomic steps carry the safety: a staging folder becomes a release by one rename, and ``current`` moves
by renaming a temporary symlink over it. Files and folders are fsynced before the step that makes them
visible, so ``current`` only ever names a complete release, never a half-written one or a mix of two.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.errors import OtaError
from agent.ota.disk import discard, fsync_path, makedirs_synced, point_link, remove
from agent.ota.faults import crashpoint
from agent.schema import NAME_PATTERN
from agent.state import atomic_write

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"  # agent.ota.manifest.MANIFEST_NAME; not imported so the store stands on its own
_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Journal:
    """The last switch of a model: to ``version`` from ``from_version`` (None: the factory model)."""

    version: int
    from_version: int | None
    step: str  # "switched" (on trial) | "committed" | "rolled-back"
    at: str
    reason: str | None = None


class ReleaseStore:
    """Installed releases of each model under one folder, and which of them is in use."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # -- where things are -------------------------------------------------------------------------------

    def release_dir(self, name: str, version: int) -> Path:
        return self._releases(name) / str(_checked_version(version))

    def staging(self, name: str, version: int) -> Path:
        """The folder downloads of this release go to (created); what is already there is kept for resume."""
        path = self._staging_dir(name, version)
        with self._writing():
            makedirs_synced(path)
        return path

    def current(self, name: str) -> int | None:
        return self._link(name, "current")

    def previous(self, name: str) -> int | None:
        return self._link(name, "previous")

    def current_dir(self, name: str) -> Path | None:
        """The release folder in use, or None for the factory model."""
        version = self.current(name)
        if version is None:
            return None
        path = self.release_dir(name, version)
        return path if path.is_dir() else None

    def complete(self, name: str, version: int) -> bool:
        """manifest.json is there and every file it lists has its declared size (hashes were checked on download)."""
        folder = self.release_dir(name, version)
        try:
            files = _listed_files((folder / MANIFEST).read_bytes())
        except (OSError, ValueError):
            return False
        return _first_problem(folder, files) is None

    def journal(self, name: str) -> Journal | None:
        path = self.root / f"journal-{_checked_name(name)}.json"
        try:
            data = json.loads(path.read_bytes())
            frm, reason = data["from"], data.get("reason")
            return Journal(
                version=_checked_version(data["version"]),
                from_version=None if frm is None else _checked_version(frm),
                step=str(data["step"]),
                at=str(data["at"]),
                reason=None if reason is None else str(reason),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, OtaError) as exc:
            log.warning("%s: unreadable update journal (%s); ignoring it", path, exc)
            return None

    def rejected(self, name: str) -> dict[int, str]:
        path = self._rejected_path(name)
        try:
            data = json.loads(path.read_bytes())
            return {_checked_version(int(k)): str(v) for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError, OtaError) as exc:
            log.warning("%s: unreadable list of rejected versions (%s); ignoring it", path, exc)
            return {}

    # -- changing things ------------------------------------------------------------------------------

    def install(self, name: str, version: int, manifest_bytes: bytes) -> Path:
        """Turn the staging folder (all files downloaded and verified) into releases/<name>/<version>."""
        dest = self.release_dir(name, version)
        stage = self._staging_dir(name, version)
        try:
            files = _listed_files(manifest_bytes)
        except ValueError as exc:
            raise OtaError(f"{name} version {version}: unreadable manifest ({exc}); fetch the release again") from exc
        with self._writing():
            if dest.is_dir():
                if _same_files(dest, files) and self.complete(name, version):
                    # an earlier install got this far before the agent stopped
                    shutil.rmtree(stage, ignore_errors=True)
                    return dest
                if version in (self.current(name), self.previous(name)):
                    raise OtaError(f"{dest} is in use but differs from the release; run the agent once to recover it")
                discard(dest)
            if not stage.is_dir():
                raise OtaError(f"{name} version {version}: nothing downloaded in {stage}; fetch the release first")
            problem = _first_problem(stage, files)
            if problem is not None:
                raise OtaError(f"{name} version {version} is not fully downloaded: {problem} in {stage}")
            atomic_write(stage / MANIFEST, manifest_bytes)
            for entry in stage.iterdir():
                if entry.name not in files and entry.name != MANIFEST:
                    remove(entry)  # an old *.part or temp file must not ride along into the release
            for file_name in files:
                fsync_path(stage / file_name)
            fsync_path(stage)
            crashpoint("install-before-rename")
            makedirs_synced(dest.parent)
            stage.rename(dest)
            fsync_path(dest.parent)
            fsync_path(stage.parent)
            crashpoint("install-after-rename")
        log.info("installed %s version %d in %s", name, version, dest)
        return dest

    def switch(self, name: str, version: int) -> None:
        """Make an installed version current, on trial until commit() or rollback()."""
        if not self.complete(name, version):
            raise OtaError(f"{name} version {version} is not installed in {self.release_dir(name, version)}")
        old = self._usable(name, self.current(name))
        if old == version:
            return
        releases = self._releases(name)
        with self._writing():
            # the journal first: a crash after current moved must find the trial recorded
            self._write_journal(name, version, old, "switched")
            point_link(releases / "previous", old)
            crashpoint("switch-before-replace")
            point_link(releases / "current", version)
            crashpoint("switch-after-replace")
        log.info("%s: switched from %s to version %d (on trial)", name, _label(old), version)

    def commit(self, name: str) -> None:
        """Keep the current version; delete releases other than current and previous, and stale downloads."""
        version = self.current(name)
        if version is None:
            raise OtaError(f"{name}: no update to commit, the factory model is in use")
        journal = self.journal(name)
        frm = journal.from_version if journal is not None and journal.version == version else self.previous(name)
        with self._writing():
            self._write_journal(name, version, frm, "committed")
            self._prune(name, {version, self.previous(name)})
        log.info("%s: committed version %d", name, version)

    def rollback(self, name: str, reason: str) -> int | None:
        """Go back to the version the current one replaced (None: the factory model); the current is rejected."""
        bad = self.current(name)
        if bad is None:
            raise OtaError(f"{name}: no update to roll back, the factory model is in use")
        journal = self.journal(name)
        target = journal.from_version if journal is not None and journal.version == bad else self.previous(name)
        if target == bad or not self._usable(name, target):
            target = None
        releases = self._releases(name)
        with self._writing():
            # rejected first: if the agent dies from here on, the bad version must not be tried again
            self.reject(name, bad, reason)
            point_link(releases / "current", target)
            if self.previous(name) in (target, bad):
                point_link(releases / "previous", None)
            self._write_journal(name, bad, target, "rolled-back", reason)
            self._prune(name, {target, self.previous(name)})
        log.warning("%s: rolled back from version %d to %s: %s", name, bad, _label(target), reason)
        return target

    def reject(self, name: str, version: int, reason: str) -> None:
        entries = self.rejected(name)
        entries[_checked_version(version)] = reason
        data = json.dumps({str(v): entries[v] for v in sorted(entries)}, indent=1).encode()
        with self._writing():
            makedirs_synced(self.root)
            atomic_write(self._rejected_path(name), data)

    def recover(self, name: str) -> str | None:
        """Repair what a crash left, before anything is loaded; a line saying what was done, or None."""
        done: list[str] = []
        releases = self._releases(name)
        with self._writing():
            self._remove_temporaries(name)
            current = self.current(name)
            if os.path.lexists(releases / "current") and not self._usable(name, current):
                previous = self.previous(name)
                fallback = previous if previous != current and self._usable(name, previous) else None
                point_link(releases / "current", fallback)
                what = "an unreadable link" if current is None else f"missing or incomplete version {current}"
                done.append(f"current pointed at {what}, now {_label(fallback)}")
            previous = self.previous(name)
            if os.path.lexists(releases / "previous") and (
                previous == self.current(name) or not self._usable(name, previous)
            ):
                point_link(releases / "previous", None)
            done.extend(self._finish_switch(name))
            stale = self._stale_staging(name)
            for path in stale:
                shutil.rmtree(path)
            if stale:
                done.append(f"removed {len(stale)} outdated download folder(s)")
        if done:
            line = f"{name}: " + "; ".join(done)
            log.warning("%s", line)
            return line
        return None

    # -- helpers --------------------------------------------------------------------------------------

    def _finish_switch(self, name: str) -> list[str]:
        """Settle a switch or rollback the journal shows unfinished."""
        journal = self.journal(name)
        if journal is None:
            return []
        current = self.current(name)
        if journal.step == "switched" and current != journal.version:
            # the agent died before current moved: the new version never ran, so it may be tried again
            reason = f"the switch to version {journal.version} did not finish"
            self._write_journal(name, journal.version, journal.from_version, "rolled-back", reason)
            return [f"{reason}, staying on {_label(current)}"]
        if journal.step == "switched":
            reason = f"the agent stopped while version {journal.version} was on trial"
        elif journal.step == "rolled-back" and current == journal.version:
            reason = journal.reason or f"version {journal.version} was being rolled back"
        else:
            return []
        target = self.rollback(name, reason)
        return [f"{reason}, rolled back to {_label(target)}"]

    def _stale_staging(self, name: str) -> list[Path]:
        """Downloads of versions at or below the current one, rejected or already installed: never resumed."""
        current = self.current(name) or 0
        rejected = self.rejected(name)
        stale = []
        folder = self.root / "staging"
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            base, _, number = entry.name.rpartition("-")
            if base != name or not _VERSION.match(number) or not entry.is_dir():
                continue
            version = int(number)
            if version <= current or version in rejected or self.complete(name, version):
                stale.append(entry)
        return stale

    def _remove_temporaries(self, name: str) -> None:
        releases = self._releases(name)
        for entry in releases.iterdir() if releases.is_dir() else []:
            if entry.name.startswith(".prune-"):
                shutil.rmtree(entry)
            elif entry.name.startswith(".") and entry.name.endswith(".tmp"):
                entry.unlink()
        for base in (f"journal-{name}.json", f"rejected-{name}.json"):
            (self.root / f".{base}.tmp").unlink(missing_ok=True)
        staging = self.root / "staging"
        for folder in staging.glob(f"{name}-*") if staging.is_dir() else []:
            for entry in folder.glob("*.tmp") if folder.is_dir() else []:
                entry.unlink()  # a half-written manifest; *.part files stay for resume

    def _prune(self, name: str, keep: set[int | None]) -> None:
        releases = self._releases(name)
        for entry in sorted(releases.iterdir()) if releases.is_dir() else []:
            if _VERSION.match(entry.name) and not entry.is_symlink() and int(entry.name) not in keep:
                discard(entry)
                log.info("%s: removed version %s", name, entry.name)
        for path in self._stale_staging(name):
            shutil.rmtree(path)

    def _usable(self, name: str, version: int | None) -> int | None:
        return version if version is not None and self.complete(name, version) else None

    def _link(self, name: str, which: str) -> int | None:
        try:
            target = str((self._releases(name) / which).readlink())
        except OSError:  # absent, or not a symlink
            return None
        return int(target) if _VERSION.match(target) else None

    def _write_journal(self, name: str, version: int, frm: int | None, step: str, reason: str | None = None) -> None:
        entry: dict[str, object] = {"version": version, "from": frm, "step": step, "at": _now()}
        if reason is not None:
            entry["reason"] = reason
        makedirs_synced(self.root)
        atomic_write(self.root / f"journal-{name}.json", json.dumps(entry, indent=1).encode())

    def _releases(self, name: str) -> Path:
        return self.root / "releases" / _checked_name(name)

    def _staging_dir(self, name: str, version: int) -> Path:
        return self.root / "staging" / f"{_checked_name(name)}-{_checked_version(version)}"

    def _rejected_path(self, name: str) -> Path:
        return self.root / f"rejected-{_checked_name(name)}.json"

    @contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                hint = "free some space"
            elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                hint = "make it writable or set agent.state_dir"
            else:
                hint = "check the disk"
            where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(self.root) else ""
            raise OtaError(f"cannot update the OTA folder {self.root}{where}: {exc.strerror or exc}; {hint}") from exc


def _listed_files(manifest_bytes: bytes) -> dict[str, tuple[int, str]]:
    """File name -> (size, sha256) from the envelope's payload, read without checking signatures: the files
    were verified against a checked manifest before they were installed."""
    try:
        envelope = json.loads(manifest_bytes)
        payload = json.loads(base64.b64decode(envelope["payload"], validate=True))
        listed = payload["files"]
        if not isinstance(listed, dict) or not listed:
            raise ValueError("no files listed")
        files = {}
        for file_name, entry in listed.items():
            if not _FILE_NAME.match(file_name) or ".." in file_name or file_name == MANIFEST:
                raise ValueError(f"bad file name {file_name!r}")
            size, digest = entry["size"], entry["sha256"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(digest, str):
                raise ValueError(f"bad entry for {file_name}")
            files[file_name] = (size, digest)
        return files
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a release manifest ({exc!r})") from exc


def _first_problem(folder: Path, files: dict[str, tuple[int, str]]) -> str | None:
    for file_name, (size, _) in files.items():
        try:
            st = os.lstat(folder / file_name)
        except FileNotFoundError:
            return f"{file_name} is missing"
        if not stat.S_ISREG(st.st_mode):  # a symlink could point anywhere
            return f"{file_name} is not a regular file"
        if st.st_size != size:
            return f"{file_name} has {st.st_size} bytes, the manifest says {size}"
    return None


def _same_files(folder: Path, files: dict[str, tuple[int, str]]) -> bool:
    try:
        return _listed_files((folder / MANIFEST).read_bytes()) == files
    except (OSError, ValueError):
        return False


def _checked_name(name: str) -> str:
    if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
        raise OtaError(f"invalid model name {name!r}: use letters, digits, '_', '.' or '-' (at most 64)")
    return name


def _checked_version(version: object) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or not _VERSION.match(str(version)):
        raise OtaError(f"invalid release version {version!r}: it must be a whole number >= 1")
    return version


def _label(version: int | None) -> str:
    return "the factory model" if version is None else f"version {version}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
