"""A pipeline's model at start: the installed release it follows if there is one, else the factory model.

Before anything loads, the store finishes or undoes what a crash interrupted (``ReleaseStore.recover``).
An installed release that no longer loads is rolled back, and the next one down is tried, down to the
factory model in the config, so that a device always comes up serving.
"""

from __future__ import annotations

import logging
from pathlib import Path

from accelerators.base import BackendConfig
from agent.config import PipelineConfig
from agent.errors import AgentError
from agent.ota.apply import installed_manifest, release_pipeline
from agent.ota.store import ReleaseStore
from agent.pipeline import LoadedModel

log = logging.getLogger(__name__)


def load_serving(
    cfg: PipelineConfig, backends: tuple[BackendConfig, ...], state_dir: Path, store: ReleaseStore
) -> LoadedModel:
    name = cfg.model.release
    if not name:
        return LoadedModel(cfg, backends, state_dir)
    note = store.recover(name)
    if note:
        log.warning("release %s: %s", name, note)
    tried: set[int | None] = set()
    while (folder := store.current_dir(name)) is not None and (version := store.current(name)) not in tried:
        tried.add(version)
        try:
            return LoadedModel(release_pipeline(cfg, folder, installed_manifest(folder)), backends, state_dir)
        except AgentError as exc:
            back = store.rollback(name, f"does not load: {exc}")
            log.error("release %s version %s does not load (%s); back to %s", name, version, exc,
                      f"version {back}" if back else "the factory model")  # fmt: skip
    return LoadedModel(cfg, backends, state_dir)
