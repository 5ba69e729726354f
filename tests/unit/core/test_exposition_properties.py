"""Property tests for SampleParser on generated exposition text.

Documents are generated from a model (series with labels, values, timestamps, spacing; HELP/TYPE lines or
none; comments, blank lines, duplicates; lines of other families), rendered to text, and parsed. The model
says which samples must come out; prometheus_client's parser says the same on the well-formed ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from sidecar.core.catalog import openmetrics_aliases, wanted_sample_names
from sidecar.core.exposition import SampleParser

WANTED = wanted_sample_names()
ALIASES = openmetrics_aliases(WANTED)
CANONICAL = {**{n: n for n in WANTED}, **ALIASES}
PARSER = SampleParser(WANTED, ALIASES)

_WANTED_NAMES = sorted(CANONICAL)
# Names of other families, some of them one character away from a wanted name.
_OTHER_NAMES = [
    "python_gc_objects_collected_total",
    "process_cpu_seconds_total",
    "vllm:request_queue_time_seconds_bucket",
    "vllm:num_requests",
    "vllm:num_requests_running_x",
    "vllm:spec_decode_num_drafts_totals",
    "sglang:spec_accept_rate2",
    "http_requests_total",
]


@dataclass(frozen=True)
class Line:
    """One sample line of the model, and how to write it."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value_text: str
    value: float
    timestamp: int | None
    gap_before_brace: str
    pad: str
    sep: str
    trailing_comma: bool
    trailing_blanks: str

    def render(self) -> str:
        text = self.name
        if self.labels:
            pairs = [f'{self.pad}{k}{self.pad}={self.pad}"{_escape(v)}"{self.pad}' for k, v in self.labels]
            text += self.gap_before_brace + "{" + ",".join(pairs) + ("," if self.trailing_comma else "") + "}"
        text += self.sep + self.value_text
        if self.timestamp is not None:
            text += self.sep + str(self.timestamp)
        return text + self.trailing_blanks

    def expected(self) -> tuple[str, tuple[tuple[str, str], ...], str]:
        return CANONICAL[self.name], tuple(sorted(self.labels)), _key(self.value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _key(value: float) -> str:
    # NaN compares unequal to itself; -0.0 and 0.0 are one value (prometheus_client reads "-0" as the int 0).
    return "NaN" if math.isnan(value) else repr(value + 0.0)


_LABEL_NAMES = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True).filter(lambda n: not n.startswith("__"))
_LABEL_VALUES = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=12),
    st.sampled_from(["", "\\", '"', "\n", '\\"', "a,b", "}", "{", "=", "x y", 'a="b"', "模型", "\t", "0"]),
)
_FLOATS = st.floats(allow_nan=False, allow_infinity=False)
_VALUES = st.one_of(
    _FLOATS.map(lambda f: (repr(f), f)),
    st.integers(min_value=-(10**30), max_value=10**30).map(lambda i: (str(i), float(i))),
    st.sampled_from(
        [
            ("NaN", math.nan),
            ("+Inf", math.inf),
            ("-Inf", -math.inf),
            ("Inf", math.inf),
            ("1e308", 1e308),
            ("1e400", math.inf),
            ("-0", -0.0),
            ("0.0", 0.0),
            ("1.7632e+09", 1.7632e09),
            ("4.9e-324", 5e-324),
        ]
    ),
)


def lines(names: list[str]) -> st.SearchStrategy[Line]:
    return st.builds(
        lambda name, labels, value, ts, gap, pad, sep, comma, trail: Line(
            name, tuple(labels.items()), value[0], value[1], ts, gap, pad, sep, comma and bool(labels), trail
        ),
        st.sampled_from(names),
        st.dictionaries(_LABEL_NAMES, _LABEL_VALUES, max_size=4),
        _VALUES,
        st.one_of(st.none(), st.integers(min_value=-(2**53), max_value=2**53)),
        st.sampled_from(["", "", " ", "\t"]),
        st.sampled_from(["", "", "", " ", "\t"]),
        st.sampled_from([" ", " ", "\t", "  ", " \t "]),
        st.booleans(),
        st.sampled_from(["", "", " ", "\t "]),
    )


_HELP_TEXT = st.text(st.characters(codec="utf-8", exclude_characters='\n\\"'), max_size=20)
_COMMENTS = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=30).filter(
    lambda c: not c.lstrip().startswith(("HELP", "TYPE"))
)


