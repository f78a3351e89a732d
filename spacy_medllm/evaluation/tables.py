"""Evaluation reports as Markdown: one system's table, and several systems side by side."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from spacy_medllm.evaluation.metrics import MISSED, SPURIOUS
from spacy_medllm.util.formatting import (
    fmt_mib,
    fmt_pct,
    fmt_rate,
    fmt_score,
    markdown_table,
)

COLUMNS = {
    "Strict P / R / F1": "seqeval, IOB2, mode='strict', micro; gold and predicted spans snapped "
    "to the pipeline's tokens (alignment_mode='expand')",
    "Macro F1": "seqeval's macro average over the labels in gold or predictions",
    "spaCy P / R / F": "spaCy's Scorer.score_spans(examples, 'ents') on the same docs",
    "Overlap P / R / F1": "a predicted span counts if it overlaps a gold span of the same label; "
    "a gold span is found if a predicted span of its label overlaps it",
    "words/s": "non-space tokens of the predicted docs / wall time of list(nlp.pipe(texts)), "
    "models loaded before the clock starts",
    "peak RSS MiB": "the process's peak resident memory while medllm_ner models load and the "
    "texts run (everything the process holds counts, other pipelines loaded for the same report "
    "too; the JSON has the RSS at the start; python -m benchmarks.memory runs one per process)",
    "Empty on gold texts": "texts with at least one gold entity on which the system predicted no "
    "entity at all (a model that learned to answer [] too often shows here)",
    "Negated / Hypothetical labelled": "mentions the gold leaves unannotated on purpose (an "
    "effect the text says did not happen, or may happen) that a predicted span overlaps",
    "F1 <label>": "strict F1 per label; n/a when the label has neither gold nor predicted spans",
    "Seed P / R / F1": "seed e-mails only: the seed's set metric, gold answer strings vs the "
    "texts of the predicted spans",
    "BERTScore F1": "mean over documents of BERTScore F1 (local all-MiniLM-L6-v2, 6 layers, no "
    "baseline rescaling) between 'LABEL: a, b; ...' strings of predicted and gold entities",
}


def _f(value: Any) -> str:
    return fmt_score(None if value is None else float(value))


def _label_f1(scores: Mapping[str, Any]) -> str:
    """Per-label F1, or n/a for a label with no gold and no predicted span."""
    return _f(scores["f1"]) if scores["tp"] + scores["fp"] + scores["fn"] else "n/a"


def _empty_answers(texts: Mapping[str, Any] | None) -> str:
    """ "k of n (share)": texts with a gold entity that got no entity (reports before it: n/a)."""
    if not texts or not texts.get("n_with_gold"):
        return "n/a"
    k, n = texts["n_with_gold_answered_empty"], texts["n_with_gold"]
    return f"{k} of {n} ({fmt_pct(k / n)})"


def markdown_report(report: Mapping[str, Any]) -> str:
    """Tables for one corpus split: scores per system, per-label F1, confusion per system."""
    labels = report["labels"]
    seed = any(s.get("seed") for s in report["systems"])
    bert = any(s.get("bertscore_f1") is not None for s in report["systems"])
    header = [
        "System",
        "Strict P",
        "Strict R",
        "Strict F1",
        "Macro F1",
        "spaCy P",
        "spaCy R",
        "spaCy F",
        "Overlap P",
        "Overlap R",
        "Overlap F1",
        *(f"F1 {label}" for label in labels),
        "TP/FP/FN",
        "Empty on gold texts",
        "words/s",
        "peak RSS MiB",
    ]
    unannotated = any(s.get("unannotated") for s in report["systems"])
    header += ["Negated labelled", "Hypothetical labelled"] if unannotated else []
    header += ["Seed P", "Seed R", "Seed F1"] if seed else []
    header += ["BERTScore F1"] if bert else []
    rows = []
    for system in report["systems"]:
        strict, sp, ov = system["strict"], system["spacy"], system["overlap"]["micro"]
        micro = strict["micro"]
        row = [
            system["name"],
            _f(micro["precision"]),
            _f(micro["recall"]),
            _f(micro["f1"]),
            _f(strict["macro"]["f1"]),
            _f(sp["ents_p"]),
            _f(sp["ents_r"]),
            _f(sp["ents_f"]),
            _f(ov["precision"]),
            _f(ov["recall"]),
            _f(ov["f1"]),
            *(_label_f1(strict["per_label"][label]) for label in labels),
            f"{micro['tp']}/{micro['fp']}/{micro['fn']}",
            _empty_answers(system.get("texts")),
            fmt_rate(system["speed"]["words_per_s"]),
            fmt_mib((system.get("memory") or {}).get("peak_rss_mib")),
        ]
        if unannotated:
            kinds = system.get("unannotated") or {}
            row += [
                f"{kinds[k]['n_labelled']} of {kinds[k]['n']}" if k in kinds else "n/a"
                for k in ("negated", "hypothetical")
            ]
        if seed:
            s = system.get("seed") or {}
            row += [_f(s.get("precision")), _f(s.get("recall")), _f(s.get("f1"))]
        if bert:
            row += [_f(system.get("bertscore_f1"))]
        rows.append(row)
    first = report["systems"][0] if report["systems"] else None
    gold = first["gold"] if first else None
    parts = [
        f"## {report['corpus']} ({report['split']})",
        "",
        f"{report['n_docs']} documents"
        + (f" (first {report['limit']})" if report.get("limit") else "")
        + f"; labels {', '.join(labels)}; licence: {report.get('licence', 'n/a')}.",
    ]
    if gold:
        a = gold["alignment"]
        parts.append(
            f"Gold spans: {gold['n_spans']} after snapping to the tokens of "
            f"{first['name']} ({a['n_snapped']} widened, {a['n_unaligned']} unaligned, "
            f"{a['n_overlaps_removed']} overlaps removed)."
        )
    parts += ["", markdown_table(header, rows), ""]
    llm_rows = [
        [
            system["name"],
            component,
            f"{r['n_chunks'] - r['n_parse_errors']}/{r['n_chunks']}",
            str(r["n_emitted"]),
            str(r["n_spans"]),
            str(r["rejected"].get("not_in_text", 0)),
            str(r["rejected"].get("truncated", 0)),
            str(
                sum(r["rejected"].values())
                - r["rejected"].get("not_in_text", 0)
                - r["rejected"].get("truncated", 0)
            ),
            str(r["n_errors"]),
        ]
        for system in report["systems"]
        for component, r in (system.get("medllm") or {}).items()
    ]
    if llm_rows:
        parts += [
            "What the LLM components recorded (entities the model emitted that did not become "
            "spans are counted, not hidden):",
            "",
            markdown_table(
                [
                    "System",
                    "Component",
                    "Answers parsed",
                    "Entities emitted",
                    "Spans",
                    "Rejected: not in text",
                    "Rejected: truncated",
                    "Rejected: other",
                    "Doc errors",
                ],
                llm_rows,
            ),
            "",
        ]
    for system in report["systems"]:
        parts += [f"Confusion ({system['name']}): rows gold, columns predicted", ""]
        parts += [confusion_markdown(system["confusion"]), ""]
    machine = report.get("machine", {})
    parts += ["Columns:", ""]
    skip = {"Seed P / R / F1"} if not seed else set()
    skip |= {"BERTScore F1"} if not bert else set()
    parts += [f"- **{key}**: {text}." for key, text in COLUMNS.items() if key not in skip]
    parts += [
        "",
        f"Machine: {machine.get('cpu_count')} CPUs, Python {machine.get('python')}, "
        f"spaCy {machine.get('spacy')}, torch {machine.get('torch')}.",
        "",
    ]
    return "\n".join(parts)


def confusion_markdown(confusion: Mapping[str, Mapping[str, int]]) -> str:
    """The confusion table as Markdown: gold labels (and SPURIOUS) by predicted labels (and
    MISSED)."""
    rows_labels = [r for r in confusion if r != SPURIOUS] + (
        [SPURIOUS] if SPURIOUS in confusion else []
    )
    columns = sorted({c for cells in confusion.values() for c in cells} - {MISSED})
    columns += [MISSED] if any(MISSED in cells for cells in confusion.values()) else []
    rows = [
        [row, *(str(confusion[row].get(column, 0)) for column in columns)] for row in rows_labels
    ]
    return markdown_table(["gold \\ predicted", *columns], rows) if rows else "(no spans)"


def read_reports(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    return [json.loads(Path(p).read_text("utf8")) for p in paths]


def combine_results(reports: Iterable[Mapping[str, Any] | str | Path]) -> str:
    """One Markdown table: rows = systems, columns = corpus (split), cells = strict micro F1, and
    words/s = all words / all seconds of that system over the corpora."""
    loaded = [r if isinstance(r, Mapping) else read_reports([r])[0] for r in reports]
    columns: dict[str, None] = {}
    cells: dict[str, dict[str, str]] = defaultdict(dict)
    speed: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for report in loaded:
        column = _column(report)
        columns.setdefault(column, None)
        for system in report["systems"]:
            cells[system["name"]][column] = _f(system["strict"]["micro"]["f1"])
            speed[system["name"]][0] += system["speed"]["n_words"]
            speed[system["name"]][1] += system["speed"]["seconds"]
    rows = []
    for name, row in cells.items():
        words, seconds = speed[name]
        rows.append(
            [
                name,
                *(row.get(c, "n/a") for c in columns),
                fmt_rate(words / seconds if seconds > 0 else None),
            ]
        )
    return markdown_table(["System", *columns, "words/s"], rows)


def _column(report: Mapping[str, Any]) -> str:
    return f"{report['corpus']} ({report['split']}, n={report['n_docs']})"
