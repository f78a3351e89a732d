"""Put a generated Markdown report into README.md between `<!-- NAME:start/end -->` markers.

    python scripts/update_readme.py training/reports/seed_benchmark.md --name seed-benchmark

The README's figures are then exactly what the last workflow run wrote; rerunning the workflow
regenerates them. The report's own top-level heading is dropped (the README has its own).
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
        raise SystemExit(f"README has no {start} ... {end} block")
    return pattern.sub(lambda _: f"{start}\n{content.strip()}\n{end}", readme, count=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args(argv)
    lines = args.report.read_text(encoding="utf8").splitlines()
    if lines and lines[0].startswith("## "):
        lines = lines[1:]
    # The report's ### headings sit under the README's ## section.
    text = "\n".join(lines)
    readme = args.readme.read_text(encoding="utf8")
    args.readme.write_text(replace_block(readme, args.name, text), encoding="utf8")
    sys.stdout.write(f"Updated the {args.name} block of {args.readme}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
