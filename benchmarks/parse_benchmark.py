"""Our SampleParser vs prometheus_client's parser doing the same work on real vLLM /metrics payloads.

The work: parse the text and keep only the samples whose names the sidecar reads. Payloads:
  (a) one real scrape from tests/fixtures/vllm/ (the largest one);
  (b) a ~6 MB payload built at run time from the real scrapes: every series that carries an ``engine`` label
      is repeated under many data-parallel engine values (each engine takes its values from one of the
      captures in turn), families stay contiguous under their HELP/TYPE lines, other series appear once.
Each timing is the median of several runs of this process's CPU time (the machine is shared: wall time would
measure the neighbours); ours and theirs alternate so what noise is left hits both. Linearity
is shown by timing ours at 1x, 2x and 4x the big payload.

    .venv/bin/python benchmarks/parse_benchmark.py [--fixtures DIR] [--target-mb 6] [--runs 5]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from sidecar.core.catalog import openmetrics_aliases, wanted_sample_names
from sidecar.core.exposition import SampleParser

REPO = Path(__file__).resolve().parents[1]
WANTED = wanted_sample_names()
ALIASES = openmetrics_aliases(WANTED)
KEEP = WANTED | frozenset(ALIASES)
_ENGINE = re.compile(r'engine="[^"]*"')
_FAMILY = re.compile(r"# (?:HELP|TYPE) (\S+)")


# A runner is made before the clock starts; the function it returns is timed on one payload.
Runner = Callable[[], Callable[[str], object]]


def ours_cold() -> Callable[[str], object]:
    """A new parser: no label set learnt from an earlier scrape (the headline number)."""
    return SampleParser(WANTED, ALIASES).parse


def ours_warm(parser: SampleParser) -> Runner:
    """The sidecar's steady state: one parser for the process, label sets already seen at the last scrape."""
    return lambda: parser.parse


def theirs_runner() -> Callable[[str], object]:
    return theirs


def theirs(text: str) -> list[object]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name in KEEP]


def _blocks(text: str) -> list[tuple[str, list[str], list[str]]]:
    """(family, header lines, sample lines) in text order; a family starts at its first HELP/TYPE line."""
    blocks: list[tuple[str, list[str], list[str]]] = []
    for line in text.splitlines():
        header = _FAMILY.match(line)
        if header and (not blocks or blocks[-1][0] != header.group(1)):
            blocks.append((header.group(1), [line], []))
        elif header:
            blocks[-1][1].append(line)
        elif line and not line.startswith("#"):
            if not blocks:
                blocks.append(("", [], []))
            blocks[-1][2].append(line)
    return blocks


def data_parallel_payload(captures: list[str], engines: int) -> str:
    """The first capture's layout, each engine-labelled series repeated for ``engines`` engine values."""
    template = _blocks(captures[0])
    by_family = [{family: samples for family, _, samples in _blocks(c)} for c in captures]
    out: list[str] = []
    for family, header, samples in template:
        out += header
        fixed = [line for line in samples if not _ENGINE.search(line)]
        out += fixed
        for engine in range(engines):
            source = by_family[engine % len(by_family)].get(family, samples)
            replacement = f'engine="{engine}"'
            out += [_ENGINE.sub(replacement, line) for line in source if _ENGINE.search(line)]
    return "\n".join(out) + "\n"


def sized_payload(captures: list[str], target_bytes: int) -> tuple[str, int]:
    one, two = len(data_parallel_payload(captures, 1)), len(data_parallel_payload(captures, 2))
    per_engine = max(two - one, 1)
    engines = max(1, math.ceil((target_bytes - (one - per_engine)) / per_engine))
    return data_parallel_payload(captures, engines), engines


def seconds(runner: Runner, text: str) -> float:
    """One timed call. The kept samples stay alive through a young-generation collection on the clock: our
    parser pauses the cyclic collector while it runs, and the pass its survivors cause later is its cost too."""
    fn = runner()
    start = time.process_time()
    result = fn(text)
    gc.collect(0)
    elapsed = time.process_time() - start
    del result
    return elapsed


