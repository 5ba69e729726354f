"""``spec-sidecar enable | disable | status``: a human operating the same targets as ``run``.

A human's toggle is recorded as ``changed-by: manual``: it clears a latch and resets the timed trial, a
manual enable is left alone for the grace period, and only a contrary pin stops it (``--pin`` sets the pin
first, so ``disable --pin`` turns speculation off and keeps it off). Exit codes: 0 done or already so,
1 refused (pinned, not restorable, conflict, ...), 2 usage or target error (the target cannot be read or
written). Standalone: ``python -m sidecar.cli.control_commands status --deployment-file deploy.yaml``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace

from sidecar.cli.flags import UsageError, add_settings_flags, settings_from_args
from sidecar.core.actuator import ActResult, Actuator, Outcome, TargetError, TargetView
from sidecar.core.annotations import timestamp
from sidecar.settings import TargetSettings
from sidecar.wiring import build_actuator

OK = (Outcome.CHANGED, Outcome.UNCHANGED)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, help_text in (
        ("status", "Show whether speculation is on for the target, and the sidecar's record on it."),
        ("disable", "Turn speculation off now (removes every speculation flag; recorded as manual)."),
        (
            "enable",
            "Restore exactly the flags the last disable removed, the num_speculative_tokens a reduce-k "
            "lowered, and the speculative config from before a schedule-k (recorded as manual).",
        ),
    ):
        p = subparsers.add_parser(name, help=help_text, description=f"{help_text} {DESCRIPTIONS[name]}")
        add_settings_flags(p, (TargetSettings,))
        p.add_argument("--json", action="store_true", help="Print one JSON object.")
        if name != "status":
            p.add_argument("--reason", default="manual", help="Recorded as the reason (default 'manual').")
            p.add_argument("--pin", action="store_true", help="Also pin the new state: the sidecar keeps it so.")
            p.add_argument("--unpin", action="store_true", help="Remove the pin first.")
        if name == "enable":
            p.add_argument("--force", action="store_true", help="Restore even though the args were edited since.")
        p.set_defaults(handler=run_command)


TARGET = (
    "The target is a Kubernetes Deployment (--deployment, --namespace; credentials from --kubeconfig, else "
    "in-cluster or ~/.kube/config) or a local YAML manifest (--deployment-file)."
)
DESCRIPTIONS = {
    "status": "It lists the speculation flags in the vLLM container's args, whether the last change was made by "
    "the sidecar or by hand and why, a pin or latch, and the next timed trial. " + TARGET,
    "disable": "A manual disable clears a latch and resets the timed trial; --pin also keeps speculation off "
    "until someone runs enable --unpin. " + TARGET,
    "enable": "The sidecar leaves a manual enable alone for its grace period (--manual-grace of run, an hour by "
    "default); an 'off' pin refuses it unless --unpin is given. " + TARGET,
}
# What to change when the target cannot be read, by the adapter's reason, for a Deployment and for a file.
KUBE_HINTS = {
    "no_config": "point {kubeconfig} at a kubeconfig file, or act on a local manifest with --deployment-file",
    "connection": "check {server_from} and that the API server is up",
    "timeout": "check {server_from} and that the API server is up",
    "not_found": "check --deployment and --namespace",
    "forbidden": "the credentials in use may not read or patch this Deployment (see docs/install.md for the RBAC)",
    "unauthorized": "the credentials in the kubeconfig ({kubeconfig}) were refused",
    "container_not_found": "name the vLLM container with --container",
}
FILE_HINTS = {
    "not_found": "give --deployment-file the path of a Deployment manifest (YAML)",
    "unreadable": "give --deployment-file the path of a Deployment manifest (YAML)",
    "not_yaml": "give --deployment-file the path of a Deployment manifest (YAML)",
    "container_not_found": "name the vLLM container with --container (and the Deployment with --deployment)",
}


def target_problem(
    exc: TargetError,
    deployment_file: str | None,
    server: str | None = None,
    *,
    kube_host: str | None = None,
) -> str:
    """One line: what is wrong with the target, and which flag to change."""
    kubeconfig = "--kubeconfig or KUBECONFIG"
    server_from = "--kube-host" if kube_host else f"the server address in the kubeconfig ({kubeconfig})"
    hints = FILE_HINTS if deployment_file else KUBE_HINTS
    hint = hints.get(exc.reason, "").format(kubeconfig=kubeconfig, server_from=server_from)
    detail = exc.detail
    if server and exc.reason in ("connection", "timeout"):
        detail = f"cannot reach the Kubernetes API server at {server} ({detail})"
    return f"{detail}; {hint}" if hint else detail


def run_command(args: argparse.Namespace) -> int:
    target = settings_from_args(args, TargetSettings)
    if not target.deployment and not target.deployment_file:
        raise UsageError("give --deployment NAME or --deployment-file PATH")
    actuator: Actuator | None = None
    # The API client's retries log a warning each; a person gets the one line below instead.
    kube_log = logging.getLogger("spec_sidecar.kube")
    level = kube_log.level
    kube_log.setLevel(logging.ERROR)
    try:
        actuator = build_actuator(target, elect=False)
        assert actuator is not None
        # Read first, for enable and disable too: a target that cannot be read is exit code 2 for every command.
        view = actuator.read()
        if args.command == "status":
            return _status(view, args.json)
        return _toggle(actuator, args)
    except TargetError as exc:
        server = getattr(actuator, "server", None) or target.kube_host
        raise UsageError(target_problem(exc, target.deployment_file, server, kube_host=target.kube_host)) from exc
    finally:
        kube_log.setLevel(level)


def _toggle(actuator: Actuator, args: argparse.Namespace) -> int:
    want = "on" if args.command == "enable" else "off"
    if args.pin or args.unpin:
        record = actuator.read().record
        pinned = replace(record, pin=want if args.pin else None, latched=None if args.pin else record.latched)
        result = actuator.write_record(pinned, "pin")
        if result.outcome not in OK:
            return _print(result, args)
    if args.command == "enable":
        result = actuator.enable(args.reason, None, force=args.force)
    else:
        result = actuator.disable(args.reason, None)
    return _print(result, args)


def _print(result: ActResult, args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps({"outcome": str(result.outcome), "action": result.action, "detail": result.detail,
                          "flags": list(result.flags)}))  # fmt: skip
    elif result.outcome is Outcome.ERROR:  # the write failed: like a target that cannot be read
        print(f"spec-sidecar {args.command}: {result.detail}", file=sys.stderr)
    else:
        flags = f" [{'; '.join(result.flags)}]" if result.flags else ""
        print(f"{result.outcome}: {result.detail}{flags}")
    if result.outcome is Outcome.ERROR:
        return 2
    return 0 if result.outcome in OK else 1


def _status(view: TargetView, as_json: bool) -> int:
    r = view.record
    body = {
        "target": view.target,
        "speculation": "on" if view.speculation else "off",
        "flags": [" ".join(f.text) for f in view.flags],
        "rollout_complete": view.rollout_complete,
        "state": r.state,
        "reason": r.reason,
        "changed_at": r.changed_at,
        "changed_by": str(r.changed_by) if r.changed_by else None,
        "restorable": r.removed is not None,
        # A lowered num_speculative_tokens (--reduce-k): from and to; 'enable' puts the original back.
        "reduced_k": {"from": r.reduced.get("from"), "to": r.reduced.get("to")} if r.reduced is not None else None,
        # A schedule of K per batch size written by --schedule-k; 'enable' takes it out.
        "k_schedule": r.scheduled.get("value") if r.scheduled is not None else None,
        "pin": r.pin,
        "latched": r.latched,
        "trial_attempts": r.trial_attempts,
        "next_trial_at": r.next_trial_at,
        "toggles": len(r.history),
        # A written config whose rollout the sidecar watches (docs/policy.md, "After a write").
        "rollout_watch": f"{view.watch.action} at {timestamp(view.watch.at)}" if view.watch is not None else None,
    }
    if as_json:
        print(json.dumps(body))
    else:
        for key, value in body.items():
            print(f"{key:>17}: {value if value not in (None, []) else '-'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spec-sidecar")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except UsageError as exc:
        print(f"spec-sidecar {args.command}: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
