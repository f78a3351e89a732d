"""How long the clinical search index takes to build from 1,000 texts, and a query to answer.

The texts are 1,000 English texts of the offline synthesiser (`synth offline`, seed 0; its own
composing time is not counted). They are labelled with the synthesiser's gold spans (DRUG,
ADVERSE_EVENT, DISEASE, ...) plus its negated and hypothetical mentions as ADVERSE_EVENT, and
ConText (the "medllm" rules) gives every entity its status; no model runs. Timed:

- `docs`: the Docs with their entities, sentencizer and ConText;
- `index`: writing them into a new SQLite file (`clinical.search.build_index`);
- each query of QUERIES: the first run after opening the file, then the median, 95th percentile
  and slowest of `--repeats` runs of `ClinicalIndex.search` (limit 20: the count, the page of
  hits and what matched in each).

Each query's count is checked against a brute-force count over the Docs in Python.

    .venv/bin/python -m benchmarks.search      # writes training/reports/search/search.{json,md}
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import spacy

from benchmarks._report import write_report
from spacy_medllm.clinical import add_context
from spacy_medllm.clinical.entities import docs_from_records, entity_records
from spacy_medllm.clinical.search import ClinicalIndex, build_index
from spacy_medllm.util.machine import machine_info

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "training" / "reports" / "search" / "search"


def synthetic_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` English synthetic texts as records with entities (no statuses)."""
    from spacy_medllm.data.scrape import scrape
    from spacy_medllm.data.synth.offline import compose_offline

    facts = scrape([REPO / "corpus" / "drug_pages"]).facts
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "synthetic.jsonl"
        compose_offline(facts, output, {"en": n}, seed=seed, progress=False)
        rows = [json.loads(line) for line in output.read_text(encoding="utf8").splitlines()]
    records = []
    for row in rows:
        mentions = row["meta"]["negated"] + row["meta"]["hypothetical"]
        entities = list(row["spans"]) + [{**m, "label": "ADVERSE_EVENT"} for m in mentions]
        records.append({"id": row["id"], "text": row["text"], "entities": entities})
    return records


def _phrase(words: str) -> re.Pattern[str]:
    tokens = re.findall(r"\w+", words)
    return re.compile(r"(?<!\w)" + r"\W+".join(map(re.escape, tokens)) + r"(?!\w)", re.I)


def queries(docs_entities: Sequence[list[dict[str, Any]]]) -> dict[str, Callable]:
    """The timed queries, each with a brute-force check over the Docs' entity records and
    texts: the most frequent drug and adverse event of the texts fill them in."""
    drugs = Counter(e["norm"] for ents in docs_entities for e in ents if e["label"] == "DRUG")
    events = Counter(
        e["norm"] for ents in docs_entities for e in ents if e["label"] == "ADVERSE_EVENT"
    )
    drug, event = drugs.most_common(1)[0][0], events.most_common(1)[0][0]
    word = event.split()[0]

    def has(ents, label=None, status=None, norm=None, not_status=None, contains=None):
        return any(
            (label is None or e["label"] == label)
            and (status is None or e["status"] == status)
            and (not_status is None or e["status"] != not_status)
            and (norm is None or e["norm"] == norm)
            and (contains is None or contains.search(e["text"]))
            for e in ents
        )

    return {
        f'label=ADVERSE_EVENT drug="{drug}" status=present': lambda ents, text: (
            has(ents, "ADVERSE_EVENT", "present") and has(ents, "DRUG", norm=drug)
        ),
        f'label=ADVERSE_EVENT status!=negated drug="{drug}"': lambda ents, text: (
            has(ents, "ADVERSE_EVENT", not_status="negated") and has(ents, "DRUG", norm=drug)
        ),
        "label=ADVERSE_EVENT status=negated": lambda ents, text: has(
            ents, "ADVERSE_EVENT", "negated"
        ),
        "label=ADVERSE_EVENT status=hypothetical": lambda ents, text: has(
            ents, "ADVERSE_EVENT", "hypothetical"
        ),
        "label=DISEASE status=historical": lambda ents, text: has(ents, "DISEASE", "historical"),
        f"text~{word}": lambda ents, text: has(ents, contains=_phrase(word)),
        f'adverse_event="{event}" label=DRUG status=present': lambda ents, text: (
            has(ents, "ADVERSE_EVENT", norm=event) and has(ents, "DRUG", "present")
        ),
        '"blood pressure"': lambda ents, text: bool(_phrase("blood pressure").search(text)),
        f'drug="{drug}" "{word}"': lambda ents, text: (
            has(ents, "DRUG", norm=drug) and bool(_phrase(word).search(text))
        ),
        "label=DRUG": lambda ents, text: has(ents, "DRUG"),
    }


