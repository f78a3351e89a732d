"""Entity metrics in one place: strict and overlap P/R/F1 per label, spaCy's scorer, confusions.

Spans are `(start, end, label)` character offsets. `prf` is the one precision/recall/F1 helper
the package uses; `iob_tags` gives seqeval's IOB2 tags of a Doc for strict entity F1.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spacy.tokens import Doc

CharSpan = tuple[int, int, str]

MISSED = "MISSED"

SPURIOUS = "SPURIOUS"


def label_mapper(labels: Sequence[str], label_map: Mapping[str, str] | None = None) -> Any:
    """A function from a predicted label to the label it is scored as: `label_map` first, then a
    scored label equal to it ignoring case, else the label unchanged."""
    explicit = dict(label_map or {})
    by_case = {label.lower(): label for label in labels}

    def mapped(label: str) -> str:
        if label in explicit:
            return explicit[label]
        if label in labels:
            return label
        return by_case.get(label.lower(), label)

    return mapped


def prf(tp_pred: int, n_pred: int, tp_gold: int, n_gold: int) -> dict[str, float]:
    """Precision (`tp_pred` of `n_pred` predictions right), recall (`tp_gold` of `n_gold` gold
    entities found) and F1; 0.0 where a count is 0. The one P/R/F helper of the package: with
    one-to-one matching, `prf(tp, tp + fp, tp, tp + fn)`."""
    p = tp_pred / n_pred if n_pred else 0.0
    r = tp_gold / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def _overlaps(a: CharSpan, b: CharSpan) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def strict_scores(
    gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]], labels: Sequence[str]
) -> dict[str, Any]:
    """seqeval strict IOB2 scores: micro (with TP/FP/FN), per label, and seqeval's macro avg."""
    import warnings

    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    scores = span_scores(gold_tags, pred_tags, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = classification_report(
            [list(t) for t in gold_tags],
            [list(t) for t in pred_tags],
            mode="strict",
            scheme=IOB2,
            zero_division=0,
            output_dict=True,
        )
    macro = report.get("macro avg")
    scores["macro"] = {
        "precision": float(macro["precision"]) if macro else 0.0,
        "recall": float(macro["recall"]) if macro else 0.0,
        "f1": float(macro["f1-score"]) if macro else 0.0,
    }
    return scores


def overlap_scores(
    gold: Sequence[Sequence[CharSpan]], pred: Sequence[Sequence[CharSpan]], labels: Sequence[str]
) -> dict[str, Any]:
    """Partial-match P/R/F1: overlapping spans of the same label count (see the module doc)."""
    per: dict[str, Counter[str]] = {label: Counter() for label in labels}
    for gold_spans, pred_spans in zip(gold, pred, strict=True):
        for span in pred_spans:
            counts = per.setdefault(span[2], Counter())
            counts["n_pred"] += 1
            counts["tp_pred"] += any(_overlaps(span, g) and g[2] == span[2] for g in gold_spans)
        for span in gold_spans:
            counts = per.setdefault(span[2], Counter())
            counts["n_gold"] += 1
            counts["tp_gold"] += any(_overlaps(span, p) and p[2] == span[2] for p in pred_spans)
    keys = ("tp_pred", "n_pred", "tp_gold", "n_gold")
    per_label = {
        label: {**{k: c[k] for k in keys}, **prf(*(c[k] for k in keys))} for label, c in per.items()
    }
    total = {k: sum(c[k] for c in per.values()) for k in keys}
    return {"micro": {**total, **prf(*(total[k] for k in keys))}, "per_label": per_label}


def confusion_table(
    gold: Sequence[Sequence[CharSpan]], pred: Sequence[Sequence[CharSpan]]
) -> dict[str, dict[str, int]]:
    """{gold label: {predicted label | MISSED: n}, SPURIOUS: {predicted label: n}} (module doc)."""
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for gold_spans, pred_spans in zip(gold, pred, strict=True):
        for g in gold_spans:
            best, best_overlap = None, 0
            for p in pred_spans:
                overlap = min(g[1], p[1]) - max(g[0], p[0])
                if overlap > best_overlap:
                    best, best_overlap = p, overlap
            table[g[2]][best[2] if best else MISSED] += 1
        for p in pred_spans:
            if not any(_overlaps(p, g) for g in gold_spans):
                table[SPURIOUS][p[2]] += 1
    return {row: dict(sorted(cells.items())) for row, cells in sorted(table.items())}


def spacy_scores(gold_docs: Sequence[Doc], pred_docs: Sequence[Doc]) -> dict[str, Any]:
    """spaCy's own `Scorer.score_spans(..., "ents")` on (predicted, gold) pairs."""
    from spacy.scorer import Scorer
    from spacy.training import Example as SpacyExample

    examples = [SpacyExample(p, g) for p, g in zip(pred_docs, gold_docs, strict=True)]
    return Scorer.score_spans(examples, "ents")


def iob_tags(doc: Doc, spans: Sequence[CharSpan]) -> list[str]:
    """IOB2 tags of `doc` for token-aligned, non-overlapping character spans."""
    from spacy.training import biluo_to_iob, offsets_to_biluo_tags

    tags = biluo_to_iob(offsets_to_biluo_tags(doc, list(spans)))
    # "-" (a span not on token boundaries) cannot occur after `snap_to_doc`; never pass it on.
    return ["O" if tag == "-" else tag for tag in tags]


def span_scores(
    gold_tags: Sequence[Sequence[str]],
    pred_tags: Sequence[Sequence[str]],
    labels: Sequence[str],
) -> dict[str, Any]:
    """Strict entity-level scores with seqeval (IOB2, mode="strict"): micro and per label.

    P/R/F come from seqeval; TP/FP/FN count seqeval's own strict entities (`seqeval.scheme.
    Entities`), so P = TP / (TP + FP) holds.
    """
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2, Entities

    y_true = [list(t) for t in gold_tags]
    y_pred = [list(t) for t in pred_tags]
    true = Entities(y_true, IOB2, suffix=False).entities
    pred = Entities(y_pred, IOB2, suffix=False).entities
    true_set = {e.to_tuple() for sent in true for e in sent}
    pred_set = {e.to_tuple() for sent in pred for e in sent}

    def counts(label: str | None) -> dict[str, int]:
        t = {e for e in true_set if label is None or e[1] == label}
        p = {e for e in pred_set if label is None or e[1] == label}
        return {"tp": len(t & p), "fp": len(p - t), "fn": len(t - p)}

    out: dict[str, Any] = {"micro": counts(None), "per_label": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
        if true_set or pred_set:
            out["micro"].update(
                precision=float(precision_score(y_true, y_pred, **kwargs)),
                recall=float(recall_score(y_true, y_pred, **kwargs)),
                f1=float(f1_score(y_true, y_pred, **kwargs)),
            )
            report = classification_report(y_true, y_pred, output_dict=True, **kwargs)
        else:
            out["micro"].update(precision=0.0, recall=0.0, f1=0.0)
            report = {}
    for label in labels:
        entry = counts(label)
        if label in report:
            entry.update(
                precision=float(report[label]["precision"]),
                recall=float(report[label]["recall"]),
                f1=float(report[label]["f1-score"]),
            )
        else:  # neither gold nor predicted entities of this label (or only predicted ones)
            tp, fp, fn = entry["tp"], entry["fp"], entry["fn"]
            entry.update(prf(tp, tp + fp, tp, tp + fn))
        out["per_label"][label] = entry
    out["n_gold_spans"] = len(true_set)
    out["n_pred_spans"] = len(pred_set)
    return out
