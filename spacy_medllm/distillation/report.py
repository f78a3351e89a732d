"""Teacher and students scored on one gold split in one run, side by side: per-label strict F1,
the difference to the teacher, words per second and the speed-up; Markdown, JSON and PNG.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spacy.language import Language

from spacy_medllm.distillation.teacher import Record, check_unique, read_texts
from spacy_medllm.util.formatting import (
    fmt_rate,
    fmt_score,
    json_default,
    markdown_table,
)


def distillation_summary(report: Mapping[str, Any], teacher: str) -> dict[str, Any]:
    """Per system (teacher first): strict F1 micro and per label, the difference to the teacher's
    F1, words per second and the speed-up over the teacher, from an `evaluate_corpus` report."""
    systems = {s["name"]: s for s in report["systems"]}
    if teacher not in systems:
        raise KeyError(f"no system {teacher!r} in the report: {sorted(systems)}")
    base = systems[teacher]
    base_speed = base["speed"]["words_per_s"]
    rows = []
    for name in [teacher, *(n for n in systems if n != teacher)]:
        system = systems[name]
        strict = system["strict"]
        speed = system["speed"]["words_per_s"]
        rows.append(
            {
                "name": name,
                "role": "teacher" if name == teacher else "student",
                "f1": strict["micro"]["f1"],
                "f1_minus_teacher": strict["micro"]["f1"] - base["strict"]["micro"]["f1"],
                "per_label_f1": {
                    label: strict["per_label"][label]["f1"] for label in report["labels"]
                },
                "words_per_s": speed,
                "speedup": speed / base_speed if speed and base_speed else None,
            }
        )
    return {
        "corpus": report["corpus"],
        "split": report["split"],
        "n_docs": report["n_docs"],
        "labels": list(report["labels"]),
        "teacher": teacher,
        "systems": rows,
    }


def summary_markdown(summary: Mapping[str, Any]) -> str:
    labels = summary["labels"]
    header = [
        "System",
        "Role",
        "Strict F1",
        "F1 - teacher",
        *(f"F1 {x}" for x in labels),
        "words/s",
        "speed-up",
    ]
    rows = [
        [
            row["name"],
            row["role"],
            fmt_score(row["f1"]),
            f"{row['f1_minus_teacher']:+.3f}",
            *(fmt_score(row["per_label_f1"][x]) for x in labels),
            fmt_rate(row["words_per_s"]),
            "n/a" if row["speedup"] is None else f"{fmt_rate(row['speedup'])}x",
        ]
        for row in summary["systems"]
    ]
    return "\n".join(
        [
            f"## Distillation: {summary['corpus']} ({summary['split']}, n={summary['n_docs']})",
            "",
            f"Teacher: {summary['teacher']}. Strict F1 is seqeval's (IOB2, mode='strict') as in "
            "`spacy_medllm.evaluation.evaluate`; words/s and the speed-up over the teacher come "
            "from the same "
            "run on this machine.",
            "",
            markdown_table(header, rows),
            "",
        ]
    )


def distillation_report(
    teacher: tuple[str, str | Path | Language],
    students: Sequence[tuple[str, str | Path | Language]],
    corpus: str,
    split: str,
    output: str | Path,
    *,
    stem: str | None = None,
    examples: Sequence[Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Score teacher and students on one gold split in one run (`evaluate.evaluate_corpus`,
    which writes `<stem>.json/.md/.png`), then `distillation-<stem>.json/.md` (the side-by-side
    summary) and `distillation-<stem>.png` (F1 against words/s). Returns the summary.

    `examples`: gold examples of the user's own (then `corpus` and `split` only name them)."""
    from spacy_medllm.evaluation.evaluate import evaluate_corpus, evaluate_examples
    from spacy_medllm.evaluation.plots import plot_f1_vs_speed

    stem = stem or f"{corpus}-{split}"
    output = Path(output)
    systems = [teacher, *students]
    if examples is None:
        report = evaluate_corpus(systems, corpus, split, output, stem=stem, **options)
    else:
        options.pop("path", None)
        source = {"corpus": corpus, "split": split}
        report = evaluate_examples(systems, examples, output, source=source, stem=stem, **options)
    summary = distillation_summary(report, teacher[0])
    (output / f"distillation-{stem}.json").write_text(
        json.dumps(summary, indent=2, default=json_default), "utf8"
    )
    (output / f"distillation-{stem}.md").write_text(summary_markdown(summary), "utf8")
    plot_f1_vs_speed([report], output / f"distillation-{stem}.png")
    return summary


def load_records(
    spec: str, limit: int | None = None, path: str | Path | None = None, lang: str | None = None
) -> list[Record]:
    """Texts to label from a file (`read_texts`) or from a registered corpus, given as
    "corpus:NAME" or "corpus:NAME:SPLIT" (default split train; gold labels are ignored)."""
    if not spec.startswith("corpus:"):
        return read_texts(spec, limit, lang)
    from spacy_medllm.corpora.registry import load_corpus

    _, name, *rest = spec.split(":")
    split = rest[0] if rest else "train"
    examples = load_corpus(name, split, path, limit=limit)
    records = [
        {"id": str(e.get("id") or f"{name}:{split}:{i}"), "text": e["text"]}
        for i, e in enumerate(examples)
    ]
    check_unique(records)
    return records
