"""Reliability report: runs the reliability tests and writes their figures to
training/reports/reliability.md and .json.

The figures come from the tests themselves, run by pytest with MEDLLM_RELIABILITY_LOG set
(tests/reliability_log.py): examples tried per property (tests/test_properties.py, Hypothesis
profile `ci` = 1,000 per property, `nightly` = 10,000), faults injected per kind and what came of
them (tests/test_faults.py: a fault proxy in front of the scripted server and, with --slow, of
the real llama.cpp server), the security checks (tests/test_security.py) and the defects of
issue 27 (tests/test_reliability_defects.py). The outcome of every test comes from pytest's
JUnit XML, so a figure is only reported as survived when its test passed.

    .venv/bin/python -m benchmarks.reliability                   # the fast profile, no real server
    .venv/bin/python -m benchmarks.reliability --slow            # and the real server's faults
    .venv/bin/python -m benchmarks.reliability --profile nightly --slow
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spacy_medllm.util.formatting import json_default, markdown_table
from spacy_medllm.util.machine import machine_info

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = "training/reports/reliability"
TEST_FILES = [
    "tests/test_properties.py",
    "tests/test_faults.py",
    "tests/test_security.py",
    "tests/test_reliability_defects.py",
]
OPTIONAL_TEST_FILES = ["tests/test_interruptions.py"]
BAR_EXAMPLES = 1_000  # fuzzed responses and fuzzed documents per run (issue 27)


def run_tests(files: list[str], profile: str, slow: bool, log: Path, junit: Path) -> int:
    """pytest on `files` with the figures logged to `log`; returns pytest's exit code."""
    env = dict(os.environ, MEDLLM_RELIABILITY_LOG=str(log), MEDLLM_HYPOTHESIS_PROFILE=profile)
    command = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider"]
    command += ["--junitxml", str(junit)]
    if not slow:
        command += ["-m", "not slow"]
    return subprocess.call(command, cwd=ROOT, env=env)


def read_junit(path: Path) -> list[dict[str, Any]]:
    """Each test case: its id, outcome (passed, failed, error, skipped) and seconds."""
    if not path.is_file():
        return []
    cases = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        cases.append({"test": name, "outcome": outcome, "seconds": float(case.get("time", 0))})
    return cases


def read_figures(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines() if line]


