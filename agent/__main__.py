"""``python -m agent`` is the ``edge-agent`` command."""

from __future__ import annotations

import sys

from agent.cli import main

sys.exit(main())
