"""scripts/run_timed.py: per-step times of a real `spacy project run` workflow, rerun skips."""

from __future__ import annotations

import json
from pathlib import Path

from tests.scripts import load_script

PROJECT = """\
title: "timing"
workflows:
  all:
    - first
    - second
commands:
  - name: first
    script:
      - "python -c \\"import time, pathlib; time.sleep(4); pathlib.Path('a.txt').write_text('a')\\""
    outputs:
      - "a.txt"
  - name: second
    script:
      - "python -c \\"import pathlib, sys; pathlib.Path('b.txt').write_text('b'); sys.exit(EXIT)\\""
    deps:
      - "a.txt"
    outputs:
      - "b.txt"
"""


def test_times_each_step_then_sees_the_rerun_skip(tmp_path: Path, capsys) -> None:
    run_timed = load_script("run_timed")
    (tmp_path / "project.yml").write_text(PROJECT.replace("EXIT", "0"))
    out = "times/workflow_times"
    assert run_timed.main(["all", "--project", str(tmp_path), "--output", out,
                           "--setup-seconds", "60"]) == 0  # fmt: skip
    record = json.loads((tmp_path / f"{out}.json").read_text())
    steps = {s["name"]: s for s in record["steps"]}
    assert list(steps) == ["first", "second"]
    assert steps["first"]["status"] == "ran" and 4 <= steps["first"]["seconds"] < 60
    assert steps["second"]["seconds"] < steps["first"]["seconds"]
    assert record["workflow_seconds"] >= steps["first"]["seconds"] + steps["second"]["seconds"]
    md = (tmp_path / f"{out}.md").read_text()
    assert "| `first` | ran |" in md and "setup and workflow:" in md
    assert "===" in capsys.readouterr().out  # spaCy's output is passed through

    assert run_timed.main(["all", "--project", str(tmp_path), "--output", out]) == 0
    again = json.loads((tmp_path / f"{out}.json").read_text())
    assert [(s["name"], s["status"]) for s in again["steps"]] == [
        ("first", "skipped"),
        ("second", "skipped"),
    ]


def test_a_failing_step_is_marked_and_its_status_returned(tmp_path: Path) -> None:
    run_timed = load_script("run_timed")
    (tmp_path / "project.yml").write_text(PROJECT.replace("EXIT", "3"))
    code = run_timed.main(["all", "--project", str(tmp_path), "--output", "t"])
    assert code != 0
    record = json.loads((tmp_path / "t.json").read_text())
    assert record["steps"][-1] == {"name": "second", "status": "failed",
                                   "seconds": record["steps"][-1]["seconds"]}  # fmt: skip
    assert "stopped with exit status" in (tmp_path / "t.md").read_text()