def run(n: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    began = time.perf_counter()
    records = synthetic_records(n, seed)
    compose_seconds = time.perf_counter() - began
    nlp = spacy.blank("en")
    add_context(nlp)
    began = time.perf_counter()
    docs = list(docs_from_records(nlp, records, run_pipeline=True))
    docs_seconds = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "index.sqlite"
        began = time.perf_counter()
        stats = build_index(path, docs)
        index_seconds = time.perf_counter() - began
        size = path.stat().st_size
        ents = [entity_records(doc) for doc in docs]
        texts = [doc.text for doc in docs]
        rows = []
        for query, check in queries(ents).items():
            expected = sum(bool(check(e, t)) for e, t in zip(ents, texts, strict=True))
            with ClinicalIndex(path, create=False) as index:
                began = time.perf_counter()
                first = index.search(query)
                cold = (time.perf_counter() - began) * 1000
                times = []
                for _ in range(repeats):
                    began = time.perf_counter()
                    index.search(query)
                    times.append((time.perf_counter() - began) * 1000)
            times.sort()
            rows.append(
                {
                    "query": query,
                    "documents": first.total,
                    "expected": expected,
                    "verified": first.total == expected,
                    "first_ms": cold,
                    "median_ms": statistics.median(times),
                    "p95_ms": times[max(0, round(0.95 * len(times)) - 1)],
                    "max_ms": times[-1],
                }
            )
    return {
        "n_texts": n,
        "labelled_by": "synthesiser gold spans + its negated/hypothetical mentions; ConText "
        '("medllm" rules) statuses',
        "compose_seconds_not_counted": compose_seconds,
        "docs_seconds": docs_seconds,
        "index_seconds": index_seconds,
        "build_seconds": docs_seconds + index_seconds,
        "index_bytes": size,
        "stats": stats,
        "statuses": dict(Counter(e["status"] for doc in ents for e in doc)),
        "queries": rows,
        "repeats": repeats,
    }


def markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    lines = [
        "# Clinical search index: build and query times",
        "",
        f"{r['n_texts']} English synthetic texts, {r['stats']['entities']} entities "
        f"(labelled by {r['labelled_by']}); statuses {r['statuses']}. Machine: "
        f"{report['machine'].get('cpu_count', '?')} cores, "
        f"{report['machine'].get('cpus_available', '?')} available to the process; one thread. "
        f"Written by `{report['command']}`.",
        "",
        f"- Docs with entities and ConText: {r['docs_seconds']:.1f} s",
        f"- Index written (SQLite + FTS5): {r['index_seconds']:.2f} s, "
        f"{r['index_bytes'] / 1e6:.1f} MB",
        f"- Build in all: {r['build_seconds']:.1f} s (bar: under 60 s)",
        "",
        f"Query times in ms (first run after opening, then {r['repeats']} runs; limit 20; bar: "
        "under 50 ms):",
        "",
        "| Query | Documents | Checked | First | Median | p95 | Max |",
        "|---|---|---|---|---|---|---|",
    ]
    for q in r["queries"]:
        lines.append(
            f"| `{q['query']}` | {q['documents']} | {'yes' if q['verified'] else 'NO'} | "
            f"{q['first_ms']:.2f} | {q['median_ms']:.2f} | {q['p95_ms']:.2f} | {q['max_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="synthetic texts")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="path, no suffix")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    report = {
        "command": " ".join(["python -m benchmarks.search", *given]),
        "machine": machine_info(),
        "results": run(args.n, args.repeats),
    }
    write_report(args.output, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
