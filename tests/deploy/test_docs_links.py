"""The repository's documentation stands alone: nothing cites a document outside it, and every link resolves.

A reader of the repository has only the repository. Code and docs must not point at notes that live beside it
(the two planning documents the first version cited, or a shared folder beside the checkout). Every relative link in
README.md and docs/, and every ``docs/<page>.md#anchor`` a code comment cites, must reach a file, and a heading
when it names one (GitHub's anchor rules).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.tooling import ROOT

# Spelled in pieces so that this file does not match its own patterns.
OUTSIDE_DOCUMENTS = re.compile(r"\b(?:" + "FACTS" + r"|" + "DESIGN" + r")\.md\b|\.\./" + "shared\\b")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".sh", ".cfg", ".ini", ".txt", ".mjs", ".js", ".ts", ".tpl"}
TEXT_NAMES = {"Makefile", "Dockerfile", ".importlinter"}
SKIPPED_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
SKIPPED_DIRS_UNDER = ("tests/fixtures/vllm",)  # captured engine output, not prose

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
DOC_CITATION = re.compile(r"\bdocs/([\w.-]+\.md)(?:#([\w-]+))?")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def _text_files() -> Iterator[Path]:
    for directory, subdirectories, names in os.walk(ROOT):
        here = Path(directory)
        subdirectories[:] = sorted(
            d
            for d in subdirectories
            if d not in SKIPPED_DIRS
            and not d.endswith(".egg-info")
            and (here / d).relative_to(ROOT).as_posix() not in SKIPPED_DIRS_UNDER
        )
        for name in sorted(names):
            path = here / name
            if path.suffix in TEXT_SUFFIXES or name in TEXT_NAMES:
                yield path


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose(markdown: str) -> str:
    """The text outside fenced blocks and inline code, where a link is a link."""
    return INLINE_CODE.sub("", FENCE.sub("", markdown))


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        base = github_anchor(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        anchors.add(base if count == 0 else f"{base}-{count}")
    return anchors


def test_no_file_cites_a_document_outside_the_repository() -> None:
    offenders = []
    for path in _text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE_DOCUMENTS.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "cite docs/ instead (docs/engines.md, docs/math.md, ...):\n" + "\n".join(offenders)


def test_the_pattern_catches_what_it_is_meant_to() -> None:
    for cited in ("see " + "FACTS" + ".md", "(" + "DESIGN" + ".md, CLI)", "../" + "shared/docs"):
        assert OUTSIDE_DOCUMENTS.search(cited), cited
    assert not OUTSIDE_DOCUMENTS.search("docs/engines.md and docs/math.md")


@pytest.mark.parametrize("doc", _docs(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(doc.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        destination = (doc.parent / path_part).resolve() if path_part else doc
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif ROOT not in destination.parents and destination != ROOT:
            broken.append(f"{target}: outside the repository")
        elif anchor and destination.suffix == ".md" and anchor not in _anchors(destination.read_text()):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_docs_page_and_anchor_a_file_cites_exists() -> None:
    broken = []
    for path in _text_files():
        if path.suffix != ".py":
            continue
        for page, anchor in DOC_CITATION.findall(path.read_text()):
            doc = ROOT / "docs" / page
            if not doc.is_file():
                broken.append(f"{path.relative_to(ROOT)}: docs/{page} does not exist")
            elif anchor and anchor not in _anchors(doc.read_text()):
                broken.append(f"{path.relative_to(ROOT)}: docs/{page} has no heading #{anchor}")
    assert not broken, "\n".join(broken)


def test_anchors_follow_github() -> None:
    assert github_anchor("vLLM spec-decode counters (V1 engine)") == "vllm-spec-decode-counters-v1-engine"
    assert github_anchor("Latency quantiles: PromQL's `histogram_quantile`") == (
        "latency-quantiles-promqls-histogram_quantile"
    )
    assert _anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}
