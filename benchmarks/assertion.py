"""Assertion on given entities: how well each setting tells present, negated, hypothetical,
historical and family mentions apart.

The entities are the gold ones (offsets and labels given), so only the status is scored. Sets:

- `assertion-dev` / `assertion-test`: corpus/assertion (hand-written; the "medllm" ConText rules
  were written looking at dev's errors, test was not used for them);
- `out-of-style`: corpus/out_of_style, written by another hand for NER: its entities count as
  present and its unannotated negated / hypothetical mentions (labelled ADVERSE_EVENT here) as
  negated / hypothetical; it marks no historical or family mentions, so those predictions count
  as present there;
- `synthetic`: English texts of the offline synthesiser (`synth offline`, seed 0): gold spans
  present, its negated and hypothetical templates' mentions negated / hypothetical (same
  collapsing).

Settings: ConText with medspaCy's rules, ConText with the "medllm" rules, and, given
`--model-pipeline` (a saved pipeline whose medllm_ner writes a "status" per entity, with
save_io), the model's own statuses (`medllm_assertion`) and the model after ConText. A
prediction of "uncertain" (medspaCy's `is_uncertain`) is scored as "hypothetical".

    .venv/bin/python -m benchmarks.assertion            # writes training/reports/assertion/

Writes assertion.json (per set and setting: accuracy, per-status precision / recall / F1 and
the confusion matrix, the errors of each setting) and assertion.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import spacy
from spacy.language import Language
from spacy.tokens import Doc

from benchmarks._report import write_report
from spacy_medllm.clinical import add_context
from spacy_medllm.clinical.entities import (
    FAMILY,
    HISTORICAL,
    HYPOTHETICAL,
    NEGATED,
    PRESENT,
    UNCERTAIN,
    docs_from_records,
    status_of,
)
from spacy_medllm.evaluation.metrics import prf
from spacy_medllm.util.formatting import fmt_score
from spacy_medllm.util.machine import machine_info

REPO = Path(__file__).resolve().parents[1]
ASSERTION_FILE = REPO / "corpus" / "assertion" / "assertion.jsonl"
DEFAULT_OUTPUT = REPO / "training" / "reports" / "assertion" / "assertion"
SCORED = (PRESENT, NEGATED, HYPOTHETICAL, HISTORICAL, FAMILY)
# Sets whose gold knows only present, negated and hypothetical.
THREE_STATUS_SETS = ("out-of-style", "synthetic")


def assertion_sets(path: Path = ASSERTION_FILE) -> dict[str, list[dict[str, Any]]]:
    """The hand-written set's two splits as records with gold statuses."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf8").splitlines()]
    return {
        f"assertion-{split}": [r for r in rows if r["split"] == split] for split in ("dev", "test")
    }


def _with_mentions(
    key: str,
    text: str,
    spans: Sequence[dict],
    negated: Sequence[dict],
    hypothetical: Sequence[dict],
) -> dict[str, Any]:
    entities = [{**s, "status": PRESENT} for s in spans]
    entities += [{**m, "label": "ADVERSE_EVENT", "status": NEGATED} for m in negated]
    entities += [{**m, "label": "ADVERSE_EVENT", "status": HYPOTHETICAL} for m in hypothetical]
    return {"id": key, "text": text, "entities": sorted(entities, key=lambda e: e["start"])}


def out_of_style_set() -> list[dict[str, Any]]:
    """corpus/out_of_style as assertion records (see the module docstring)."""
    path = REPO / "corpus" / "out_of_style" / "out-of-style.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf8").splitlines()]
    return [
        _with_mentions(r["id"], r["text"], r["entities"], r["negated"], r["hypothetical"])
        for r in rows
    ]


def synthetic_set(n: int = 300, seed: int = 0) -> list[dict[str, Any]]:
    """`n` English texts of the offline synthesiser as assertion records."""
    from spacy_medllm.data.scrape import scrape
    from spacy_medllm.data.synth.offline import compose_offline

    facts = scrape([REPO / "corpus" / "drug_pages"]).facts
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "synthetic.jsonl"
        compose_offline(facts, output, {"en": n}, seed=seed, progress=False)
        rows = [json.loads(line) for line in output.read_text(encoding="utf8").splitlines()]
    return [
        _with_mentions(
            r["id"], r["text"], r["spans"], r["meta"]["negated"], r["meta"]["hypothetical"]
        )
        for r in rows
    ]


def scored_status(status: str, three_statuses: bool = False) -> str:
    """A predicted status as scored: uncertain is hypothetical; on a set whose gold knows only
    present, negated and hypothetical, historical and family count as present."""
    if status == UNCERTAIN:
        status = HYPOTHETICAL
    if three_statuses and status in (HISTORICAL, FAMILY):
        status = PRESENT
    return status


def score(pairs: Sequence[tuple[str, str]], statuses: Sequence[str] = SCORED) -> dict[str, Any]:
    """Accuracy, per-status P/R/F1 and the confusion matrix of (gold, predicted) pairs."""
    confusion = Counter(pairs)
    per_status = {}
    for status in statuses:
        tp = confusion[(status, status)]
        n_pred = sum(n for (_, p), n in confusion.items() if p == status)
        n_gold = sum(n for (g, _), n in confusion.items() if g == status)
        per_status[status] = {"n": n_gold, "n_predicted": n_pred, **prf(tp, n_pred, tp, n_gold)}
    right = sum(n for (g, p), n in confusion.items() if g == p)
    return {
        "n": len(pairs),
        "accuracy": right / len(pairs) if pairs else 0.0,
        "per_status": per_status,
        "confusion": {f"{g}->{p}": n for (g, p), n in sorted(confusion.items())},
    }


