#!/usr/bin/env python3
"""Write the reference ONNX networks (MobileNetV2, ResNet-18, a transformer block, an LSTM, variants).

Weights are seeded random numbers: the files are for profiling, planning and benchmarks, not for
accuracy. The builders live in ``tests/models/nets_onnx.py`` so the tests use the very same networks.

    scripts/make_reference_models.py OUT_DIR [--only mobilenet_v2.onnx ...]

Each file is profiled after writing, so the MAC and parameter totals can be compared at a glance
with the published figures (MobileNetV2 1.0 224: 300M MACs, 3.5M params; ResNet-18: 1.82G MACs,
11.69M params).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file, not installed: make the repository importable

from agent.models.onnx_profile import profile_onnx  # noqa: E402
from tests.models.nets_onnx import BUILDERS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write the .onnx files into (created if missing)")
    parser.add_argument("--only", nargs="+", choices=sorted(BUILDERS), help="write only these files")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or BUILDERS:
        path = BUILDERS[name](args.out / name)
        started = time.perf_counter()
        profile = profile_onnx(path)
        took = time.perf_counter() - started
        print(
            f"{path}: {path.stat().st_size / 1e6:.1f} MB, {profile.total_macs / 1e6:,.1f}M MACs, "
            f"{profile.total_params / 1e6:.3f}M params, profiled in {took * 1000:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
