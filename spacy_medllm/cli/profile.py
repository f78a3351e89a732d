"""Profiles of the project workflow: the sizes that decide how long `spacy project run all` takes.

spaCy project files cannot choose a value by another variable's value, so the sizes that differ
between the `fast` profile (the default: the whole path on 2 CPU cores in under an hour) and
the `full` profile (every text, every epoch) live in `configs/profiles.cfg`, and project.yml runs
the commands that use them through this command:

    python -m spacy_medllm profile ${vars.profile} -- \\
        python -m spacy_medllm finetune ... --epochs {seed_epochs}

Every `{name}` in the command's arguments is replaced by the profile's value, the command's own
exit status is returned, and an unknown name or profile stops with a message that lists the known
ones. The profile's name is part of the command line, so spaCy reruns a step when the profile
changes, and the profiles file is a dependency of each such step, so editing a size reruns the
steps too. `python -m spacy_medllm profile --show` prints the table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import typer

from spacy_medllm.cli._app import app

DEFAULT_PROFILES = Path(__file__).resolve().parents[2] / "configs" / "profiles.cfg"
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ProfileError(ValueError):
    pass


def load_profiles(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The profiles file (a confection/spaCy config: one section per profile) as plain dicts."""
    from confection import Config

    path = Path(path) if path is not None else DEFAULT_PROFILES
    if not path.is_file():
        raise ProfileError(f"No profiles file at {str(path)!r}.")
    config = Config().from_disk(path, interpolate=True)
    profiles = {name: dict(values) for name, values in config.items()}
    if not profiles:
        raise ProfileError(f"{path} defines no profile.")
    keys = {name: set(values) for name, values in profiles.items()}
    first = next(iter(keys.values()))
    for name, names in keys.items():
        if names != first:
            raise ProfileError(
                f"Profiles in {path} must set the same sizes; {name!r} differs in "
                f"{sorted(names ^ first)}."
            )
    return profiles


def get_profile(name: str, profiles: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
    if name not in profiles:
        raise ProfileError(f"Unknown profile {name!r}; known: {', '.join(profiles)}.")
    return profiles[name]


def substitute(args: Sequence[str], values: Mapping[str, Any]) -> list[str]:
    """Replace every `{name}` in the arguments by the profile's value (other text unchanged)."""

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise ProfileError(
                f"The command asks for {{{key}}}, which the profile does not set; it sets "
                f"{', '.join(sorted(values))}."
            )
        return str(values[key])

    return [PLACEHOLDER.sub(replace, arg) for arg in args]


def markdown(profiles: Mapping[str, Mapping[str, Any]]) -> str:
    names = list(profiles)
    keys = list(next(iter(profiles.values())))
    lines = ["| size | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in keys:
        lines.append(f"| `{key}` | " + " | ".join(str(profiles[n][key]) for n in names) + " |")
    return "\n".join(lines)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    no_args_is_help=True,
)
def profile(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="fast, full or smoke (configs/profiles.cfg)."),
    profiles: Path | None = typer.Option(None, help="Another profiles file."),
    show: bool = typer.Option(False, "--show", help="Print the profiles as a Markdown table."),
) -> None:
    """Run `-- COMMAND ...` with the profile's sizes in place of its {name} placeholders."""
    table = load_profiles(profiles)
    if show:
        typer.echo(markdown(table))
        return
    command = list(ctx.args)
    if not name or not command:
        raise typer.BadParameter("give a profile and, after --, the command to run")
    final = substitute(command, get_profile(name, table))
    typer.echo(f"[profile {name}] {' '.join(final)}", err=True)
    # The command's own Python: "python" in project.yml is the one spaCy runs with.
    if final and final[0] in ("python", "python3"):
        final[0] = sys.executable
    env = {**os.environ, "SPACY_MEDLLM_PROFILE": name}
    code = subprocess.run(final, env=env, check=False).returncode
    if code:
        raise typer.Exit(code)
