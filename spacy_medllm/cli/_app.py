"""The typer application that every command module adds itself to, and the error handling."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import typer

app = typer.Typer(
    name="spacy-medllm",
    help="Fine-tuned generative LLMs as a spaCy component for medical entity extraction.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are plain: "[default: 16]" must not be read as rich markup.
    rich_markup_mode=None,
)

_state = {"verbose": False}


@app.callback()
def _options(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks and debug logs."),
) -> None:
    _state["verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", force=True
    )
    logging.getLogger("spacy_medllm").setLevel(logging.DEBUG if verbose else logging.INFO)


def csv(value: str | None) -> list[str] | None:
    """A comma-separated option as a list (None or empty: None)."""
    if not value:
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    return items or None


def name_value_pairs(
    values: Sequence[str] | None, option: str, form: str = "NAME=PATH"
) -> list[tuple[str, str]]:
    """Options of the form NAME=VALUE as pairs; a malformed one is a usage error naming the
    option."""
    from spacy_medllm.util.formatting import name_value_pairs as read_pairs

    try:
        return read_pairs(list(values or ()), option, form)
    except SystemExit as error:
        raise typer.BadParameter(str(error.code)) from None


def echo_json(data: Any, limit: int | None = None) -> None:
    from spacy_medllm.util.formatting import json_default

    text = json.dumps(data, indent=2, ensure_ascii=False, default=json_default)
    typer.echo(text if limit is None else text[:limit])


# Errors a user can fix from the message alone: one line, no traceback (unless --verbose).
# OSError: missing files and folders, spaCy's "Can't find model", a server that refuses.
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, KeyError, ValueError)


def _usage_errors() -> tuple[type[BaseException], ...]:
    """Click's exceptions (usage errors, bad values): typer vendors click from 0.29 on."""
    errors: list[type[BaseException]] = [typer.BadParameter.__mro__[2]]  # ClickException
    try:
        import click

        errors.append(click.ClickException)
    except ImportError:  # pragma: no cover - typer without click
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        result = app(args=list(sys.argv[1:] if argv is None else argv), standalone_mode=False)
    except SystemExit as stop:  # typer.Exit and sys.exit inside commands
        code = stop.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except typer.Exit as stop:
        return stop.exit_code
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        return 1
    except Exception as error:  # click's usage errors and the package's own
        if isinstance(error, _usage_errors()):
            error.show()
            return error.exit_code
        if _state["verbose"] or not isinstance(error, USER_ERRORS):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        typer.echo(f"error: {message}", err=True)
        return 1
    # typer.Exit(code) comes back as the return value when click does not exit itself.
    return result if isinstance(result, int) else 0
