"""Prometheus text exposition (0.0.4) → samples, for a chosen set of sample names only.

An engine's /metrics carries hundreds of families we never look at (process, GC, HTTP, dozens of histograms).
Parsing only the lines whose sample name is wanted is what makes a scrape cheap: a C-level regex finds the
candidate lines, and only those are split into labels and value. Names are matched exactly, never by prefix,
so ``x_created`` can never be taken for ``x_total``.

Nothing here raises on bad input: a wanted line that does not parse is counted and its first few are kept
as examples for the caller to log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]

_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*(,|$)')
_VALUE = r"([^ \t\n]+)"
_ESCAPE = re.compile(r"\\(.)")
_UNESCAPE = {"n": "\n", "\\": "\\", '"': '"'}
_MAX_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Labels
    value: float

    def label(self, key: str, default: str = "") -> str:
        for k, v in self.labels:
            if k == key:
                return v
        return default


@dataclass(frozen=True, slots=True)
class ParseResult:
    samples: tuple[Sample, ...]
    bad_lines: int = 0
    bad_examples: tuple[str, ...] = field(default=())


class SampleParser:
    """Compiled once per set of wanted names; ``parse`` is then safe to call from any thread.

    ``aliases`` maps an alternative spelling to the canonical one: with an OpenMetrics Accept header
    prometheus_client may write ``vllm_spec_...`` where the family is ``vllm:spec_...``.
    """

    def __init__(self, wanted: Iterable[str], aliases: Mapping[str, str] | None = None) -> None:
        self._canonical: dict[str, str] = {name: name for name in wanted}
        for alias, canonical in (aliases or {}).items():
            if canonical in self._canonical:
                self._canonical[alias] = canonical
        names = sorted(self._canonical, key=len, reverse=True)
        alternatives = "|".join(re.escape(n) for n in names) or r"(?!x)x"
        # A candidate line: starts (after optional blanks) with a wanted name followed by '{' or a blank.
        self._candidate = re.compile(rf"^[ \t]*({alternatives})(?=[{{ \t])([^\n]*)$", re.MULTILINE)
        self._tail = re.compile(rf"^(?:\{{([^\n]*)\}})?[ \t]+{_VALUE}(?:[ \t]+(-?[0-9]+))?[ \t]*\r?$")

    def parse(self, text: str) -> ParseResult:
        samples: list[Sample] = []
        bad = 0
        examples: list[str] = []
        for match in self._candidate.finditer(text):
            sample = self._parse_line(match.group(1), match.group(2))
            if sample is None:
                bad += 1
                if len(examples) < _MAX_EXAMPLES:
                    examples.append(match.group(0)[:200])
            else:
                samples.append(sample)
        return ParseResult(tuple(samples), bad, tuple(examples))

    def _parse_line(self, name: str, rest: str) -> Sample | None:
        tail = self._tail.match(rest)
        if tail is None:
            return None
        blob, raw_value, _timestamp = tail.groups()
        value = _parse_float(raw_value)
        if value is None:
            return None
        labels: Labels = ()
        if blob:
            parsed = _parse_labels(blob)
            if parsed is None:
                return None
            labels = parsed
        return Sample(self._canonical[name], labels, value)


def _parse_float(raw: str) -> float | None:
    # Python's float() also takes '1_000' and 'infinity'; the exposition format does not.
    if "_" in raw:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _parse_labels(blob: str) -> Labels | None:
    pairs: list[tuple[str, str]] = []
    pos = 0
    end = len(blob.rstrip(" \t"))
    while pos < end:
        m = _LABEL.match(blob, pos, end)
        if m is None:
            return None
        key, raw, sep = m.groups()
        pairs.append((key, _ESCAPE.sub(_unescape, raw) if "\\" in raw else raw))
        pos = m.end()
        if not sep:
            break
    if pos < end:
        return None
    pairs.sort()
    return tuple(pairs)


def _unescape(m: re.Match[str]) -> str:
    ch = m.group(1)
    return _UNESCAPE.get(ch, "\\" + ch)
