"""The agent's side of model updates: check, verify, download, install, canary, hot swap, watch, keep or roll back.

One check at a time, on a timer (a conditional GET of the manifest) or at once when a message arrives on
``<prefix>/<device_id>/ota`` or the fleet topic; pushes during a check are folded into one more check.
Nothing in a manifest is acted on before its signature checked out. The models in service keep serving
throughout: the new release is loaded and tried beside them, swapped in between two frames, and the old
one stays loaded during the watch so that a rollback is as quick as the switch. Every step is reported
on ``<prefix>/<device_id>/ota/status`` (retained) and in ``<state_dir>/ota/status.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerators.base import BackendConfig
from agent.errors import AgentError, ConfigError, OtaError
from agent.ota.apply import canary, release_pipeline
from agent.ota.fetch import Fetcher, FetchError, Tls, file_url
from agent.ota.manifest import Manifest, ManifestRejected, load_public_key, verify_manifest
from agent.ota.settings import OtaSection
from agent.ota.store import ReleaseStore
from agent.state import atomic_write

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from agent.pipeline import LoadedModel, Pipeline

log = logging.getLogger(__name__)

WATCH_POLL_S = 0.25  # how often live health is read during the watch
WATCH_MIN_RUNS = 20  # latency is judged only on at least this many frames
PROGRESS_EVERY_S = 1.0  # download progress is published at most this often
# The canary's latency budget is latency_factor x the current model's median, but never tighter than the
# median plus this: below a millisecond, scheduler noise on a busy device exceeds any factor (measured: a
# 0.09 ms model timed at 0.20 ms while the pipeline ran beside the canary).
BUDGET_SLACK_MS = 2.0
WATCH_SLACK_MS = 5.0  # likewise for the watch's p99 limit (a fresh session's first runs are slower)


@dataclass
class Status:
    # idle checking downloading installing staged canary watching committed rolled-back rejected failed
    state: str = "idle"
    release: str | None = None
    version: int | None = None  # the version this status is about
    installed: int | None = None  # the version in service (None: the factory model)
    bytes: int = 0  # received over the network for this version
    total: int = 0  # the release's size
    error: str | None = None
    ts: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Updater:
    def __init__(
        self,
        cfg: OtaSection,
        state_dir: Path,
        releases: Collection[str],
        backends: tuple[BackendConfig, ...] = (),
        report: Callable[[dict[str, Any]], None] = lambda status: None,
    ) -> None:
        """``releases``: the release names this device's pipelines follow (``model.release``); the pipelines
        themselves are handed over with ``serve`` (without them, ``stage`` still fetches and installs)."""
        self.cfg = cfg
        self.store = ReleaseStore(state_dir / "ota")
        self._state_dir = state_dir
        self._backends = backends
        self._report = report
        self._releases = frozenset(releases)
        self._serving: dict[str, list[Pipeline]] = {}
        try:
            self._keys: list[Ed25519PublicKey] = [load_public_key(k) for k in cfg.keys]
        except OtaError as exc:
            raise ConfigError(f"ota.keys: {exc}") from exc
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._etag: str | None = None
        self.status = Status()
        self.checks = 0

    def serve(self, pipelines: Sequence[Pipeline], replace: Pipeline | None = None) -> None:
        """The pipelines whose models a new release replaces, by the release they follow (``replace``: a
        pipeline these take the place of, after a restart)."""
        if replace is not None:
            for serving in self._serving.values():
                if replace in serving:
                    serving.remove(replace)
        for p in pipelines:
            if p.cfg.model.release:
                self._serving.setdefault(p.cfg.model.release, []).append(p)

    def trigger(self, why: str = "push") -> None:
        """Check as soon as possible (call on the event loop)."""
        log.info("OTA check requested (%s)", why)
        self._wake.set()

    async def run(self) -> None:
        """Check at start, then every interval (with 10% jitter, so a fleet does not check in step) or on a push."""
        if not self._releases:
            log.warning("OTA is enabled but no pipeline follows a release (set model.release); not checking")
            return
        self._wake.set()
        while True:
            timeout = self.cfg.interval_s * random.uniform(0.9, 1.1) if self.cfg.interval_s > 0 else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            await self.check()

    async def check(self) -> Status:
        """One whole update attempt; every failure is reported and leaves the models in service serving."""
        async with self._lock:
            self.checks += 1
            try:
                await self._check()
            except ManifestRejected as exc:
                self._set(state="rejected", error=str(exc))
                log.warning("OTA: manifest rejected (%s): %s", exc.reason, exc)
            except AgentError as exc:
                self._set(state="failed", error=str(exc))
                log.error("OTA: %s", exc)
            except Exception as exc:  # a bug here must not take the pipelines down with it
                log.exception("OTA: the update failed unexpectedly")
                self._set(state="failed", error=f"unexpected {type(exc).__name__}: {exc}")
            return self.status

    # ---- the steps ------------------------------------------------------------------------------

    async def _check(self) -> None:
        staged = await self.stage()
        if staged is not None:
            manifest, folder, etag = staged
            await self._try(manifest, folder)
            self._etag = etag

    async def stage(self) -> tuple[Manifest, Path, str | None] | None:
        """Fetch the manifest, verify it, download and install the release into the store (not in service
        yet): its manifest, folder and ETag; None when there is nothing new."""
        assert self.cfg.manifest_url is not None
        self._set(state="checking", error=None, bytes=0, total=0)
        fetcher = Fetcher(Tls(self.cfg.ca_file, self.cfg.client_cert, self.cfg.client_key), self.cfg.timeout_s)
        try:
            data, etag = await asyncio.to_thread(
                fetcher.manifest, self.cfg.manifest_url, self._etag, self.cfg.max_manifest_bytes
            )
            if data is None:
                self._set(state="idle")
                log.info("OTA: the manifest is unchanged")
                return None
            manifest = self._verify(data)
            installed = self.store.current(manifest.name)
            self._set(release=manifest.name, version=manifest.version, installed=installed)
            if manifest.version == installed:
                self._etag = etag
                self._set(state="idle")
                log.info("OTA: %s version %d is already in service", manifest.name, manifest.version)
                return None
            if manifest.version in self.store.rejected(manifest.name):
                self._etag = etag
                reason = self.store.rejected(manifest.name)[manifest.version]
                self._set(state="rejected", error=f"version {manifest.version} failed before: {reason}")
                return None
            folder = await self._download(fetcher, manifest, data)
        finally:
            fetcher.close()
        self._set(state="staged")
        return manifest, folder, etag

    def _verify(self, data: bytes) -> Manifest:
        """Signature, shape and expiry (``verify_manifest``), then: a release of ours, not older than ours."""
        manifest = verify_manifest(
            data, self._keys, threshold=self.cfg.threshold, max_bytes=self.cfg.max_manifest_bytes
        )
        if manifest.name not in self._releases:
            raise ManifestRejected("wrong-model", f"release {manifest.name!r} is not followed by any pipeline here "
                                   f"(model.release: {', '.join(sorted(self._releases))})")  # fmt: skip
        installed = self.store.current(manifest.name) or 0
        if manifest.version < installed:
            raise ManifestRejected(
                "downgrade",
                f"version {manifest.version} of {manifest.name} is older than version {installed} in service",
            )
        return manifest

    async def _download(self, fetcher: Fetcher, manifest: Manifest, data: bytes) -> Path:
        name, version = manifest.name, manifest.version
        total = sum(f.size for f in manifest.files.values())
        if self.store.complete(name, version):
            return self.store.release_dir(name, version)
        self._set(state="downloading", total=total)
        staging = self.store.staging(name, version)
        assert self.cfg.manifest_url is not None
        last = 0.0
        loop = asyncio.get_running_loop()

        def progress(got: int, size: int) -> None:  # fetcher's thread
            nonlocal last
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S or got == size:
                last = now
                loop.call_soon_threadsafe(lambda: self._set(bytes=received + got))

        received = 0
        for file, entry in manifest.files.items():
            dest = staging / file
            if dest.is_file() and dest.stat().st_size == entry.size:
                continue  # fetched and verified by an earlier attempt (the fetcher renames only verified files)
            url = file_url(self.cfg.manifest_url, file)
            try:
                received += await asyncio.to_thread(fetcher.download, url, dest, entry.size, entry.sha256, progress)
            except FetchError as exc:
                raise FetchError(f"version {version}, {file}: {exc}", exc.kind) from exc
        self._set(state="installing", bytes=received)
        return await asyncio.to_thread(self.store.install, name, version, data)

    async def _try(self, manifest: Manifest, folder: Path) -> None:
        """Canary, switch, watch; then keep or roll back."""
        from agent.pipeline import LoadedModel

        name, version = manifest.name, manifest.version
        serving = self._serving[name]
        self._set(state="canary")
        fresh: list[LoadedModel] = []
        try:
            for p in serving:
                cfg = release_pipeline(p.cfg, folder, manifest)
                model = await asyncio.to_thread(LoadedModel, cfg, self._backends, self._state_dir)
                fresh.append(model)
                current = p.model.health.snapshot().p50_ms
                budget = None if current is None else max(current * self.cfg.latency_factor, current + BUDGET_SLACK_MS)
                await asyncio.to_thread(canary, model.session, manifest, folder, budget)
        except AgentError as exc:
            for model in fresh:
                model.close()
            reason = f"canary failed: {exc}"
            self.store.reject(name, version, reason)
            raise OtaError(f"version {version}: {reason}") from exc
        await asyncio.to_thread(self.store.switch, name, version)
        olds = [p.swap_model(model) for p, model in zip(serving, fresh, strict=True)]
        self._set(state="watching", installed=version)
        problem = await self._watch(fresh, olds)
        if problem is None:
            await asyncio.to_thread(self.store.commit, name)
            for old in olds:
                old.close()
            self._set(state="committed", installed=version)
            log.info("OTA: %s version %d is in service", name, version)
            return
        for p, old in zip(serving, olds, strict=True):
            p.swap_model(old)
        for model in fresh:
            model.close()
        back = await asyncio.to_thread(self.store.rollback, name, problem)
        self._set(state="rolled-back", installed=back, error=f"version {version}: {problem}")
        log.error("OTA: %s version %d rolled back to %s: %s", name, version, back or "the factory model", problem)

    async def _watch(self, fresh: Sequence[LoadedModel], olds: Sequence[LoadedModel]) -> str | None:
        """The first sign of trouble in the new models' live health within the watch window, or None."""
        baseline = [old.health.snapshot().p99_ms for old in olds]
        deadline = time.monotonic() + self.cfg.watch_s
        while True:
            for model, old_p99 in zip(fresh, baseline, strict=True):
                h = model.health.snapshot()
                if h.errors:
                    return f"{h.errors} inference error(s) in {h.runs + h.errors} frames after the switch"
                if h.non_finite:
                    return f"{h.non_finite} of {h.runs} results held NaN or infinity after the switch"
                limit = (
                    None if old_p99 is None else max(old_p99 * self.cfg.watch_latency_factor, old_p99 + WATCH_SLACK_MS)
                )
                if limit is not None and h.runs >= WATCH_MIN_RUNS and h.p99_ms is not None and h.p99_ms > limit:
                    return f"p99 latency {h.p99_ms:.1f} ms after the switch, over {limit:.1f} ms"
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(WATCH_POLL_S)

    # ---- reporting ------------------------------------------------------------------------------

    def _set(self, **fields: Any) -> None:
        for key, value in fields.items():
            setattr(self.status, key, value)
        self.status.ts = time.time()
        data = self.status.to_json()
        try:
            (self._state_dir / "ota").mkdir(parents=True, exist_ok=True)
            atomic_write(self._state_dir / "ota" / "status.json", json.dumps(data).encode())
        except OSError as exc:  # a full or read-only disk must not stop the update from being reported
            log.warning("cannot write the OTA status file: %s", exc)
        self._report(data)
