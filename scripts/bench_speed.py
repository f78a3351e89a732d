"""Speed benchmark of medllm_ner against spacy-llm's NER task (same model and adapter).

A thin wrapper around `spacy_medllm.evaluation.speed_benchmark` (see its docstring); writes
training/reports/speed.json, .md and .png.

    nice -n 19 .venv/bin/python scripts/bench_speed.py --limit 10   # a sample, minutes
    nice -n 19 .venv/bin/python scripts/bench_speed.py              # both test splits in full
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spacy_medllm.evaluation.speed_benchmark import main

if __name__ == "__main__":
    sys.exit(main())
