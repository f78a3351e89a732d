"""The seed project's set-based metric for the adverse-event e-mails, reimplemented to the letter.

Their scripts/evaluate.py: per record, json.loads the gold and the predicted answer, flatten each to
a SET of strings ({drug_name} plus every adverse event), and sum TP = |gold & pred|,
FP = |pred - gold|, FN = |gold - pred| over the records (exact, case-sensitive). An answer that
does not parse counts as an empty prediction. The case-insensitive variant lower-cases both sides.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class SetScores:
    tp: int
    fp: int
    fn: int
    n_records: int
    n_unparseable: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(precision=self.precision, recall=self.recall, f1=self.f1)
        return data


def seed_answer_strings(answer: Any) -> set[str] | None:
    """The set of strings of a seed-format answer (a JSON string or an already parsed dict).

    Returns None when the answer is not a readable seed answer.
    """
    if isinstance(answer, str):
        try:
            answer = json.loads(answer)
        except (json.JSONDecodeError, ValueError):
            return None
    if not isinstance(answer, dict):
        return None
    strings: set[str] = set()
    drug = answer.get("drug_name")
    if isinstance(drug, str):
        strings.add(drug)
    events = answer.get("adverse_events", [])
    if isinstance(events, str):
        events = [events]
    if isinstance(events, list):
        strings.update(e for e in events if isinstance(e, str))
    return strings


def set_scores(
    gold: Sequence[Iterable[str]],
    predicted: Sequence[Iterable[str] | None],
    *,
    case_sensitive: bool = True,
) -> SetScores:
    """Micro-averaged set P/R over records; None in `predicted` is an unparseable answer."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold records but {len(predicted)} predictions")
    tp = fp = fn = unparseable = 0
    for gold_strings, pred_strings in zip(gold, predicted, strict=True):
        if pred_strings is None:
            unparseable += 1
            pred_strings = ()
        norm = (lambda s: s) if case_sensitive else str.lower
        g = {norm(s) for s in gold_strings}
        p = {norm(s) for s in pred_strings}
        tp += len(g & p)
        fp += len(p - g)
        fn += len(g - p)
    return SetScores(tp, fp, fn, len(gold), unparseable)


def score_prediction_file(
    records: list[dict[str, str]], *, case_sensitive: bool = True
) -> SetScores:
    """Score a seed prediction file: records with "output" (gold) and "prediction" JSON strings."""
    gold = [seed_answer_strings(r["output"]) or set() for r in records]
    predicted = [seed_answer_strings(r["prediction"]) for r in records]
    return set_scores(gold, predicted, case_sensitive=case_sensitive)