def side_by_side(runners: list[Runner], text: str, runs: int) -> list[float]:
    """``runs`` rounds in which each runner takes its turn; the median of each."""
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(runs):
        for runner, series in zip(runners, times, strict=True):
            series.append(seconds(runner, text))
    return [statistics.median(series) for series in times]


def check_same_samples(parser: SampleParser, text: str) -> int:
    result = parser.parse(text)
    reference = [
        (ALIASES.get(s.name, s.name), tuple(sorted(s.labels.items())), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in KEEP
    ]
    mine = [(s.name, s.labels, s.value) for s in result.samples]
    same = len(mine) == len(reference) and all(
        a[:2] == b[:2] and (a[2] == b[2] or (math.isnan(a[2]) and math.isnan(b[2])))
        for a, b in zip(mine, reference, strict=True)
    )
    if result.bad_lines or not same:
        sys.exit(f"parsers disagree ({len(mine)} vs {len(reference)} samples, {result.bad_lines} bad lines)")
    return len(mine)


def report_side_by_side(parser: SampleParser, payloads: list[tuple[str, str]], runs: int) -> None:
    head = f"{'payload':<30}{'MB':>6}{'lines':>8}{'kept':>7}"
    print(f"{head}{'ours cold':>11}{'ours warm':>11}{'theirs':>10}{'ratio cold':>12}{'ratio warm':>12}")
    for label, text in payloads:
        kept = check_same_samples(parser, text)
        parser.parse(text)  # warm: this payload's label sets seen once, as at the previous scrape
        cold, warm, other = side_by_side([ours_cold, ours_warm(parser), theirs_runner], text, runs)
        sizes = f"{label:<30}{len(text) / 1e6:>6.2f}{text.count(chr(10)):>8}{kept:>7}"
        times = f"{cold * 1e3:>8.2f} ms{warm * 1e3:>8.2f} ms{other * 1e3:>7.0f} ms"
        print(f"{sizes}{times}{other / cold:>11.1f}x{other / warm:>11.1f}x")


def report_linearity(captures: list[str], engines: int, runs: int) -> None:
    print("\nlinearity (the data-parallel payload at 1x, 2x, 4x its size; growth relative to 1x):")
    print(f"{'size':<6}{'MB':>6}{'ours cold':>13}{'growth':>8}{'theirs':>12}{'growth':>8}{'ratio':>8}")
    base: list[float] = []
    for factor in (1, 2, 4):
        text = data_parallel_payload(captures, engines * factor)
        cold, other = side_by_side([ours_cold, theirs_runner], text, runs)
        base = base or [cold, other]
        mine = f"{cold * 1e3:>10.1f} ms{cold / base[0]:>7.2f}x"
        their = f"{other * 1e3:>9.0f} ms{other / base[1]:>7.2f}x"
        print(f"{factor}x{len(text) / 1e6:>10.1f}{mine}{their}{other / cold:>7.1f}x")


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--fixtures", type=Path, default=REPO / "tests" / "fixtures" / "vllm")
    args.add_argument("--target-mb", type=float, default=6.0)
    args.add_argument("--runs", type=int, default=5)
    opts = args.parse_args()

    files = sorted(opts.fixtures.glob("*.txt"))
    if not files:
        sys.exit(f"no real scrapes (*.txt) in {opts.fixtures}: this benchmark only runs on real payloads")
    captures = sorted((f.read_text() for f in files), key=len, reverse=True)
    parser = SampleParser(WANTED, ALIASES)
    big, engines = sized_payload(captures, int(opts.target_mb * 1_000_000))

    print(
        f"python {platform.python_version()}, prometheus_client {version('prometheus_client')}, {os.cpu_count()} CPUs"
    )
    print(f"{len(files)} real scrapes from {opts.fixtures.name}/; CPU time of this process, median of {opts.runs} runs")
    print("each, the parsers taking turns; 'cold' is a new parser (made off the clock), 'warm' reuses the sidecar's\n")
    report_side_by_side(
        parser, [("one real scrape", captures[0]), (f"{engines} data-parallel engines", big)], opts.runs
    )
    report_linearity(captures, engines, opts.runs)


if __name__ == "__main__":
    main()
