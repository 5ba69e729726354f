"""`make cluster`: start the test cluster by hand, print how to reach it, stop it on Ctrl-C (docs/testing.md)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from tests.cluster.cluster import running_cluster


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="Keep the work dir (logs, etcd data) after stopping.")
    args = parser.parse_args()
    stop = threading.Event()
    # SIGTERM too, so `kill <pid>` stops the components as cleanly as Ctrl-C.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with running_cluster(keep=args.keep) as cluster:
        print(f"cluster up: {cluster.versions}")
        print(f"API server: {cluster.server}")
        for c in cluster.components:
            print(f"  {c.name:<24} pid {c.process.pid:<8} log {c.log}")
        print(f"\nexport KUBECONFIG={cluster.kubeconfig}")
        print(f"alias kubectl={cluster.bin['kubectl']}\n\nCtrl-C stops it and removes {cluster.workdir}", flush=True)
        stop.wait()
        print("stopping", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
