"""The scorer of `medllm_ner` (`medllm.ner_scorer.v1`): spaCy's entity scores on `doc.ents` or on
the component's `doc.spans[key]`, per label and label-blind."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from spacy.scorer import Scorer
from spacy.tokens import Doc, Span
from spacy.training import Example
from spacy.util import registry


@registry.scorers("medllm.ner_scorer.v1")
def make_ner_scorer() -> Callable[..., dict[str, Any]]:
    return score_entities


def score_entities(
    examples: Iterable[Example], *, output: str = "ents", spans_key: str = "medllm", **kwargs
) -> dict[str, Any]:
    """Per-label and label-blind precision, recall and F on doc.ents or doc.spans[spans_key].

    Keys follow spaCy: ents_p/r/f and ents_per_type (or spans_<key>_...), plus
    <prefix>_unlabeled_p/r/f where a span counts if its boundaries are right, whatever its label.
    """
    examples = list(examples)
    if output == "spans":
        prefix = f"spans_{spans_key}"

        def getter(doc: Doc, attr: str) -> Iterable[Span]:
            return doc.spans.get(spans_key, [])

        allow_overlap = True
    else:
        prefix = "ents"
        getter = getattr  # type: ignore[assignment]
        allow_overlap = False
    attr = prefix if output == "spans" else "ents"
    scores = Scorer.score_spans(
        examples, attr, getter=getter, allow_overlap=allow_overlap, **kwargs
    )
    blind = Scorer.score_spans(
        examples, attr, getter=getter, allow_overlap=allow_overlap, labeled=False, **kwargs
    )
    for metric in ("p", "r", "f"):
        scores[f"{prefix}_unlabeled_{metric}"] = blind[f"{attr}_{metric}"]
    return scores