def summarise(figures: list[dict[str, Any]], cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's figures and whether the issue's bar is met."""
    outcomes: dict[str, int] = {}
    for case in cases:
        outcomes[case["outcome"]] = outcomes.get(case["outcome"], 0) + 1
    failed = [c["test"] for c in cases if c["outcome"] in ("failed", "error")]
    properties = [f for f in figures if f["kind"] == "property"]
    property_tests = [c for c in cases if "test_properties" in c["test"]]
    crashes = sum(c["outcome"] in ("failed", "error") for c in property_tests)
    faults = [f for f in figures if f["kind"] == "fault"]
    fault_failures = [
        c["test"] for c in cases if "test_faults" in c["test"] and c["test"] in failed
    ]
    interruptions = [f for f in figures if f["kind"] == "interruption"]
    security = [f for f in figures if f["kind"] == "security"]
    responses = sum(f.get("responses", 0) for f in properties if f["name"] == "responses")
    documents = sum(f.get("documents", 0) for f in properties)
    lost = sum(int(f.get("lost", 0)) for f in faults) + sum(
        int(f.get("records_lost", 0)) for f in interruptions
    )
    bar = {
        f"fuzzed responses >= {BAR_EXAMPLES}": responses >= BAR_EXAMPLES,
        f"fuzzed documents >= {BAR_EXAMPLES}": documents >= BAR_EXAMPLES,
        "0 crashes in the property tests": bool(property_tests) and crashes == 0,
        "every fault kind survived, 0 documents lost": bool(faults)
        and not fault_failures
        and lost == 0,
        "0 records lost to interruptions": (
            all("records_lost" in f and int(f["records_lost"]) == 0 for f in interruptions)
            if interruptions
            else None  # not measured in this run
        ),
        "every test passed": not failed and bool(cases),
    }
    return {
        "tests": {**outcomes, "total": len(cases), "failed": failed},
        "properties": properties,
        "fuzzed": {"responses": responses, "documents": documents, "crashes": crashes},
        "faults": faults,
        "documents_lost": lost,
        "interruptions": interruptions,
        "security": security,
        "bar": bar,
    }


def _table(header: list[str], rows: list[list[Any]]) -> str:
    return markdown_table(header, [["" if v is None else str(v) for v in row] for row in rows])


def markdown(report: dict[str, Any]) -> str:
    summary = report["summary"]
    machine = report["machine"]
    lines = [
        "# Reliability",
        "",
        f"Written by `python -m benchmarks.reliability` ({report['command']}) on "
        f"{report['date']}, Hypothesis profile `{report['profile']}`, "
        f"{'with' if report['slow'] else 'without'} the real llama.cpp server's tests; "
        f"{machine.get('cpus_available', machine.get('cpu_count'))} CPU(s), "
        f"{machine.get('platform')}. {summary['tests'].get('passed', 0)} of "
        f"{summary['tests']['total']} tests passed, {summary['tests'].get('skipped', 0)} skipped, "
        f"in {report['seconds']:.0f} s. How each figure is made: docs/reliability.md.",
        "",
        "## The bar (issue 27)",
        "",
        _table(
            ["check", "met"],
            [
                [name, "not measured" if met is None else "yes" if met else "**no**"]
                for name, met in summary["bar"].items()
            ],
        ),
        "",
        "## Property-based tests",
        "",
        f"{summary['fuzzed']['responses']:,} fuzzed model responses and "
        f"{summary['fuzzed']['documents']:,} fuzzed documents through `nlp.pipe`, "
        f"{summary['fuzzed']['crashes']} crashes.",
        "",
        _table(
            ["property", "examples", "documents", "model responses"],
            [
                [f["name"], f"{f['examples']:,}", f"{f['documents']:,}", f"{f['responses']:,}"]
                for f in summary["properties"]
            ],
        ),
        "",
        "## Faults injected",
        "",
        f"Documents lost: {summary['documents_lost']}.",
        "",
        _table(
            ["fault", "server", "injected", "docs in", "docs out", "lost", "outcome", "seconds"],
            [
                [
                    f["name"],
                    f.get("server", ""),
                    f.get("injected", ""),
                    f.get("docs_in", ""),
                    f.get("docs_out", ""),
                    f.get("lost", ""),
                    f.get("outcome", ""),
                    f.get("seconds", ""),
                ]
                for f in summary["faults"]
            ],
        ),
        "",
    ]
    if summary["interruptions"]:
        lines += [
            "## Interruptions (kill -9) and resume",
            "",
            _table(
                ["step", "killed", "records before", "records after", "lost", "duplicates"],
                [
                    [
                        f["name"],
                        f.get("kills", ""),
                        f.get("records_before", ""),
                        f.get("records_after", ""),
                        f.get("records_lost", ""),
                        f.get("duplicates", ""),
                    ]
                    for f in summary["interruptions"]
                ],
            ),
            "",
        ]
    lines += [
        "## Security checks",
        "",
        _table(
            ["check", "figures"],
            [
                [
                    f["name"],
                    ", ".join(f"{k} {v}" for k, v in f.items() if k not in ("kind", "name")),
                ]
                for f in summary["security"]
            ],
        ),
        "",
    ]
    if summary["tests"]["failed"]:
        lines += ["## Failed tests", "", *[f"- `{t}`" for t in summary["tests"]["failed"]], ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="ci", choices=["dev", "ci", "nightly"])
    parser.add_argument("--slow", action="store_true", help="also the tests with a real server")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="path without .md/.json")
    args = parser.parse_args(argv)
    files = TEST_FILES + [f for f in OPTIONAL_TEST_FILES if (ROOT / f).is_file()]
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="medllm_reliability_") as folder:
        log, junit = Path(folder) / "figures.jsonl", Path(folder) / "junit.xml"
        code = run_tests(files, args.profile, args.slow, log, junit)
        figures, cases = read_figures(log), read_junit(junit)
    report = {
        "command": " ".join(["python -m benchmarks.reliability", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "profile": args.profile,
        "slow": args.slow,
        "seconds": time.monotonic() - start,
        "pytest_exit_code": code,
        "test_files": files,
        "machine": machine_info(),
        "summary": summarise(figures, cases),
        "figures": figures,
        "tests": cases,
    }
    output = ROOT / args.output if not Path(args.output).is_absolute() else Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False, default=json_default) + "\n", "utf8"
    )
    output.with_suffix(".md").write_text(markdown(report) + "\n", "utf8")
    print(f"wrote {output.with_suffix('.md')} and .json (pytest exit code {code})")
    return 0 if all(met is not False for met in report["summary"]["bar"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
