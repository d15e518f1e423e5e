"""``edge-agent update`` (fetch, verify and install the latest release now, with progress) and
``edge-agent status`` (what the daemon last reported about itself; today: its models and updates)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.errors import ConfigError
from agent.state import resolve_state_dir


def cmd_update(config: Config, as_json: bool) -> int:
    """Stage the newest release into the store; the daemon canaries it and switches at its next check."""
    from agent.ota.updater import Updater

    if config.ota.manifest_url is None or not config.ota.keys:
        raise ConfigError("set ota.manifest_url and ota.keys in the config to fetch releases")
    releases = {p.model.release for p in config.pipelines if p.model.release}
    if not releases:
        raise ConfigError("no pipeline follows a release: set model.release in a pipeline")
    state_dir = resolve_state_dir(config.agent.state_dir)
    updater = Updater(config.ota, state_dir, releases, config.backend_configs, report=_progress(as_json))
    staged = asyncio.run(updater.stage())
    status = updater.status
    if status.state in ("rejected", "failed"):
        raise ConfigError(status.error or status.state)  # one line, exit 2
    if not as_json:
        if staged is None:
            print(f"\nnothing new: {status.release or 'the release'} version {status.installed} is in service",
                  file=sys.stderr)  # fmt: skip
        else:
            manifest, folder, _ = staged
            print(f"\nstaged {manifest.name} version {manifest.version} in {folder}; the agent tries it and switches "
                  f"at its next check (or at once on a message to its ota topic)", file=sys.stderr)  # fmt: skip
    return 0


def _progress(as_json: bool) -> Any:
    def show(status: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps(status), flush=True)
        elif status["state"] == "downloading" and status["total"]:
            done = 100 * status["bytes"] / status["total"]
            print(f"\rdownloading {status['release']} version {status['version']}: {status['bytes']:,} of "
                  f"{status['total']:,} bytes ({done:.0f}%)", end="", file=sys.stderr, flush=True)  # fmt: skip
        else:
            print(f"\r{status['state']}{' ' * 60}", end="", file=sys.stderr, flush=True)

    return show


def cmd_status(config: Config, as_json: bool) -> int:
    from agent.ota.store import ReleaseStore

    state_dir = resolve_state_dir(config.agent.state_dir)
    store = ReleaseStore(state_dir / "ota")
    models: dict[str, dict[str, Any]] = {}
    for p in config.pipelines:
        release = p.model.release
        current = store.current(release) if release else None
        models[p.name] = {
            "release": release,
            "version": current if current is not None else p.model.version,
            "factory": current is None,
            "previous": store.previous(release) if release else None,
            "rejected": {str(v): why for v, why in store.rejected(release).items()} if release else {},
        }
    ota = _read_json(state_dir / "ota" / "status.json")
    out = {"state_dir": str(state_dir), "pipelines": models, "ota": ota}
    if as_json:
        print(json.dumps(out, indent=2))
        return 0
    for name, m in models.items():
        where = f"release {m['release']} " if m["release"] else ""
        print(f"pipeline {name}: {where}version {m['version']}{' (factory model)' if m['factory'] else ''}")
        for version, why in m["rejected"].items():
            print(f"  rejected version {version}: {why}")
    if ota:
        about = f" {ota.get('release')} version {ota.get('version')}" if ota.get("version") is not None else ""
        error = f": {ota['error']}" if ota.get("error") else ""
        print(f"last update:{about} {ota.get('state')}{error}")
    return 0


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def add_parsers(sub: argparse._SubParsersAction[Any], config_arg: Any) -> None:
    update = sub.add_parser(
        "update",
        help="fetch, verify and install the latest model release now, with progress",
        description="Check ota.manifest_url, verify the signed manifest, download the release (resuming an "
        "interrupted download) and install it in the state folder. The running agent canaries it and switches "
        "at its next check, or at once on a message to <prefix>/<device_id>/ota.",
    )
    config_arg(update)
    update.add_argument("--json", action="store_true", help="print each status change as a JSON line")
    status = sub.add_parser(
        "status",
        help="show the models in service, their versions, and the last update",
        description="Read what the agent keeps in its state folder: installed releases, rejected versions and the "
        "last update's status.",
    )
    config_arg(status)
    status.add_argument("--json", action="store_true", help="print JSON")
