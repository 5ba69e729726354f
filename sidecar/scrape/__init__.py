"""Scraping the engine: its /metrics text to a window of snapshots to Stats to the ``specdecode_*`` gauges
(docs/architecture.md, "Where to start reading"; the formulas are docs/math.md, the engines' metrics
docs/engines.md)."""
