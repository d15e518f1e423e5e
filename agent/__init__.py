"""edge-agent: an inference daemon for edge hardware."""

from __future__ import annotations

__version__ = "0.1.0"
