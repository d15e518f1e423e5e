#!/usr/bin/env python3
"""How long `edge-agent profile` and `edge-agent doctor` take, and how right the MAC counts are.

Builds the reference networks (seeded random weights) in a temporary folder, then for each one runs
`edge-agent profile --json` as a user would (a fresh process: imports included) and reports its wall
time, the file size, and the MAC/parameter totals next to the published figures. Finally times
`edge-agent doctor --json` without calibration. Targets: profile of a 10 MB model < 2 s, doctor < 3 s.

    .venv/bin/python scripts/bench_profile.py [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file: make the repository (and its test model builders) importable

from tests.models import nets_onnx, nets_tflite  # noqa: E402

FACE_MODEL = ROOT / "agent" / "demo" / "assets" / "face_detection_short_range.tflite"

# name -> (builder, published MACs, published params). MobileNetV2's 3.50M params include BatchNorm's
# scale and shift, which these inference graphs fold into the convolutions (-17k).
NETS = {
    "mobilenet_v2.onnx": (nets_onnx.build_mobilenet_v2, 300e6, 3.50e6),
    "resnet18.onnx": (nets_onnx.build_resnet18, 1.82e9, 11.69e6),
    "mobilenet_v1.tflite": (nets_tflite.mobilenet_v1, 569e6, 4.2e6),
    "mobilenet_v2.tflite": (nets_tflite.mobilenet_v2, 300e6, 3.50e6),
}


def _edge_agent(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, check=True, cwd=ROOT)
    return time.perf_counter() - started, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as tmp:
        models: list[tuple[Path, float | None, float | None]] = [(FACE_MODEL, None, None)]
        for name, (build, macs, params) in NETS.items():
            models.append((build(Path(tmp) / name), macs, params))
        for path, published_macs, published_params in models:
            wall, out = _edge_agent("profile", str(path), "--json")
            profile = json.loads(out)
            rows.append(
                {
                    "model": path.name,
                    "mb": path.stat().st_size / 1e6,
                    "layers": len(profile["layers"]),
                    "macs": profile["total_macs"],
                    "published_macs": published_macs,
                    "params": profile["total_params"],
                    "published_params": published_params,
                    "profile_s": wall,
                }
            )
    doctor_s, out = _edge_agent("doctor", "--json")
    available = sum(a["available"] for a in json.loads(out)["accelerators"])
    if args.json:
        print(json.dumps({"profiles": rows, "doctor_s": doctor_s, "available": available}, indent=2))
        return 0
    head = f"{'model':<34}{'MB':>6}{'layers':>8}{'MACs':>12}{'published':>11}"
    print(head + f"{'params':>10}{'published':>11}{'profile s':>11}")
    for r in rows:
        pub_macs = f"{r['published_macs'] / 1e6:,.0f}M" if r["published_macs"] else "-"
        pub_params = f"{r['published_params'] / 1e6:.2f}M" if r["published_params"] else "-"
        print(
            f"{r['model']:<34}{r['mb']:>6.1f}{r['layers']:>8}{r['macs'] / 1e6:>11,.1f}M{pub_macs:>11}"
            f"{r['params'] / 1e6:>9.2f}M{pub_params:>11}{r['profile_s']:>11.2f}"
        )
    print(f"\nedge-agent doctor --json (no calibration): {doctor_s:.2f} s, {available} accelerators available")
    print("profile s and doctor s are wall times of a fresh `edge-agent` process, imports included")
    return 0


if __name__ == "__main__":
    sys.exit(main())
