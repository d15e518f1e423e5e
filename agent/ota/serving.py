"""A pipeline's model at start: the installed release it follows if there is one, else the factory model.

Before anything loads, the agent lets the store finish or undo what a crash interrupted
(``ReleaseStore.recover``, once per release). An installed release that no longer loads is rolled back,
and the next one down is tried, down to the factory model in the config, so that a device always comes
up serving.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from pathlib import Path

from accelerators.base import BackendConfig
from agent.config import PipelineConfig
from agent.errors import AgentError
from agent.ota.store import ReleaseStore
from agent.pipeline import LoadedModel

log = logging.getLogger(__name__)

# pipelines that follow the same release load in parallel threads: one rollback per failed version
_rollback_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


def recover(store: ReleaseStore, pipelines: list[PipelineConfig]) -> None:
    """Finish or undo, once per release, what a crash interrupted (call before loading any model)."""
    for name in sorted({p.model.release for p in pipelines if p.model.release}):
        note = store.recover(name)
        if note:
            log.warning("release %s: %s", name, note)


def load_serving(
    cfg: PipelineConfig, backends: tuple[BackendConfig, ...], state_dir: Path, store: ReleaseStore
) -> LoadedModel:
    name = cfg.model.release
    if not name:
        return LoadedModel(cfg, backends, state_dir)
    from agent.ota.apply import installed_manifest, release_pipeline  # cryptography, httpx: only with a release

    tried: set[int | None] = set()
    while (folder := store.current_dir(name)) is not None and (version := store.current(name)) not in tried:
        tried.add(version)
        try:
            return LoadedModel(release_pipeline(cfg, folder, installed_manifest(folder)), backends, state_dir)
        except AgentError as exc:
            with _rollback_locks[name]:
                if store.current(name) == version:  # not rolled back already by a pipeline beside this one
                    back = store.rollback(name, f"does not load: {exc}")
                    log.error("release %s version %s does not load (%s); back to %s", name, version, exc,
                              f"version {back}" if back else "the factory model")  # fmt: skip
    return LoadedModel(cfg, backends, state_dir)