@st.composite
def documents(draw: st.DrawFn, garbage: bool = False) -> tuple[str, list[Line]]:
    """Exposition text and the wanted sample lines in it, in order (duplicates included)."""
    body: list[Line] = draw(st.lists(lines(_WANTED_NAMES + _OTHER_NAMES), max_size=25))
    duplicate: bool = draw(st.booleans())
    if body and duplicate:
        body += draw(st.lists(st.sampled_from(body), max_size=3))  # duplicate series
    out: list[str] = []
    for line in body:
        if draw(st.integers(0, 3)) == 0:
            out.append(f"# HELP {line.name} {draw(_HELP_TEXT)}")
        if draw(st.integers(0, 3)) == 0:
            kinds = ["gauge", "untyped", "histogram", "summary"]
            kinds += ["counter"] if line.name.endswith("_total") else []  # prometheus_client renames otherwise
            out.append(f"# TYPE {line.name} {draw(st.sampled_from(kinds))}")
        if draw(st.integers(0, 5)) == 0:
            out.append(draw(st.sampled_from(["", "#", "# " + draw(_COMMENTS)])))
        if garbage and draw(st.integers(0, 4)) == 0:
            out.append(draw(st.sampled_from(["garbage", "}{", "=== 1", '{a="b"} 1', "  ", "\x00", "# EOF"])))
        out.append(line.render())
    newline = draw(st.sampled_from(["\n", "\r\n"])) if garbage else "\n"
    final_newline: bool = draw(st.booleans())
    text = newline.join(out) + (newline if out and final_newline else "")
    return text, [line for line in body if line.name in CANONICAL]


def _ours(text: str) -> list[tuple[str, tuple[tuple[str, str], ...], str]]:
    return [(s.name, s.labels, _key(s.value)) for s in PARSER.parse(text).samples]


@settings(deadline=None)  # the machine is shared: a slow example is not a failure
@given(st.text())
def test_parse_never_raises_on_any_text(text: str) -> None:
    result = PARSER.parse(text)
    assert result.bad_lines >= 0
    assert len(result.bad_examples) <= min(5, result.bad_lines)


@settings(deadline=None)
@given(documents(garbage=True), st.lists(st.tuples(st.integers(0, 10_000), st.text(max_size=5)), max_size=8))
def test_parse_never_raises_on_exposition_text_with_junk_spliced_in(
    document: tuple[str, list[Line]], junk: list[tuple[int, str]]
) -> None:
    text = document[0]
    for position, piece in junk:
        at = position % (len(text) + 1)
        text = text[:at] + piece + text[at:]
    result = PARSER.parse(text)
    assert result.bad_lines <= text.count("\n") + 1
    assert len(result.samples) + result.bad_lines <= text.count("\n") + 1


def test_empty_input_gives_no_samples_and_no_bad_lines() -> None:
    for text in ("", "\n", "\n\n", "# only a comment\n", "   \n\t\n"):
        result = PARSER.parse(text)
        assert (result.samples, result.bad_lines, result.bad_examples) == ((), 0, ())


@settings(max_examples=300, deadline=None)
@given(documents(garbage=True))
def test_well_formed_wanted_lines_come_out_as_their_samples(document: tuple[str, list[Line]]) -> None:
    text, wanted = document
    result = PARSER.parse(text)
    assert result.bad_lines == 0, result.bad_examples
    assert _ours(text) == [line.expected() for line in wanted]


MALFORMED_TAILS = [
    "",  # a name and nothing else
    " ",
    " abc",
    " 1_000",
    " 1 2 3",
    " 1 1.5",  # a timestamp must be an integer
    " ١٢",  # digits Python's float() reads but the format does not
    '{a="b} 1',  # unterminated value
    "{a=b} 1",  # unquoted value
    '{a="b",a="c"} 1',  # one label twice
    '{1a="b"} 1',  # invalid label name
    '{a="b" c="d"} 1',  # missing comma
    '{a="b"}',  # no value
    '{a="\\"} 1',  # the closing quote is escaped
    '{,a="b"} 1',  # leading comma
    '{a="b"},, 1',
    '{a="b"} 1 2 x',
    '{a="b\\"} 1',
]


@settings(deadline=None)
@given(
    documents(),
    st.lists(
        st.tuples(st.sampled_from(_WANTED_NAMES), st.sampled_from(MALFORMED_TAILS), st.integers(0, 100)),
        min_size=1,
        max_size=6,
    ),
)
def test_malformed_wanted_lines_are_counted_and_the_rest_still_parse(
    document: tuple[str, list[Line]], malformed: list[tuple[str, str, int]]
) -> None:
    text, wanted = document
    mixed = text.split("\n") if text else []
    for name, tail, position in malformed:
        mixed.insert(position % (len(mixed) + 1), name + tail)  # between whole lines: the others stay intact
    result = PARSER.parse("\n".join(mixed))
    assert result.bad_lines == len(malformed), (malformed, result.bad_examples)
    assert len(result.bad_examples) == min(5, len(malformed))
    assert [(s.name, s.labels, _key(s.value)) for s in result.samples] == [line.expected() for line in wanted]


def _reference(text: str) -> list[tuple[str, tuple[tuple[str, str], ...], str]]:
    return [
        (CANONICAL[s.name], tuple(sorted(s.labels.items())), _key(float(s.value)))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in CANONICAL
    ]


@settings(max_examples=300, deadline=None)
@given(documents())
def test_generated_well_formed_text_gives_the_samples_prometheus_client_gives(document: tuple[str, list[Line]]) -> None:
    text, wanted = document
    assert _ours(text) == _reference(text)
    assert len(_ours(text)) == len(wanted)
