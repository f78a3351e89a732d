"""Pieces shared by the reports: Markdown tables, number formats, JSON, NAME=VALUE options.

Used by `seed_benchmark` and `evaluate`; only the standard library is imported at module level
(torch is looked at inside `machine_info`, if it is installed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def name_value_pairs(
    values: Sequence[str], option: str, metavar: str = "NAME=VALUE"
) -> list[tuple[str, str]]:
    """Read repeated command-line values of the form NAME=VALUE (`--pipeline cnn=path`); a value
    without a name, an "=" or a right-hand side stops the command with a message naming `option`.
    """
    pairs = []
    for value in values:
        name, sep, target = value.partition("=")
        if not sep or not name or not target:
            raise SystemExit(f"{option} takes {metavar}, got {value!r}")
        pairs.append((name, target))
    return pairs


def fmt_score(value: float | None) -> str:
    """A score with 3 decimals; "n/a" for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"


def fmt_pct(value: float | None) -> str:
    """A share as a percentage with one decimal; "n/a" for None."""
    return "n/a" if value is None else f"{100 * value:.1f}%"


def fmt_rate(value: float | None) -> str:
    """A rate: thousands separators from 100 up, 3 significant digits below; "n/a" for None."""
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def fmt_mib(value: float | None) -> str:
    """A memory size in MiB, whole, with thousands separators; "n/a" for None (not measured)."""
    return "n/a" if value is None else f"{value:,.0f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (no trailing newline)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)`: sets sorted, tuples as lists, numpy scalars as numbers."""
    if isinstance(value, (set, tuple)):
        return sorted(value) if isinstance(value, set) else list(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)
