"""A quality gate for LLM labels: what an annotator labelled is checked before training on it.

`gate_labels` reads a `label` run's log (one line per text: the text, its entities as character
offsets, the model's raw answer and the task's record) and keeps a text only if

- every entity is a span of the text with a label the gate knows (`labels`);
- the model's answer had no problem the task recorded (an answer that could not be parsed, a
  string not in the text);
- it agrees with a reference: the offline composer's gold where the text has it, else a second
  annotator's labels of the same text (another model, another prompt, the dictionary), with
  strict span F1 >= `min_agreement` (two empty answers agree). A text with no reference is
  dropped ("unchecked") unless `allow_unchecked`.

Kept texts are written as training JSONL (`{"id", "text", "entities"}`, the annotator's
labels), and the report (JSON and Markdown) counts every reason a text was dropped, per
language and label, so that one can see what the gate kept and why.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

REASONS = (
    "outside_text",
    "unknown_label",
    "answer_problem",
    "disagrees_with_gold",
    "annotators_disagree",
    "unchecked",
)
Span = tuple[int, int, str]


def read_log(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text("utf8").splitlines() if line.strip()]


def span_f1(first: Iterable[Span], second: Iterable[Span]) -> float:
    """Strict F1 of two span sets; 1.0 when both are empty."""
    a, b = set(first), set(second)
    if not a and not b:
        return 1.0
    both = len(a & b)
    return 2 * both / (len(a) + len(b))


def _spans(entities: Iterable[Sequence[Any]]) -> list[Span]:
    return [(int(s), int(e), str(label)) for s, e, label in entities]


def _answer_problems(record: Mapping[str, Any] | None) -> list[str]:
    if not record:
        return []
    problems = []
    if record.get("parse_errors"):
        problems.append("unparseable")
    if any(r.get("reason") == "not_in_text" for r in record.get("rejected", [])):
        problems.append("not_in_text")
    if record.get("error"):
        problems.append("error")
    return problems


def gate_labels(
    log: Sequence[Mapping[str, Any]],
    *,
    labels: Sequence[str] | None = None,
    gold: Mapping[str, Sequence[Span]] | None = None,
    second: Mapping[str, Sequence[Span]] | None = None,
    min_agreement: float = 0.8,
    allow_unchecked: bool = False,
    compare: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(kept examples, report) for the log lines of a labelling run; see the module docstring.

    `gold` and `second`: {text id: spans} of the reference. `compare`: the labels whose spans
    must agree (default: `labels`, or all), e.g. DRUG only when the second annotator is a drug
    dictionary.
    """
    keep_labels = set(labels) if labels else None
    compared = set(compare) if compare else keep_labels
    kept: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    per_lang: dict[str, Counter[str]] = {}
    agreement: list[float] = []
    examples: dict[str, list[str]] = {}
    for line in log:
        text, lang = line["text"], line.get("lang", "")
        spans = _spans(line.get("ents", []))
        reason = None
        if any(not (0 <= s < e <= len(text)) for s, e, _ in spans):
            reason = "outside_text"
        elif keep_labels is not None and any(label not in keep_labels for *_, label in spans):
            reason = "unknown_label"
        elif _answer_problems(line.get("record")):
            reason = "answer_problem"
        else:
            reference, kind = None, None
            if gold is not None and line["id"] in gold:
                reference, kind = gold[line["id"]], "disagrees_with_gold"
            elif second is not None and line["id"] in second:
                reference, kind = second[line["id"]], "annotators_disagree"
            if reference is None:
                reason = None if allow_unchecked else "unchecked"
            else:
                wanted = [s for s in _spans(reference) if compared is None or s[2] in compared]
                mine = [s for s in spans if compared is None or s[2] in compared]
                score = span_f1(mine, wanted)
                agreement.append(score)
                if score < min_agreement:
                    reason = kind
        counts = per_lang.setdefault(lang, Counter())
        if reason is not None:
            dropped[reason] += 1
            counts[reason] += 1
            listed = examples.setdefault(reason, [])
            if len(listed) < 5:
                listed.append(str(line["id"]))
            continue
        counts["kept"] += 1
        kept.append(
            {
                "id": line["id"],
                "lang": lang,
                "text": text,
                "entities": [
                    {"start": s, "end": e, "label": label, "text": text[s:e]}
                    for s, e, label in spans
                ],
            }
        )
    report = {
        "n_texts": len(log),
        "n_kept": len(kept),
        "dropped": {reason: dropped[reason] for reason in REASONS if dropped[reason]},
        "per_lang": {lang: dict(c) for lang, c in sorted(per_lang.items())},
        "kept_entities_per_label": dict(
            Counter(e["label"] for k in kept for e in k["entities"]).most_common()
        ),
        "mean_agreement": sum(agreement) / len(agreement) if agreement else None,
        "n_compared": len(agreement),
        "min_agreement": min_agreement,
        "labels": list(labels) if labels else None,
        "compared_labels": sorted(compared) if compared else None,
        "examples_dropped": examples,
    }
    return kept, report


def gold_of(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Span]]:
    """{id: spans} of the synthetic records that carry gold (the offline composer's)."""
    return {
        str(r["id"]): [(s["start"], s["end"], s["label"]) for s in r["spans"]]
        for r in records
        if r.get("spans") is not None
    }


def labels_of_log(log: Iterable[Mapping[str, Any]]) -> dict[str, list[Span]]:
    """{id: spans} of another annotator's log, as a reference."""
    return {str(line["id"]): _spans(line.get("ents", [])) for line in log}


def report_markdown(report: Mapping[str, Any], name: str = "LLM labels") -> str:
    from spacy_medllm.util.formatting import fmt_score, markdown_table

    rows = [[reason, str(n)] for reason, n in report["dropped"].items()]
    lines = [
        f"## Quality gate: {name}",
        "",
        f"{report['n_kept']} of {report['n_texts']} labelled texts kept for training; mean "
        f"strict span agreement with the reference {fmt_score(report['mean_agreement'])} over "
        f"{report['n_compared']} texts (kept at >= {report['min_agreement']}).",
        "",
        markdown_table(["Dropped because", "Texts"], rows or [["(nothing dropped)", "0"]]),
        "",
        "Per language: "
        + "; ".join(
            f"{lang}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
            for lang, counts in report["per_lang"].items()
        ),
        "",
        "Kept entities per label: "
        + (", ".join(f"{k} {v}" for k, v in report["kept_entities_per_label"].items()) or "none"),
    ]
    return "\n".join(lines) + "\n"


def write_gate(
    kept: Sequence[Mapping[str, Any]], report: Mapping[str, Any], output: str | Path, name: str
) -> dict[str, Path]:
    """`<output>/gated.jsonl` (training JSONL) and `gate.json` / `gate.md` (the report)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = {
        "jsonl": output / "gated.jsonl",
        "json": output / "gate.json",
        "md": output / "gate.md",
    }
    paths["jsonl"].write_text(
        "".join(json.dumps(k, ensure_ascii=False) + "\n" for k in kept), encoding="utf8"
    )
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf8")
    paths["md"].write_text(report_markdown(report, name), encoding="utf8")
    return paths
