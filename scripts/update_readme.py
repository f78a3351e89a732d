"""Put generated Markdown reports into README.md (or a docs page) between `<!-- NAME:start/end -->`.

    python scripts/update_readme.py training/reports/seed_benchmark.md --name seed-benchmark \
        --readme docs/seed-benchmark.md
    python scripts/update_readme.py A.md B.md --name distil-headline --tables-only

The page's figures are then exactly what the last workflow run wrote; rerunning the workflow
regenerates them. A report's own top-level heading is dropped (the page has its own); with
several reports, or with --tables-only, it becomes a bold caption above the report's tables.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def replace_block(readme: str, name: str, content: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.DOTALL)
    if not pattern.search(readme):
        raise SystemExit(f"no {start} ... {end} block")
    return pattern.sub(lambda _: f"{start}\n{content.strip()}\n{end}", readme, count=1)


def report_text(path: Path, caption: bool, tables_only: bool) -> str:
    lines = path.read_text(encoding="utf8").splitlines()
    heading = None
    if lines and lines[0].startswith("## "):
        heading, lines = lines[0][3:].strip(), lines[1:]
    if tables_only:  # the first table only
        start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
        rest = range(start, len(lines))
        end = next((i for i in rest if not lines[i].startswith("|")), len(lines))
        lines = lines[start:end]
    text = "\n".join(lines).strip()
    if caption and heading:
        text = f"*{heading}*\n\n{text}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", type=Path, nargs="+")
    parser.add_argument("--name", required=True)
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument(
        "--tables-only", action="store_true", help="keep each report's first table only"
    )
    args = parser.parse_args(argv)
    caption = len(args.reports) > 1 or args.tables_only
    text = "\n\n".join(report_text(p, caption, args.tables_only) for p in args.reports)
    readme = args.readme.read_text(encoding="utf8")
    args.readme.write_text(replace_block(readme, args.name, text), encoding="utf8")
    sys.stdout.write(f"Updated the {args.name} block of {args.readme}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
