"""Prometheus text exposition (0.0.4) → samples, for a chosen set of sample names only.

An engine's /metrics carries hundreds of families we never look at (process, GC, HTTP, dozens of histograms).
Parsing only the lines whose sample name is wanted is what makes a scrape cheap: a C-level regex finds the
candidate lines, and only those are split into labels and value. Names are matched exactly, never by prefix,
so ``x_created`` can never be taken for ``x_total``.

Nothing here raises on bad input: a wanted line that does not parse is counted and its first few are kept
as examples for the caller to log.
"""

from __future__ import annotations

import gc
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

Labels = tuple[tuple[str, str], ...]

_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
# One label pair, for label sets that hold escapes (the slow path). The value's repeat is possessive (``*+``):
# a plain ``(?:a|b)*`` makes the regex engine keep a backtracking record for every character it repeats over,
# about 160 bytes each, so one 15 MB escaped value cost 2.4 GB. No backtracking into the value can ever help (a
# '"' ends it unless escaped), so discarding the records changes no match.
_LABEL = re.compile(rf'[ \t]*({_NAME})[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*+)"[ \t]*(,|$)')
# With the blob split on '"', what stands before each value: a comma (one is prepended), the name and '='.
_KEY = re.compile(rf"[ \t]*,[ \t]*({_NAME})[ \t]*=[ \t]*")
_AFTER_LAST = re.compile(r"[ \t]*,?[ \t]*")
_MAX_EXAMPLES = 5
# Distinct label-name sequences are few (one per family layout); the bound only guards against hostile input.
_MAX_LAYOUTS = 4096
# The blob cache is bounded in entries and characters, whatever the engine sends. It only has to hold the label
# sets of one scrape of a steady engine (168 data-parallel engines: about 5,000); under label churn every entry is
# new at every scrape, and these bounds are what the cache can cost then (about 4 MB of text, 15 MB in all).
_MAX_BLOBS = 1 << 15
_MAX_BLOB_CHARS = 1 << 22
_UNSEEN: Labels = (("", ""),)  # a sentinel no parse can produce (label names are never empty)


class Sample(NamedTuple):
    """One sample line; a named tuple because a big scrape makes tens of thousands (a tuple is the cheapest)."""

    name: str
    labels: Labels
    value: float

    def label(self, key: str, default: str = "") -> str:
        for k, v in self.labels:
            if k == key:
                return v
        return default


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """What one parse may keep, whatever the engine sends (None: no bound).

    ``max_samples``: samples of wanted families; one more and the parse keeps none (a partial scrape would sum
    some engines and not others). ``max_label_bytes``: the label text of one line; a longer line is dropped.
    """

    max_samples: int | None = None
    max_label_bytes: int | None = None


NO_LIMITS = ParseLimits()


@dataclass(frozen=True, slots=True)
class ParseResult:
    samples: tuple[Sample, ...]
    bad_lines: int = 0
    bad_examples: tuple[str, ...] = field(default=())
    # Wanted lines not kept because of a ParseLimits bound, by reason: "label_bytes" (that line only), "series"
    # (every wanted line of the payload: over max_samples, nothing is kept).
    dropped: Mapping[str, int] = field(default_factory=dict)

    @property
    def over_series_limit(self) -> bool:
        return self.dropped.get("series", 0) > 0


# The text is parsed in pieces of about this many characters, cut after a newline. Each regex call then holds the
# GIL for a millisecond or two (one-shot commands parse in a thread; the running sidecar parses in a process of
# its own), and the list of matches in memory at once is one piece's. A line longer than a piece stays whole: a
# 15 MB line is one regex pass of some 10-20 ms, and a label text that long is then dropped unparsed.
CHUNK_CHARS = 1 << 18


def text_chunks(body: str | bytes | bytearray, size: int = CHUNK_CHARS) -> Iterator[str]:
    """``body`` in pieces that each end after a newline (or at the end), bytes decoded piece by piece.

    Cutting bytes after b'\\n' never splits a UTF-8 sequence (no byte of a multi-byte character is 0x0A), so
    decoding pieces gives the same text as decoding the whole; only one piece is ever held as str.
    """
    start = 0
    end = len(body)
    while start < end:
        at = min(start + size, end) - 1
        cut = body.find("\n", at) if isinstance(body, str) else body.find(b"\n", at)
        stop = end if cut < 0 else cut + 1
        piece = body[start:stop]
        yield piece if isinstance(piece, str) else piece.decode("utf-8", errors="replace")
        start = stop


# A label layout: the names in sorted order, and where each sorted pair's value sits in the line (None: already
# sorted). None for the whole layout: not a valid label set.
_Layout = tuple[tuple[str, ...], tuple[int, ...] | None] | None


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off for the block; back on afterwards only if it was on (so blocks nest)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


