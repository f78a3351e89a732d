"""Figures the reliability tests report: one JSON line per figure, appended to the file named by
MEDLLM_RELIABILITY_LOG (nothing is written when it is unset). `benchmarks/reliability.py` runs the
tests with it set and turns the lines into training/reports/reliability.md and .json.

Each line: {"kind": "property" | "fault" | "security" | "interruption", "name": ..., ...figures}.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

LOG_ENV = "MEDLLM_RELIABILITY_LOG"
_lock = threading.Lock()


def log_figure(kind: str, name: str, **figures: Any) -> None:
    """Append one figure to the reliability log, if one is being written."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    line = json.dumps({"kind": kind, "name": name, **figures}, ensure_ascii=False, default=str)
    with _lock, open(path, "a", encoding="utf8") as handle:
        handle.write(line + "\n")
