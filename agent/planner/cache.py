"""Plans cached on disk per (model digest, hardware fingerprint, objective)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

from accelerators.base import Capabilities
from accelerators.host import Host
from agent.planner.plan import Objective, Plan

log = logging.getLogger(__name__)


def plan_fingerprint(host: Host, capabilities: Mapping[str, Capabilities]) -> str:
    """Hardware + the accelerators a plan may use + what is known of them (a new calibration re-plans)."""
    facts = {name: caps.to_json() for name, caps in sorted(capabilities.items())}
    blob = json.dumps([host.fingerprint(), facts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class PlanCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, digest: str, fingerprint: str, objective: Objective) -> Path:
        return self.directory / f"{digest[:16]}-{fingerprint}-{objective}.json"

    def get(self, digest: str, fingerprint: str, objective: Objective) -> Plan | None:
        path = self.path(digest, fingerprint, objective)
        try:
            plan = Plan.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
            log.warning("ignoring unreadable cached plan %s: %s", path, exc)
            return None
        if plan.model_digest != digest or plan.fingerprint != fingerprint:
            return None
        return plan

    def put(self, plan: Plan) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(plan.model_digest, plan.fingerprint, plan.objective)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(plan.dumps())
        tmp.replace(path)
        return path