class SampleParser:
    """Compiled once per set of wanted names; ``parse`` is then safe to call from any thread.

    ``aliases`` maps an alternative spelling to the canonical one: with an OpenMetrics Accept header
    prometheus_client may write ``vllm_spec_...`` where the family is ``vllm:spec_...``.

    One C-level regex pass finds every line that starts with a wanted name and splits well-formed ones into
    name, label blob and value (a timestamp is checked, then dropped); Python only touches those lines. The
    alternation of names is written as a trie so that the engine does not try every name at every line start.
    Parsed label sets are cached (bounded) across calls. benchmarks/parse_benchmark.py measures all this.
    """

    def __init__(self, wanted: Iterable[str], aliases: Mapping[str, str] | None = None) -> None:
        self._canonical: dict[str, str] = {name: name for name in wanted}
        for alias, canonical in (aliases or {}).items():
            if canonical in self._canonical:
                self._canonical[alias] = canonical
        names = _trie_pattern(self._canonical) or r"(?!x)x"
        # Groups: name, label blob, value; the last one takes a candidate line that is not well formed (the
        # value group is then empty), so it is counted rather than skipped. A value is ASCII letters, digits,
        # sign and dot: Python's float() would also take '1_000' and non-ASCII digits, the format does not.
        start = rf"[ \t]*(?:{names})(?=[ \t{{\r\n]|\Z)"
        line = (
            rf"[ \t]*({names})(?=[ \t{{\r\n]|\Z)"
            r"(?:[ \t]*(?:\{([^\n]*)\})?[ \t]*([-+.0-9a-zA-Z]+)(?:[ \t]+-?[0-9]+)?[ \t]*\r?(?=\n|\Z)|([^\n]*))"
        )
        # Every line but the first starts after a '\n': a one-character literal prefix the regex engine scans for
        # in C. The first line gets its own anchored pattern rather than a copy of the text with '\n' in front.
        self._line = re.compile("\n" + line)
        self._first_line = re.compile(line)
        # The same lines, only counted (over ParseLimits.max_samples): no groups, the rest of the line not read.
        self._line_start = re.compile("\n" + start)
        self._first_line_start = re.compile(start)
        self._layouts: dict[tuple[str, ...], _Layout] = {}
        # Consecutive lines usually share a layout (the buckets of one histogram): checked before the dict.
        self._last_layout: tuple[list[str], _Layout] = ([], None)
        # Label blob → labels. An engine writes the same label sets at every scrape, and histograms of one engine
        # share them within a scrape (same le, same engine), so most blobs are parsed once per process.
        self._blobs: dict[str, Labels | None] = {}
        self._blob_chars = 0

    def parse(self, text: str | bytes | bytearray, limits: ParseLimits = NO_LIMITS) -> ParseResult:
        # Tens of thousands of small tuples are made and kept here; the cyclic collector would walk them again
        # and again (a third of the time on a big payload) although none can be part of a cycle.
        with collector_paused():
            return self._parse(text_chunks(text), limits)

    def _parse(self, chunks: Iterable[str], limits: ParseLimits) -> ParseResult:
        samples: list[Sample] = []
        bad_lines = 0
        examples: list[str] = []
        dropped: Counter[str] = Counter()
        wanted = 0  # wanted lines seen, kept or not
        over = False
        for chunk in chunks:
            if over:  # only counting now: what is over the limit is never turned into samples
                wanted += len(self._line_start.findall(chunk)) + bool(self._first_line_start.match(chunk))
                continue
            matches = self._matches(chunk)
            wanted += len(matches)
            bad = self._samples(matches, samples, limits.max_label_bytes, dropped)
            bad_lines += len(bad)
            if bad and len(examples) < _MAX_EXAMPLES:
                examples.extend(self._examples(chunk, bad)[: _MAX_EXAMPLES - len(examples)])
            if limits.max_samples is not None and len(samples) > limits.max_samples:
                over = True
                samples = []
        if over:
            dropped = Counter({"series": wanted})
        return ParseResult(tuple(samples), bad_lines, tuple(examples), dict(dropped))

    def _matches(self, text: str) -> list[tuple[str, str, str, str]]:
        first = self._first_line.match(text)
        matches: list[tuple[str, str, str, str]] = self._line.findall(text)
        if first:
            matches.insert(0, cast("tuple[str, str, str, str]", first.groups("")))  # "" for no group, as findall
        return matches

    def _samples(
        self,
        matches: list[tuple[str, str, str, str]],
        samples: list[Sample],
        max_label_bytes: int | None,
        dropped: Counter[str],
    ) -> list[int]:
        """Appends the good matches to ``samples``; returns the indexes (in ``matches``) of bad ones."""
        append = samples.append
        new = tuple.__new__
        bad: list[int] = []
        canonical = self._canonical
        seen = self._blobs
        if len(seen) > _MAX_BLOBS or self._blob_chars > _MAX_BLOB_CHARS:
            seen.clear()
            self._blob_chars = 0
        # Characters, not bytes: a character is at least one byte, so this never lets more through.
        too_long = max_label_bytes if max_label_bytes is not None else -1
        for i, (name, blob, raw, _rest) in enumerate(matches):
            if not blob:
                labels: Labels | None = ()
            elif too_long >= 0 and len(blob) > too_long:
                dropped["label_bytes"] += 1
                continue
            else:
                # One get, not 'in' then '[]': another thread may clear the cache in between.
                labels = seen.get(blob, _UNSEEN)
                if labels is _UNSEEN:
                    labels = seen[blob] = self._labels(blob)
                    self._blob_chars += len(blob)
            if labels is not None and raw:
                try:
                    append(new(Sample, (canonical[name], labels, float(raw))))
                    continue
                except ValueError:
                    pass
            bad.append(i)
        return bad

    def _examples(self, text: str, bad: list[int]) -> list[str]:
        wanted = set(bad[:_MAX_EXAMPLES])
        first = self._first_line.match(text)
        lines = itertools.chain([first] if first else [], self._line.finditer(text))
        found = (m.group(0).strip("\n\r")[:200] for i, m in enumerate(lines) if i in wanted)
        return list(itertools.islice(found, len(wanted)))

    def _labels(self, blob: str) -> Labels | None:
        if "\\" in blob:
            return _parse_escaped_labels(blob)
        # Without a backslash every '"' opens or closes a value: the blob splits into key, value, key, value,
        # ..., tail. What stands between the values (names, commas, blanks) is the layout, shared by many lines.
        parts = ("," + blob).split('"')
        if not len(parts) & 1:
            return None
        between = parts[::2]
        last_between, layout = self._last_layout  # one attribute, so a pair from two threads never mixes
        if between != last_between:
            try:
                layout = self._layouts[tuple(between)]
            except KeyError:
                layout = self._remember(tuple(between))
            self._last_layout = (between, layout)
        if layout is None:
            return None
        names, order = layout
        values = parts[1::2]
        if order is not None:
            values = [values[i] for i in order]
        return tuple(zip(names, values, strict=False))  # as many values as names, by construction

    def _remember(self, between: tuple[str, ...]) -> _Layout:
        layout = _layout(between)
        if len(self._layouts) >= _MAX_LAYOUTS:
            self._layouts.clear()
        self._layouts[between] = layout
        return layout


