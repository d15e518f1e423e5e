"""Command line: argument parsing -> config -> logging -> asyncio.run(...).

User errors are one line on stderr and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from agent import __version__
from agent.config import (
    DEMO_CONFIG_FILE,
    Config,
    check_broker_files,
    check_config_files,
    default_config_file,
    json_schema,
    load_config,
)
from agent.errors import AgentError, SourceError
from agent.ota.release_cli import add_release_parser, run_release
from agent.ota.update_cli import add_parsers as add_update_parsers
from agent.status_cli import add_parser as add_status_parser

log = logging.getLogger("agent")

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edge-agent",
        description="Edge inference daemon: sensor input -> inference on local accelerators -> MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser(
        "run",
        help="run the daemon",
        description="Run the daemon until SIGTERM/SIGINT. Without --config: $EDGE_AGENT_CONFIG, else "
        "/etc/edge-agent/config.toml if present, else the bundled demo pipeline.",
    )
    _config_arg(run)
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override agent.log_level")

    demo = sub.add_parser(
        "demo",
        help="run the bundled demo against a local broker and show what a subscriber receives",
        description="Use the broker on --host:--port if one answers; otherwise start mosquitto (if installed) or "
        "a built-in broker on loopback. Run the agent on the bundled face-detection demo, subscribe, print "
        "the results, then stop the agent cleanly.",
    )
    demo.add_argument("--host", default="localhost", help="broker to use if reachable (default: %(default)s)")
    demo.add_argument("--port", type=int, default=1883, help="broker port (default: %(default)s)")
    demo.add_argument("--count", type=int, default=8, help="results to receive before stopping (default: %(default)s)")
    demo.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    demo.add_argument("--json", action="store_true", help="print each result message as received (JSON lines)")
    demo.add_argument(
        "--broker",
        choices=["auto", "mosquitto", "builtin"],
        default="auto",
        help="broker to start when none answers: mosquitto if installed, else built-in (default: %(default)s)",
    )

    add_release_parser(sub)
    add_update_parsers(sub, _config_arg)
    add_status_parser(sub, _config_arg)

    cfg = sub.add_parser("config", help="inspect and validate configuration", description="Configuration tools.")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", parser_class=_Parser)
    cfg_sub.required = True
    cfg_sub.add_parser("schema", help="print the JSON Schema of the config file", description="Print the JSON Schema.")
    check = cfg_sub.add_parser(
        "check",
        help="validate a config file (and the files it names)",
        description="Validate FILE with environment overrides applied; exit 0 if valid, 2 with one line if not.",
    )
    check.add_argument("file", type=Path, metavar="FILE")
    show = cfg_sub.add_parser(
        "show",
        help="print the effective configuration",
        description="Print the configuration in force, as JSON.",
    )
    _config_arg(show)

    doctor = sub.add_parser(
        "doctor",
        help="list every accelerator: available or why not, capabilities, calibration",
        description="Probe every backend this build knows (available, or the reason not), show its capabilities "
        "from the catalog and, where measured, the calibration figures cached for this hardware.",
    )
    _config_arg(doctor)
    doctor.add_argument("--json", action="store_true", help='print JSON: {"accelerators": [...]}')
    doctor.add_argument(
        "--calibrate",
        action="store_true",
        help="time a representative layer of each family on each available accelerator and cache the figures",
    )
    doctor.add_argument(
        "--accelerator",
        action="append",
        default=[],
        metavar="NAME",
        help="with --calibrate: only this one (repeatable)",
    )
    doctor.add_argument(
        "--threads", type=int, default=1, metavar="N", help="with --calibrate: CPU threads per session (default: 1)"
    )
    doctor.add_argument(
        "--budget", type=float, default=0.25, metavar="SECONDS", help="timing budget per layer (default: %(default)s)"
    )

    profile = sub.add_parser(
        "profile",
        help="profile a model layer by layer: op, family, MACs, parameters, activations",
        description="Read an .onnx or .tflite model and print, per layer, its op, family, MACs, parameter and "
        "activation bytes, dtype and arithmetic intensity, with totals. Nothing is executed.",
    )
    profile.add_argument("model", type=Path, metavar="MODEL")
    profile.add_argument("--json", action="store_true", help="print the profile as JSON")
    profile.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=D1,D2,...",
        help="pin a dynamic input's shape (repeatable), e.g. images=1,3,224,224",
    )
    profile.add_argument(
        "--default-dim", type=int, default=1, metavar="N", help="value for other dynamic dimensions (default: 1)"
    )

    plan = sub.add_parser(
        "plan",
        help="place each part of a model on the accelerator that runs it fastest, and say why",
        description="Profile MODEL, time each layer on every available accelerator (with --estimate: estimate it "
        "from calibrated figures where 'doctor --calibrate' measured them, else catalog figures), find the cheapest "
        "placement over contiguous segments, never worse than the best single accelerator, and measure it against "
        "each accelerator running the whole model before adopting it, as the daemon does. Plans are cached per "
        "model and hardware.",
    )
    _placement_args(plan)
    plan.add_argument("--picture", type=Path, metavar="FILE.svg", help="also draw the plan as an SVG picture")
    plan.add_argument("--no-cache", action="store_true", help="plan again even if a cached plan fits")

    bench = sub.add_parser(
        "bench",
        help="measure the planned placement against every single-accelerator placement",
        description="Plan MODEL, then measure in one run (rotating rounds, each placement alone for a quarter second a "
        "turn) the plan and each accelerator that "
        "can run the whole model on its own: median and spread, predicted next to measured, per segment too.",
    )
    _placement_args(bench)
    bench.add_argument(
        "--runs", type=int, default=50, metavar="N", help="timed runs per placement, at least (default: 50)"
    )
    bench.add_argument("--rounds", type=int, default=5, metavar="N", help="turns of each placement (default: 5)")
    return parser


def _placement_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, metavar="MODEL")
    _config_arg(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--objective",
        choices=["latency", "throughput"],
        default="latency",
        help="latency: one frame as fast as possible; throughput: pipelined stages, frames in flight at once",
    )
    parser.add_argument(
        "--accelerator", action="append", default=[], metavar="NAME", help="consider only these (repeatable)"
    )
    parser.add_argument(
        "--input", action="append", default=[], metavar="NAME=D1,D2,...", help="pin a dynamic input's shape"
    )
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="place by the catalog and calibration figures alone (instant) instead of timing the model on each "
        "accelerator first and measuring the placements (seconds; cached), as the daemon does",
    )
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the default now


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, metavar="FILE", help="TOML config file")


def _setup_logging(level: str) -> None:
    # under systemd, journald adds its own timestamps
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else ("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)


def _load(path: Path | None) -> tuple[Config, Path]:
    chosen = path if path is not None else default_config_file()
    return load_config(chosen), chosen or DEMO_CONFIG_FILE


def _tune_malloc() -> None:
    """Keep large buffers (decoded frames) in mmap so freed ones go back to the OS.

    glibc raises its mmap threshold each time such a buffer is freed, after which frames come from the
    heap and its high-water mark stays resident; fixing the thresholds measured about 5 MB less idle RSS.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD (fixed, so no longer dynamic)
        libc.mallopt(-1, 256 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def cmd_run(args: argparse.Namespace) -> int:
    from agent.app import Agent

    _tune_malloc()
    config, source = _load(args.config)
    _setup_logging(args.log_level or config.agent.log_level)
    log.info("edge-agent %s starting with %s", __version__, source)
    return asyncio.run(Agent(config).run())


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo.runner import run_demo

    if args.count < 1:
        raise AgentError("--count must be at least 1")
    return run_demo(args.host, args.port, args.count, args.timeout, args.json, args.broker)


def _check_models(config: Config, source: Path) -> None:
    """Model files are plausible, self-contained files of their format (the daemon checks again on load)."""
    from accelerators.errors import AcceleratorError
    from accelerators.modelfile import check_model_file

    for p in config.pipelines:
        try:
            check_model_file(p.model.path)
        except AcceleratorError as exc:
            raise AgentError(f"{source}: pipelines.{p.name}.model.path: {exc}") from exc


def _check_sources(config: Config, source: Path) -> None:
    """Input files open as their pipelines open them at start (a video OpenCV cannot read, a file that is no
    WAV). The daemon fails only such a pipeline; the check names the problem before it runs."""
    from agent.sources.registry import check_source

    for p in config.pipelines:
        for i, src in enumerate(p.inputs):
            at = f"pipelines.{p.name}.source" + (f".sources[{i}]" if len(p.inputs) > 1 else "")
            try:
                check_source(src)
            except SourceError as exc:
                raise AgentError(f"{source}: {at}: {exc}") from exc


def cmd_config(args: argparse.Namespace) -> int:
    if args.config_command == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    if args.config_command == "check":
        config = load_config(args.file)
        _check_models(config, args.file)
        check_config_files(config, args.file, sources=True)
        _check_sources(config, args.file)
        check_broker_files(config, args.file)
        names = ", ".join(p.name for p in config.pipelines)
        print(f"{args.file}: valid ({len(config.pipelines)} pipeline(s): {names})")
        return 0
    config, _ = _load(args.config)
    print(config.model_dump_json(indent=2, exclude={"mqtt": {"password"}}))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from accelerators.errors import AcceleratorError
    from agent.doctor import examine, format_text, host_json
    from agent.state import resolve_state_dir

    _setup_logging("warning")
    if args.budget <= 0:
        raise AgentError("--budget must be positive")
    if not 1 <= args.threads <= 64:
        raise AgentError("--threads must be between 1 and 64")
    if args.accelerator and not args.calibrate:
        raise AgentError("--accelerator is used with --calibrate")
    config, _ = _load(args.config)
    try:
        cache_dir: Path | None = resolve_state_dir(config.agent.state_dir) / "calibration"
    except AgentError as exc:
        if args.calibrate:
            raise
        log.warning("calibration cache not read: %s", exc)
        cache_dir = None
    try:
        entries = examine(
            config.backend_configs,
            cache_dir,
            args.calibrate,
            args.accelerator,
            budget_s=args.budget,
            threads=args.threads,
        )
    except AcceleratorError as exc:
        raise AgentError(str(exc)) from exc
    if args.json:
        print(json.dumps({"host": host_json(), "accelerators": [e.to_json() for e in entries]}, indent=2))
    else:
        print(format_text(entries, cache_dir))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from agent.models.profile import parse_input_shape, profile_model
    from agent.models.report import format_profile

    if args.default_dim < 1:
        raise AgentError("--default-dim must be at least 1")
    shapes = dict(parse_input_shape(text) for text in args.input)
    profile = profile_model(args.model, shapes, args.default_dim)
    if args.json:
        print(json.dumps(profile.to_json(), indent=2))
    else:
        print(format_profile(profile))
    return 0


def _plan(args: argparse.Namespace, use_cache: bool) -> tuple[Any, Any, Any, Path]:
    from agent.models.profile import parse_input_shape
    from agent.placement import plan_for
    from agent.state import resolve_state_dir

    _setup_logging("warning")
    config, _ = _load(args.config)
    state_dir = resolve_state_dir(config.agent.state_dir)
    shapes = dict(parse_input_shape(text) for text in args.input)
    plan, profile, found = plan_for(
        args.model,
        args.objective,
        config.backend_configs,
        state_dir,
        shapes,
        args.accelerator,
        use_cache=use_cache,
        measure=not args.estimate,
    )
    return plan, profile, found, state_dir


def cmd_plan(args: argparse.Namespace) -> int:
    from agent.placement import layer_measurements, planned_layer_ms
    from agent.planner.measured import planning_ms
    from agent.planner.picture import render_svg
    from agent.planner.report import format_plan

    plan, profile, found, state_dir = _plan(args, use_cache=not args.no_cache)
    if args.picture:
        timed = layer_measurements(args.model, profile, found, state_dir)  # cached figures, if measured
        measured = planning_ms(timed, profile, found.capabilities) if timed else None
        svg = render_svg(plan, profile, planned_layer_ms(plan, profile, found.capabilities, measured))
        try:
            args.picture.write_text(svg)
        except OSError as exc:
            raise AgentError(f"cannot write the picture to {args.picture}: {exc.strerror or exc}") from exc
    print(plan.dumps() if args.json else format_plan(plan, profile))
    if args.picture and not args.json:
        print(f"picture: {args.picture}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from agent.bench import bench, format_bench

    if args.runs < 5:
        raise AgentError("--runs must be at least 5")
    if args.rounds < 1:
        raise AgentError("--rounds must be at least 1")
    plan, profile, found, state_dir = _plan(args, use_cache=True)
    result = bench(args.model, plan, profile, found, state_dir / "segments", runs=args.runs, rounds=args.rounds)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from agent.ota.update_cli import cmd_update as update

    config, _ = _load(args.config)
    _setup_logging("warning")
    return update(config, args.json)


def cmd_status(args: argparse.Namespace) -> int:
    from agent.status_cli import cmd_status as status

    default = default_config_file() if args.config is None else None
    if default is not None and not os.access(default, os.R_OK):  # the service's config, root:edge-agent 0640
        return status(None, args.json, unreadable=default)
    config, _ = _load(args.config)
    return status(config, args.json)


COMMANDS = {
    "run": cmd_run,
    "demo": cmd_demo,
    "config": cmd_config,
    "doctor": cmd_doctor,
    "profile": cmd_profile,
    "plan": cmd_plan,
    "bench": cmd_bench,
    "release": run_release,
    "update": cmd_update,
    "status": cmd_status,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except AgentError as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
