"""Untrusted text for rich, the terminal renderer of `report` and `probe`.

Model names, bucket labels, URLs and the advice sentences built from them come from engines, files and other
sidecars. Handed to rich as a plain str they are read as markup: ``[/]`` in a model name crashed `report`, and
``[link=...]`` would make a link. Control characters would reach the terminal as they are (rich keeps ESC), and an
escape sequence can rewrite what the screen shows. ``plain`` gives a Text with neither: no markup is parsed, and
control characters are shown escaped (``\\x1b``).
"""

from __future__ import annotations

import re

from rich.text import Text

# How a verdict is coloured wherever a terminal shows one (report, probe, the demo).
VERDICT_STYLE = {
    "keep": "green",
    "borderline": "yellow",
    "disable": "bold red",
    "no-data": "dim",
    "invalid": "bold magenta",
}

# C0 controls but tab and newline, DEL, and C1 controls (some terminals act on them too).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(value: object, style: str = "") -> Text:
    return Text(_CONTROL.sub(lambda m: repr(m.group())[1:-1], str(value)), style=style)