def _layout(between: tuple[str, ...]) -> _Layout:
    """Label names (sorted) and value order from the text around the values; None if not a valid label set."""
    *keys, tail = between
    if not _AFTER_LAST.fullmatch(tail):
        return None
    names: list[str] = []
    for key in keys:
        m = _KEY.fullmatch(key)
        if m is None:
            return None
        names.append(m.group(1))
    if len(set(names)) != len(names):
        return None
    order = sorted(range(len(names)), key=names.__getitem__)
    sorted_names = tuple(names[i] for i in order)
    return sorted_names, (None if order == list(range(len(names))) else tuple(order))


def _trie_pattern(names: Iterable[str]) -> str:
    """A regex alternation equivalent to ``a|b|...`` but factored by common prefix (longest match first)."""
    root: dict[str, dict[str, Any]] = {}
    for name in names:
        node = root
        for ch in name:
            node = node.setdefault(ch, {})
        node[""] = {}
    return _emit(root)


def _emit(node: dict[str, dict[str, Any]]) -> str:
    branches = [re.escape(ch) + _emit(child) for ch, child in sorted(node.items()) if ch]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if "" in node:
        # A name that is a prefix of a longer one: the longer is tried first, the shorter is the fallback.
        return f"(?:{body})?" if len(branches) == 1 else body + "?"
    return body


def _parse_escaped_labels(blob: str) -> Labels | None:
    pairs: list[tuple[str, str]] = []
    pos = 0
    end = len(blob.rstrip(" \t"))
    while pos < end:
        m = _LABEL.match(blob, pos, end)
        if m is None:
            return None
        key, raw, sep = m.groups()
        pairs.append((key, _unescape(raw) if "\\" in raw else raw))
        pos = m.end()
        if not sep:
            break
    if pos < end or len({k for k, _ in pairs}) != len(pairs):
        return None
    pairs.sort()
    return tuple(pairs)


def _unescape(raw: str) -> str:
    """A well-formed value (every backslash starts an escape) with \\\\, \\n and \\" replaced; any other escape is
    kept as written, as prometheus_client does.

    In C, with no call per escape (re.sub with a function cost about 20 bytes and a Python call per escape):
    splitting on the two-character escape for a backslash, scanned from the left like the format is, leaves
    pieces in which every backslash starts an escape of some other character.
    """
    pieces = raw.split("\\\\")
    return "\\".join(p.replace("\\n", "\n").replace('\\"', '"') for p in pieces)
