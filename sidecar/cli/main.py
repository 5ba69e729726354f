"""Command line: spec-sidecar run | report (more subcommands register themselves through COMMANDS).

Flags are generated from the Settings sections (:mod:`sidecar.cli.flags`), so every setting is a flag
(``--scrape-interval``) and an environment variable (``SPEC_SIDECAR_SCRAPE_INTERVAL``) with one description.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from sidecar import __version__
from sidecar.cli import control_commands, inject, probe
from sidecar.cli.control_commands import target_problem
from sidecar.cli.flags import UsageError, add_settings_flags, settings_from_args
from sidecar.core.actuator import TargetError
from sidecar.settings import Settings, check_url, host_port

if TYPE_CHECKING:  # imported lazily at run time: the CLI starts fast
    from sidecar.core.report import BucketSummary
    from sidecar.core.snapshot import Snapshot
    from sidecar.wiring import Sidecar

REPORT_FIELDS = (
    "threshold", "keep_threshold", "min_draft_tokens", "draft_cost_ratio", "speculative_config", "target_model",
    "scrape_timeout", "slo",
)  # fmt: skip

Handler = Callable[[argparse.Namespace], int]
EXIT_CODES = """exit codes:
  0    done, or already so
  1    refused: enable or disable left the target as it was, and says why
       (pinned, latched, not restorable, edited since, rollout in progress)
  2    cannot be done as asked: a bad flag or environment variable, or a
       source or target that cannot be read or written (a missing file, an
       unreachable URL or cluster, a server that is not a vLLM engine)
  130  interrupted (Ctrl-C)
Errors are one line on stderr, starting with "spec-sidecar COMMAND:".
"""


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions to the terminal as usual, but keeps the exit-code table as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text == EXIT_CODES:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def cmd_run(args: argparse.Namespace) -> int:
    import uvicorn

    from sidecar.web.app import create_app
    from sidecar.web.listener import bounded_protocol

    settings = settings_from_args(args, Settings)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per scrape is noise
    host, port = host_port(settings.listen)
    _check_free(host, port)
    try:
        if settings.deployment_file:  # a local file is cheap to read: a wrong path is refused now, not logged later
            from sidecar.adapters.manifest import ManifestActuator

            ManifestActuator(
                settings.deployment_file, container=settings.container, deployment=settings.deployment
            ).read()
        app = create_app(settings)
    except TargetError as exc:  # --deployment without a usable cluster configuration, for instance
        raise UsageError(target_problem(exc, settings.deployment_file, kube_host=settings.kube_host)) from exc
    # Everything alive now (modules, the app) lives as long as the process: keep it out of the collector's full
    # passes, which otherwise scan it all and stall every stream in flight for 20-30 ms (docs/benchmarks.md).
    gc.collect()
    gc.freeze()
    # Scrapes are parsed in a process of their own (sidecar/scrape/worker.py), but the thread pool still runs
    # sync routes (/metrics, /status) and the controller's steps. While one of those runs, the event loop waits
    # up to this long for the GIL each time it needs it, and one /healthz request needs it several times: at the
    # default 5 ms a request took 20-70 ms beside a busy thread, at 1 ms a few (docs/benchmarks.md, "Hostile
    # scrapes"). With no other thread running the loop never waits.
    sys.setswitchinterval(0.001)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level,
        access_log=False,
        http=bounded_protocol(
            settings.client_header_timeout, settings.client_body_timeout, _count_timeouts(app.state.sidecar)
        ),
        timeout_keep_alive=settings.keepalive_timeout,  # type: ignore[arg-type]  # uvicorn takes a float too
    )
    server = uvicorn.Server(config)
    if settings.metrics_listen is None:
        server.run()
    else:
        # Two listeners, one server (one event loop, one lifespan): the app tells them apart by the local port.
        server.run(sockets=[_listening_socket(host, port), _listening_socket(*host_port(settings.metrics_listen))])
    # As uvicorn.run: a server that never started (a port in use, a failed lifespan) is uvicorn's exit code 3.
    return 0 if server.started else 3


def _count_timeouts(sidecar: Sidecar) -> Callable[[str], None]:
    from sidecar.tap.recorder import ERROR_CLIENT_BODY_TIMEOUT, ERROR_CLIENT_HEADER_TIMEOUT
    from sidecar.web.listener import HEADER

    def count(which: str) -> None:
        sidecar.recorder.error(ERROR_CLIENT_HEADER_TIMEOUT if which == HEADER else ERROR_CLIENT_BODY_TIMEOUT)

    return count


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return 0


def _check_free(host: str, port: int) -> None:
    """Fail before starting when --listen is taken: uvicorn would log it among start-up lines and exit 3."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UsageError(
                f"--listen {host}:{port}: {exc.strerror or exc}; choose another port, or stop what listens there"
            ) from exc


def cmd_report(args: argparse.Namespace) -> int:
    from sidecar.adapters.model_config import configured_draft_cost_prior
    from sidecar.cli.advice_render import render_advice
    from sidecar.cli.report import render, render_buckets, render_measured
    from sidecar.core.advice import AdviceConfig, advise_stats, slo_from
    from sidecar.core.report import report_body
    from sidecar.core.stats import compute_stats

    settings = settings_from_args(args, Settings)
    snapshots = [_load_source(source, settings) for source in args.sources]
    config = settings.analysis_config(configured_draft_cost_prior(settings.speculative_config, settings.target_model))
    stats = compute_stats(snapshots, config)
    thresholds = config.thresholds
    buckets, bucket_window, measured, schedules = (
        _tap_buckets(args.tap, settings.scrape_timeout) if args.tap else ([], None, {}, {})
    )
    advice = advise_stats(stats, buckets, AdviceConfig(thresholds=thresholds, slo=slo_from(settings.slo)))
    if args.json:
        body = report_body(stats, advice, buckets, threshold=thresholds.disable_below)
        for model in body["models"]:  # what the running sidecar measured, when --tap names one
            model["measured_speedup"] = measured.get(model["model_name"])
            model["load_schedule"] = schedules.get(model["model_name"])
        if args.tap:
            body["bucket_window_seconds"] = bucket_window
        print(json.dumps(body, indent=2))
        return 0
    console = Console()
    title = "since engine start" if len(snapshots) == 1 else "window between the two sources"
    render(stats, console, title, threshold=thresholds.disable_below, schedules=schedules)
    if measured:
        render_measured(measured, console, args.tap)
    if buckets:
        render_buckets(buckets, thresholds, console, bucket_window)
    for item in advice:
        render_advice(item, console)
    return 0


