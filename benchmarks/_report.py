"""Writing a benchmark's results: `<output>.json` and `<output>.md` side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(output: Path | str, report: dict[str, Any], markdown: str) -> None:
    """Write `report` as JSON and `markdown` beside it (folders made), and print the Markdown."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    output.with_suffix(".md").write_text(markdown, encoding="utf8")
    print(markdown)
