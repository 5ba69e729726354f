"""Command-line flags built from the Settings sections, and the settings read back from them.

Every field of a section is a flag (``scrape_interval`` is ``--scrape-interval``) whose help names its
environment variable and default; ``--help`` shows one group per section. A flag the user did not give stays
unset, so pydantic-settings takes the environment, then the default: the commands never read the environment
themselves.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TypeVar

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings

from sidecar.settings import ENV_PREFIX, SECTIONS

S = TypeVar("S", bound=BaseSettings)


class UsageError(Exception):
    """A problem with what the user asked for: printed as one line, exit code 2."""


def add_settings_flags(
    parser: argparse.ArgumentParser,
    sections: Iterable[type[BaseSettings]] = SECTIONS,
    only: Iterable[str] | None = None,
) -> None:
    """One flag per field of ``sections`` (``only``: just these fields), in a group per section."""
    wanted = set(only) if only is not None else None
    for section in sections:
        fields = {n: f for n, f in section.model_fields.items() if wanted is None or n in wanted}
        if not fields:
            continue
        group = parser.add_argument_group(section_title(section)) if wanted is None else parser
        for name, field in fields.items():
            flag = "--" + name.replace("_", "-")
            env = ENV_PREFIX + name.upper()
            # argparse expands %-formats in help texts: a literal % must be doubled.
            help_text = f"{field.description} [env {env}; default {_default_text(field)}]".replace("%", "%%")
            if field.annotation is bool:
                group.add_argument(
                    flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
                )
            else:
                group.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text)


def section_title(section: type[BaseSettings]) -> str:
    """The first sentence of the section's docstring, up to its colon: "Scraping the engine's /metrics"."""
    return (section.__doc__ or section.__name__).strip().split(":")[0].rstrip(".")


def _default_text(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    return "none" if value is None or value == {} else repr(value)


def settings_from_args(args: argparse.Namespace, model: type[S]) -> S:
    """The flags given on the command line over the environment over the defaults, validated; a bad value is a
    UsageError naming the flag or the environment variable it came from."""
    given = {name: value for name, value in vars(args).items() if name in model.model_fields}
    try:
        return model(**given)
    except ValidationError as exc:
        raise UsageError("; ".join(_problem(e, given) for e in exc.errors())) from exc


def _problem(error: ErrorDetails, given: dict[str, object]) -> str:
    """One problem, under the name the user wrote it with: the flag, or the environment variable."""
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a rule between settings (the message names them)
        return message
    name = str(error["loc"][0])
    if name in given:
        return f"--{name.replace('_', '-')}: {message}"
    return f"environment variable {ENV_PREFIX}{name.upper()}={error['input']}: {message}"
