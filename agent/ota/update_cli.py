"""``edge-agent update``: fetch, verify and install the latest release now, with progress."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
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
