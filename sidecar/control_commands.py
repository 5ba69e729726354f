"""``spec-sidecar enable | disable | status``: a human operating the same targets as ``run``.

A human's toggle is recorded as ``changed-by: manual``: it clears a latch and resets the timed trial, a
manual enable is left alone for the grace period, and only a contrary pin stops it (``--pin`` sets the pin
first, so ``disable --pin`` turns speculation off and keeps it off). Exit codes: 0 done or already so,
1 refused (pinned, not restorable, conflict, ...), 2 usage or target error.

Register with the main CLI: ``COMMANDS.append(control_commands.register)``; standalone:
``python -m sidecar.control_commands status --deployment-file deploy.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from sidecar.actuator import ActResult, Actuator, Outcome, TargetView
from sidecar.control import build_actuator

OK = (Outcome.CHANGED, Outcome.UNCHANGED)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, help_text in (
        ("status", "Show whether speculation is on for the target, and the sidecar's record on it."),
        ("disable", "Turn speculation off now (removes every speculation flag; recorded as manual)."),
        ("enable", "Restore exactly the flags the last disable removed (recorded as manual)."),
    ):
        p = subparsers.add_parser(name, help=help_text, description=__doc__)
        _target_flags(p)
        p.add_argument("--json", action="store_true", help="Print one JSON object.")
        if name != "status":
            p.add_argument("--reason", default="manual", help="Recorded as the reason (default 'manual').")
            p.add_argument("--pin", action="store_true", help="Also pin the new state: the sidecar keeps it so.")
            p.add_argument("--unpin", action="store_true", help="Remove the pin first.")
        if name == "enable":
            p.add_argument("--force", action="store_true", help="Restore even though the args were edited since.")
        p.set_defaults(handler=run_command)


def _target_flags(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument("--deployment", default=env("SPEC_SIDECAR_DEPLOYMENT"), help="Kubernetes Deployment name.")
    p.add_argument("--namespace", default=env("SPEC_SIDECAR_NAMESPACE"), help="Its namespace.")
    p.add_argument("--container", default=env("SPEC_SIDECAR_CONTAINER", "vllm"), help="The vLLM container.")
    p.add_argument("--deployment-file", default=env("SPEC_SIDECAR_DEPLOYMENT_FILE"), help="A local YAML manifest.")
    p.add_argument("--kubeconfig", default=env("KUBECONFIG"), help="Kubeconfig file (default: in-cluster/~/.kube).")
    p.add_argument("--kube-host", default=None, help="API server URL without credentials (tests, kubectl proxy).")


def run_command(args: argparse.Namespace) -> int:
    if not args.deployment and not args.deployment_file:
        print(f"spec-sidecar {args.command}: give --deployment NAME or --deployment-file PATH", file=sys.stderr)
        return 2
    try:
        actuator = build_actuator(args, elect=False)
        assert actuator is not None
        if args.command == "status":
            return _status(actuator.read(), args.json)
        return _toggle(actuator, args)
    except Exception as exc:  # the target could not be read: one line, exit 2
        print(f"spec-sidecar {args.command}: {exc}", file=sys.stderr)
        return 2


def _toggle(actuator: Actuator, args: argparse.Namespace) -> int:
    want = "on" if args.command == "enable" else "off"
    if args.pin or args.unpin:
        record = actuator.read().record
        pinned = replace(record, pin=want if args.pin else None, latched=None if args.pin else record.latched)
        result = actuator.write_record(pinned, "pin")
        if result.outcome not in OK:
            return _print(result, args.json)
    if args.command == "enable":
        result = actuator.enable(args.reason, None, force=args.force)
    else:
        result = actuator.disable(args.reason, None)
    return _print(result, args.json)


def _print(result: ActResult, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"outcome": str(result.outcome), "action": result.action, "detail": result.detail,
                          "flags": list(result.flags)}))  # fmt: skip
    else:
        flags = f" [{'; '.join(result.flags)}]" if result.flags else ""
        print(f"{result.outcome}: {result.detail}{flags}")
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
        "pin": r.pin,
        "latched": r.latched,
        "trial_attempts": r.trial_attempts,
        "next_trial_at": r.next_trial_at,
        "toggles": len(r.history),
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
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
