"""The ``spec-sidecar`` commands (the top layer; docs/architecture.md): ``run`` starts what :mod:`sidecar.wiring`
builds, ``report`` and ``probe`` measure without running anything, ``status``/``enable``/``disable`` operate the
target by hand (docs/policy.md). Flags come from the Settings sections (docs/configuration.md)."""