def predict(
    process: Callable[[Doc], Doc], nlp: Language, records: Sequence[dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """(record, gold entity, predicted status) for every gold entity: Docs with the gold
    entities (no statuses) run through `process`."""
    bare = [
        {**r, "entities": [{k: v for k, v in e.items() if k != "status"} for e in r["entities"]]}
        for r in records
    ]
    out = []
    for record, doc in zip(records, docs_from_records(nlp, bare), strict=True):
        doc = process(doc)
        by_offsets = {(e.start_char, e.end_char): status_of(e) for e in doc.ents}
        for entity in record["entities"]:
            predicted = by_offsets.get((entity["start"], entity["end"]), PRESENT)
            out.append((record, entity, predicted))
    return out


def context_process(rules: str) -> tuple[Language, Callable[[Doc], Doc]]:
    nlp = spacy.blank("en")
    add_context(nlp, rules=rules)

    def process(doc: Doc) -> Doc:
        for _, component in nlp.pipeline:
            doc = component(doc)
        return doc

    return nlp, process


def model_process(pipeline: Path, with_context: bool) -> tuple[Language, Callable[[Doc], Doc]]:
    """The saved pipeline's medllm_ner (writing statuses, save_io) on a Doc that keeps its gold
    entities: medllm_ner's own spans go to a span group, `medllm_assertion` then reads the
    statuses onto the gold entities; with ConText ("medllm" rules) first."""
    import spacy_medllm.clinical  # noqa: F401  (medllm_assertion)

    nlp = spacy.load(pipeline)
    for _, component in nlp.pipeline:
        if component.__class__.__name__ == "MedLLMNER":
            component.output, component.spans_key, component.save_io = "spans", "model", True
    if with_context:
        add_context(nlp)
    if "medllm_assertion" not in nlp.pipe_names:
        nlp.add_pipe("medllm_assertion", config={"combine": "replace"})

    def process(doc: Doc) -> Doc:
        for _, component in nlp.pipeline:
            doc = component(doc)
        return doc

    return nlp, process


def run(
    sets: dict[str, list[dict[str, Any]]],
    settings: dict[str, tuple[Language, Callable[[Doc], Doc]]],
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for set_name, records in sets.items():
        three = set_name in THREE_STATUS_SETS
        statuses = (PRESENT, NEGATED, HYPOTHETICAL) if three else SCORED
        for setting, (nlp, process) in settings.items():
            began = time.perf_counter()
            predicted = predict(process, nlp, records)
            pairs = [(e["status"], scored_status(p, three)) for _, e, p in predicted]
            row = score(pairs, statuses)
            row["seconds"] = time.perf_counter() - began
            row["errors"] = [
                {"id": r["id"], "text": e["text"], "gold": e["status"], "predicted": p,
                 "sentence": r["text"][:200]}
                for (r, e, p), (g, s) in zip(predicted, pairs, strict=True)
                if g != s
            ]  # fmt: skip
            results.setdefault(set_name, {})[setting] = row
    return results


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Assertion on given entities",
        "",
        "Per-status F1 and accuracy with the gold entities given (only the status is scored). "
        f"Written by `{report['command']}`; sets and settings in benchmarks/assertion.py.",
        "",
        "| Set | Setting | n | Accuracy | F1 present | F1 negated | F1 hypothetical | "
        "F1 historical | F1 family |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for set_name, by_setting in report["results"].items():
        for setting, row in by_setting.items():
            cells = [
                fmt_score(row["per_status"][s]["f1"]) if s in row["per_status"] else "-"
                for s in SCORED
            ]
            lines.append(
                f"| {set_name} | {setting} | {row['n']} | {fmt_score(row['accuracy'])} | "
                + " | ".join(cells)
                + " |"
            )
    lines += [
        "",
        'Which sets shaped the "medllm" rules (spacy_medllm/clinical/rules.py): round 1 '
        "looked at assertion-dev's errors only; round 2 at the errors of out-of-style and "
        'synthetic too (cues inside mentions, "warned about", "withheld"). '
        "assertion-test was never used to change a rule, but was written by the same hand "
        "as dev. Round 1's figures are in docs/clinical.md.",
        "",
        "Mentions per status (gold):",
        "",
    ]
    for set_name, by_setting in report["results"].items():
        first = next(iter(by_setting.values()))
        counts = ", ".join(f"{s} {v['n']}" for s, v in first["per_status"].items())
        lines.append(f"- {set_name}: {counts}")
    if report.get("not_run"):
        lines += ["", f"Not run: {report['not_run']}"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-pipeline", type=Path, default=None)
    parser.add_argument("--synthetic", type=int, default=300, help="synthetic texts (0: none)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="path, no suffix")
    args = parser.parse_args(argv)
    sets = assertion_sets()
    sets["out-of-style"] = out_of_style_set()
    if args.synthetic:
        sets["synthetic"] = synthetic_set(args.synthetic)
    settings = {
        "context-medspacy": context_process("medspacy"),
        "context-medllm": context_process("medllm"),
    }
    not_run = None
    if args.model_pipeline is not None:
        settings["model"] = model_process(args.model_pipeline, with_context=False)
        settings["context-medllm+model"] = model_process(args.model_pipeline, with_context=True)
    else:
        not_run = (
            "the model's own statuses (medllm_assertion) and ConText + model: no model here is "
            "trained to write a status per entity (docs/clinical.md); pass --model-pipeline."
        )
    report = {
        "command": "python -m benchmarks.assertion "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "sets": {name: len(records) for name, records in sets.items()},
        "results": run(sets, settings),
        "not_run": not_run,
    }
    write_report(args.output, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
