"""Run a project workflow and record how long each step took (JSON and Markdown).

    python scripts/run_timed.py all                       # the fast profile
    python scripts/run_timed.py all --vars.profile full   # extra arguments go to spacy project run
    python scripts/run_timed.py all --setup-seconds 178   # add the setup time to the total

spaCy prints a banner for each step it runs (`===== name =====`) and a line for each step it skips
(`Skipping 'name': nothing changed`). This script streams the workflow's output unchanged, notes
the time each banner appears, and after every step rewrites `training/reports/workflow_times.json`
and `.md` (so an interrupted run leaves the times of its finished steps). Exit status: the
workflow's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BANNER = re.compile(r"^=+ ([A-Za-z0-9_.-]+) =+")
SKIP = re.compile(r"Skipping '([A-Za-z0-9_.-]+)': nothing changed")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def markdown(record: dict[str, Any]) -> str:
    lines = [
        f"## Workflow times: `{' '.join(record['command'])}`",
        "",
        f"Machine: {record['machine']['cpu_count']} CPU(s), {record['machine']['processor']}, "
        f"Python {record['machine']['python']}; started {record['started']}.",
        "",
        "| step | status | minutes |",
        "|---|---|---|",
    ]
    for step in record["steps"]:
        minutes = f"{step['seconds'] / 60:.1f}" if step["seconds"] is not None else ""
        lines.append(f"| `{step['name']}` | {step['status']} | {minutes} |")
    total = record["workflow_seconds"]
    lines += ["", f"Workflow: {total / 60:.1f} min."]
    if record.get("setup_seconds") is not None:
        setup = record["setup_seconds"]
        lines.append(
            f"Setup (scripts/setup.sh): {setup / 60:.1f} min; setup and workflow: "
            f"{(setup + total) / 60:.1f} min."
        )
    if record.get("returncode") not in (None, 0):
        lines.append(f"The workflow stopped with exit status {record['returncode']}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow")
    parser.add_argument("--project", default=".")
    parser.add_argument("--output", default="training/reports/workflow_times")
    parser.add_argument("--setup-seconds", type=float, default=None)
    args, extra = parser.parse_known_args(argv)
    command = [sys.executable, "-m", "spacy", "project", "run", args.workflow, args.project, *extra]
    output = Path(args.project) / args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "command": ["spacy", "project", "run", args.workflow, *extra],
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "setup_seconds": args.setup_seconds,
        "steps": [],
        "workflow_seconds": 0.0,
        "returncode": None,
    }
    start = time.perf_counter()
    current: dict[str, Any] | None = None

    def save() -> None:
        record["workflow_seconds"] = time.perf_counter() - start
        output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", "utf8")
        output.with_suffix(".md").write_text(markdown(record), "utf8")

    def close_current() -> None:
        if current is not None and current["seconds"] is None:
            current["seconds"] = time.perf_counter() - current.pop("_start")

    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        plain = ANSI.sub("", line).strip()
        banner, skipped = BANNER.match(plain), SKIP.search(plain)
        if skipped and current is not None and current["name"] == skipped.group(1):
            # spaCy prints the step's banner, then that it skips it.
            current.update(status="skipped", seconds=0.0)
            current.pop("_start", None)
            save()
            continue
        if banner or skipped:
            close_current()
            if current is not None:
                save()
        if banner:
            current = {"name": banner.group(1), "status": "ran", "seconds": None}
            current["_start"] = time.perf_counter()
            record["steps"].append(current)
        elif skipped:
            current = {"name": skipped.group(1), "status": "skipped", "seconds": 0.0}
            record["steps"].append(current)
    record["returncode"] = process.wait()
    close_current()
    if current is not None and record["returncode"] != 0 and current["status"] == "ran":
        current["status"] = "failed"
    save()
    return record["returncode"]


if __name__ == "__main__":
    raise SystemExit(main())
