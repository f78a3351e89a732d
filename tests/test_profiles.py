"""Workflow profiles: sizes put into project.yml commands, errors that name what is known."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from spacy_medllm.cli import main as cli
from spacy_medllm.cli.profile import (
    DEFAULT_PROFILES,
    ProfileError,
    get_profile,
    load_profiles,
    markdown,
    substitute,
)

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_profiles_set_the_same_sizes_and_fast_is_smaller() -> None:
    profiles = load_profiles()
    assert set(profiles) == {"fast", "full", "smoke"}
    fast, full = profiles["fast"], profiles["full"]
    assert fast["seed_epochs"] < full["seed_epochs"]
    # 0 means "all": the full profile labels every text, the fast one a sample.
    for key in ("label_limit", "en_distil_limit", "et_distil_limit"):
        assert full[key] == 0 and fast[key] > 0


def test_every_placeholder_in_project_yml_is_set_by_every_profile() -> None:
    from spacy.cli.project.run import load_project_config

    project = load_project_config(ROOT)
    profiles = load_profiles()
    used = 0
    for command in project["commands"]:
        for line in command["script"]:
            if "spacy_medllm profile" not in line:
                continue
            used += 1
            assert "configs/profiles.cfg" in command.get("deps", []), command["name"]
            args = line.split()
            for profile in profiles.values():
                final = substitute(args, profile)
                assert not any("{" in a and "}" in a for a in final), (command["name"], final)
    assert used >= 8


def test_substitute_and_errors(tmp_path: Path) -> None:
    values = {"epochs": 2, "limit": 0}
    assert substitute(["--epochs", "{epochs}", "--x={limit}", "{}"], values) == [
        "--epochs",
        "2",
        "--x=0",
        "{}",
    ]
    with pytest.raises(ProfileError, match="does not set; it sets epochs, limit"):
        substitute(["{nope}"], values)
    with pytest.raises(ProfileError, match="Unknown profile 'huge'; known: fast, full, smoke"):
        get_profile("huge", load_profiles())
    odd = tmp_path / "profiles.cfg"
    odd.write_text("[a]\nx = 1\n\n[b]\ny = 2\n")
    with pytest.raises(ProfileError, match="must set the same sizes"):
        load_profiles(odd)


def test_main_runs_the_command_with_the_values_and_returns_its_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.txt"
    code = (
        "import sys, os; "
        "open(sys.argv[1], 'w').write(sys.argv[2] + ' ' + os.environ['SPACY_MEDLLM_PROFILE'])"
    )

    def main(argv):
        return cli(["profile", *argv])

    assert main(["full", "--", sys.executable, "-c", code, str(out), "{seed_epochs}"]) == 0
    assert out.read_text() == f"{load_profiles()['full']['seed_epochs']} full"
    assert main(["fast", "--", sys.executable, "-c", "raise SystemExit(7)"]) == 7
    assert main(["fast", "--", sys.executable, "-c", "", "{missing}"]) == 1
    assert "{missing}" in capsys.readouterr().err
    assert main(["--show"]) == 0
    assert "| `seed_epochs` |" in capsys.readouterr().out
    assert DEFAULT_PROFILES.is_file()


def test_docs_profile_table_is_the_shipped_profiles() -> None:
    """docs/workflow.md's table is `python -m spacy_medllm profile --show` of configs/profiles.cfg
    (regenerate: `--show > t.md && python scripts/update_readme.py t.md --name profiles
    --readme docs/workflow.md`)."""
    readme = (ROOT / "docs" / "workflow.md").read_text(encoding="utf8")
    block = readme.split("<!-- profiles:start -->")[1].split("<!-- profiles:end -->")[0]
    assert block.strip() == markdown(load_profiles()).strip()
