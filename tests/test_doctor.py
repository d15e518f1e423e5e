"""`edge-agent doctor` and `edge-agent profile` as a user runs them, and the calibration cache behind doctor."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from accelerators.calibration import cache_path, calibrate, load_cached, save
from accelerators.host import Host
from accelerators.registry import discover
from tests.conftest import DEMO_TOML, DIGITS_MODEL
from tests.test_cli import assert_one_line_error, cli


def _state(tmp_path: Path) -> dict[str, str]:
    return {"EDGE_AGENT_AGENT__STATE_DIR": str(tmp_path / "state")}


def test_doctor_json_lists_every_backend_with_a_reason_when_absent(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = cli("doctor", "--json", env=_state(tmp_path))
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    by_name = {a["name"]: a for a in report["accelerators"]}
    assert {"onnxruntime-cpu", "litert-cpu", "onnxruntime-cuda"} <= set(by_name)
    for entry in report["accelerators"]:
        assert set(entry) >= {"name", "available", "reason", "device", "capabilities", "calibration"}
        assert entry["available"] or entry["reason"], entry  # absent ones always say why
        assert entry["capabilities"]["formats"], entry
    assert by_name["onnxruntime-cpu"]["available"] and by_name["litert-cpu"]["available"]
    assert "onnxruntime-gpu" in by_name["onnxruntime-cuda"]["reason"]
    assert by_name["onnxruntime-cpu"]["calibration"] is None  # nothing measured in a fresh state dir
    assert report["host"]["cpus"] >= 1
    print(f"doctor --json took {elapsed:.2f} s")  # the < 3 s target is checked by a person, not asserted


def test_doctor_calibrates_caches_and_shows_cached_figures(tmp_path: Path) -> None:
    env = _state(tmp_path)
    proc = cli("doctor", "--calibrate", "--accelerator", "onnxruntime-cpu", "--budget", "0.05", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    measured = {a["name"]: a for a in json.loads(proc.stdout)["accelerators"]}["onnxruntime-cpu"]
    rates = measured["calibration"]["rates"]
    assert {"conv", "depthwise_conv", "pointwise_conv", "fully_connected", "matmul", "elementwise"} <= set(rates)
    assert all(r["macs_per_s"] > 0 for f, r in rates.items() if f in {"conv", "pointwise_conv", "fully_connected"})
    assert all(r["bytes_per_s"] > 0 and r["layer_ms"] > 0 for r in rates.values())
    assert measured["capabilities"]["measured"]["conv"] == rates["conv"]  # measured figures reach Capabilities
    cached = list((tmp_path / "state" / "calibration").glob("onnxruntime-cpu-*.json"))
    assert len(cached) == 1

    again = cli("doctor", env=env)  # no --calibrate: the cached figures are shown
    assert again.returncode == 0, again.stderr
    section = again.stdout.split("onnxruntime-cpu", 1)[1].split("\n\n")[0]
    assert "measured " in section and "conv" in section and "MAC/s" in section


def test_calibration_cache_is_per_hardware_and_survives_a_corrupt_file(tmp_path: Path) -> None:
    here = Host()
    backend = discover(here)["onnxruntime-cpu"]
    calibration = calibrate(backend, here, families=["conv", "elementwise"], budget_s=0.02)
    assert set(calibration.rates) == {"conv", "elementwise"}
    path = save(calibration, backend, here, tmp_path)
    loaded = load_cached(backend, here, tmp_path)
    assert loaded is not None and loaded.rates == calibration.rates

    # another machine (different /proc/cpuinfo) has another fingerprint: the figures do not carry over
    other_root = tmp_path / "other"
    (other_root / "proc").mkdir(parents=True)
    (other_root / "proc" / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Cortex-A76\n")
    other = Host(root=other_root)
    assert cache_path(tmp_path, backend, other) != path
    assert load_cached(backend, other, tmp_path) is None

    path.write_text("{ not json")
    assert load_cached(backend, here, tmp_path) is None


def test_doctor_user_errors_are_one_line(tmp_path: Path) -> None:
    env = _state(tmp_path)
    assert_one_line_error(cli("doctor", "--calibrate", "--accelerator", "tpu9", env=env), "unknown accelerator", "tpu9")
    assert_one_line_error(cli("doctor", "--accelerator", "litert-cpu", env=env), "--calibrate")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[accelerators]]\ntype = "litert"\nxnnpak = false\n[[pipelines]]\nname = "x"\n')
    assert_one_line_error(cli("doctor", "-c", str(bad), env=env), "unknown key 'xnnpak'")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[[accelerators]]\ntype = "litert"\nxnnpak = false\n', "unknown key 'xnnpak' in [accelerators.0]"),
        ('[[accelerators]]\ntype = "warp-drive"\n', "unknown type 'warp-drive'"),
        (
            '[[accelerators]]\ntype = "litert"\n[[accelerators]]\ntype = "litert"\n',
            "one [[accelerators]] entry per type",
        ),
    ],
)
def test_accelerator_config_errors_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "c.toml"
    pipelines = DEMO_TOML.read_text().split("[[pipelines]]", 1)[1]
    path.write_text(text + "[[pipelines]]" + pipelines)
    assert_one_line_error(cli("config", "check", str(path)), needle)


def test_profile_json_of_the_demo_mlp_matches_hand_counted_macs() -> None:
    proc = cli("profile", str(DIGITS_MODEL), "--json")
    assert proc.returncode == 0, proc.stderr
    profile = json.loads(proc.stdout)
    # 64 -> 32 -> 10 fully connected: MACs and parameters counted by hand
    assert profile["total_macs"] == 64 * 32 + 32 * 10
    assert profile["total_param_bytes"] == 4 * (64 * 32 + 32 + 32 * 10 + 10)
    families = [layer["family"] for layer in profile["layers"]]
    assert families.count("fully_connected") == 2
    for layer in profile["layers"]:
        assert {"name", "op", "family", "macs", "param_bytes", "activation_bytes", "dtype"} <= set(layer)


def test_profile_table_and_errors(tmp_path: Path) -> None:
    proc = cli("profile", str(DIGITS_MODEL))
    assert proc.returncode == 0, proc.stderr
    assert "fully_connected" in proc.stdout and "total:" in proc.stdout and f"{64 * 32 + 32 * 10:,}" in proc.stdout
    assert_one_line_error(cli("profile", str(tmp_path / "missing.onnx")), "missing.onnx")
    junk = tmp_path / "model.pt"
    junk.write_bytes(b"\x00" * 10)
    assert_one_line_error(cli("profile", str(junk)), "cannot profile .pt")
    assert_one_line_error(cli("profile", str(DIGITS_MODEL), "--input", "x=1,a"), "NAME=D1,D2")
