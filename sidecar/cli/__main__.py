"""``python -m sidecar.cli``: the same as the ``spec-sidecar`` command."""

from sidecar.cli.main import main

raise SystemExit(main())