def _tap_buckets(
    sidecar_url: str, timeout: float
) -> tuple[list[BucketSummary], float | None, dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """The per-temperature buckets a running sidecar's tap has seen (its /api/report), over how many seconds
    (None from a sidecar too old to say), the speedup it measured per model and the load schedule it proposes
    (none from an older sidecar)."""
    import httpx

    from sidecar.core.report import bucket_from_json

    try:
        check_url(sidecar_url)
    except ValueError as exc:
        raise UsageError(f"--tap: {exc}") from exc
    url = sidecar_url.rstrip("/") + "/api/report"
    hint = "give --tap the address of a running `spec-sidecar run` (its --listen)"
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        raise UsageError(f"GET {url}: {type(exc).__name__}: {exc}; {hint}") from exc
    if response.status_code != 200:
        raise UsageError(f"GET {url}: HTTP {response.status_code}; {hint}")
    try:
        body = response.json()
        buckets = [bucket_from_json(row) for row in body["buckets"]]
        window = body.get("bucket_window_seconds")
        seconds = float(window) if isinstance(window, int | float) and not isinstance(window, bool) else None
        measured = {
            str(m["model_name"]): m["measured_speedup"]
            for m in body.get("models", [])
            if isinstance(m, dict) and isinstance(m.get("measured_speedup"), dict)
        }
        schedules = {
            str(m["model_name"]): m["load_schedule"]
            for m in body.get("models", [])
            if isinstance(m, dict) and isinstance(m.get("load_schedule"), dict)
        }
        return buckets, seconds, measured, schedules
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"GET {url}: not a sidecar's report ({type(exc).__name__}: {exc}); {hint}") from exc


def _load_source(source: str, settings: Settings) -> Snapshot:
    from sidecar.scrape.fetch import describe_failure, parse_payload, scrape_sync

    if source.startswith(("http://", "https://")):
        result = scrape_sync(source, settings.scrape_timeout, settings.scrape_max_bytes)
        if result.snapshot is None:
            raise UsageError(describe_failure(source, result))
        return result.snapshot
    path = Path(source)
    try:
        text = sys.stdin.read() if source == "-" else path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError as exc:
        # "127.0.0.1:8000" is a URL without its scheme far more often than a file name.
        hint = f"for a URL, write http://{source}" if ":" in source else "give a file of /metrics text or a URL"
        raise UsageError(f"{source}: no such file; {hint}") from exc
    except OSError as exc:
        raise UsageError(f"{source}: {exc.strerror or exc}") from exc
    # A file carries no trustworthy time (mtimes change on copy), so per-second rates stay unknown.
    snapshot, _bad, _examples = parse_payload(text, None)
    if snapshot.dialect is None:
        raise UsageError(f"{source}: no known engine metrics (vLLM, SGLang, ...) in it")
    return snapshot


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spec-sidecar",
        description="Keeps vLLM speculative decoding honest: measures acceptance, exports it, and turns "
        "speculation off when it does not pay. `spec-sidecar COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"spec-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="Run the sidecar: scrape, export, tap, decide.",
        description="Run beside a vLLM engine: scrape its /metrics, export the specdecode_* metrics and the "
        "/status page, pass its OpenAI API through to learn each request's temperature, and, with --deployment "
        "or --deployment-file, turn speculation off when acceptance stays low. It acts only after "
        "--warmup-windows windows (15 by default: 15 minutes at --window 60). Every flag is also an "
        "environment variable; a flag beats the environment, which beats the default.",
    )
    add_settings_flags(run)
    run.set_defaults(handler=cmd_run)

    report = sub.add_parser(
        "report",
        help="Acceptance, latency and verdict from /metrics text (a URL or a file; two sources = the window).",
    )
    report.add_argument("sources", nargs="+", metavar="SOURCE", help="URL or file of /metrics text ('-' = stdin)")
    report.add_argument("--json", action="store_true", help="Print one JSON object instead of tables.")
    report.add_argument(
        "--tap",
        metavar="SIDECAR_URL",
        help="A running sidecar (e.g. http://127.0.0.1:8081): add the per-temperature buckets its tap has seen, "
        "and judge the mixed-workload trap with them.",
    )
    add_settings_flags(report, only=REPORT_FIELDS)
    report.set_defaults(handler=cmd_report)

    for register in COMMANDS:
        register(sub)
    # The same exit codes for every subcommand, so say them once, in every --help.
    for command in (parser, *sub.choices.values()):
        command.epilog = EXIT_CODES
        command.formatter_class = HelpFormatter
    return parser


# Subcommands that live in their own modules: register(subparsers) -> None.
COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    probe.register,
    control_commands.register,
    inject.register,
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "report" and len(args.sources) > 2:
        parser.error("report takes one or two sources (earlier first)")
    handler: Handler = args.handler
    try:
        return handler(args)
    except UsageError as exc:
        print(f"spec-sidecar {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `spec-sidecar report --json x | head` is not an error
        # Point stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
