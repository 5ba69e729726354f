"""The decision framework as `report` prints it: one table of what the data says, then the recommendation."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sidecar.cli.terminal_text import plain
from sidecar.core.advice import Action, Advice, Status

STATUS_STYLE = {Status.OK: "green", Status.WARN: "yellow", Status.BAD: "bold red", Status.UNKNOWN: "dim"}
ACTION_STYLE = {
    Action.KEEP: "bold green",
    Action.KEEP_BUT_WATCH: "bold yellow",
    Action.DISABLE: "bold red",
    Action.DISABLE_FOR_SOME: "bold magenta",
    Action.COLLECT_MORE: "bold cyan",
}


def render_advice(advice: Advice, console: Console) -> None:
    table = Table(title="what the data says", title_justify="left", expand=True)
    table.add_column("condition", style="bold", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("reading", ratio=1)
    for f in advice.findings:
        table.add_row(f.condition.value, Text(f.status.value, style=STATUS_STYLE[f.status]), plain(f.says))
    headline = Text.assemble(
        ("recommendation: ", "bold"), (advice.recommendation.value, ACTION_STYLE[advice.recommendation])
    )
    reasons = plain("\n".join(f"• {reason}" for reason in advice.reasons))
    title = plain(f"decision: {advice.model_name or '?'}")
    console.print(Panel(Group(table, Text(""), headline, reasons), title=title))
