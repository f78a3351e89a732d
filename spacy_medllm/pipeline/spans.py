"""Setting a component's aligned spans on the Doc: `doc.ents` or `doc.spans[key]`, with what was not
set (overlaps, entities already there) recorded, and the tokens the model read marked outside."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from spacy.tokens import Doc, Span
from spacy.util import filter_spans

from spacy_medllm.core import records
from spacy_medllm.core.records import Rejection


def _reject(record: dict[str, Any], rejections: Iterable[Rejection]) -> None:
    record["rejected"].extend(r.to_dict() for r in rejections)


def assign_spans(
    doc: Doc,
    spans: list[Span],
    record: dict[str, Any],
    *,
    output: str = "ents",
    spans_key: str = "medllm",
    overwrite_ents: bool = False,
) -> None:
    """Set a component's aligned spans on `doc` and note in its `record` what was not set.

    `output = "spans"`: added to `doc.spans[spans_key]` (overlaps allowed). `"ents"`: the longest of
    overlapping spans is kept (the others rejected as "overlap"); entities already on the Doc win
    unless `overwrite_ents` (rejected as "existing_entity"); tokens the model read and did not
    mark become "O" (`outside_runs`).
    """
    spans = sorted(set(spans), key=lambda s: (s.start, -s.end, s.label_))
    if output == "spans":
        existing = [] if overwrite_ents else list(doc.spans.get(spans_key, []))
        merged = existing + [s for s in spans if s not in existing]
        doc.spans[spans_key] = merged
        record["n_spans"] = len(spans)
        return
    kept = filter_spans(spans)
    kept_set = set(kept)
    _reject(
        record,
        (
            Rejection(
                s.text, s.label_, records.OVERLAP, f"overlaps a longer span at {s.start_char}"
            )
            for s in spans
            if s not in kept_set
        ),
    )
    if overwrite_ents:
        doc.set_ents(kept, outside=outside_runs(doc, kept, record), default="missing")
    else:
        taken = set()
        for ent in doc.ents:
            taken.update(range(ent.start, ent.end))
        fresh = [s for s in kept if not taken.intersection(range(s.start, s.end))]
        fresh_set = set(fresh)
        _reject(
            record,
            (
                Rejection(s.text, s.label_, records.EXISTING_ENTITY, "kept the Doc's entity")
                for s in kept
                if s not in fresh_set
            ),
        )
        kept = fresh
        outside = outside_runs(doc, kept, record, only_missing=True)
        doc.set_ents(kept, outside=outside, default="unmodified")
    record["n_spans"] = len(kept)


def outside_runs(
    doc: Doc, kept: Sequence[Span], record: dict[str, Any], only_missing: bool = False
) -> list[Span]:
    """Runs of tokens the model read in a chunk it answered and did not mark: they become "O".

    That is the model's decision about them, and what a model trained on these Docs (a
    distilled student) must learn. Tokens of a chunk whose answer could not be parsed, or that
    no chunk covered, stay missing ("" in `ent_iob_`); with `only_missing`, tokens another
    component already decided keep its decision.
    """
    failed = {(e["start"], e["end"]) for e in record["parse_errors"]}
    answered = sorted(
        (c["start"], c["end"]) for c in record["chunks"] if (c["start"], c["end"]) not in failed
    )
    covered = {i for span in kept for i in range(span.start, span.end)}
    runs: list[Span] = []
    run_start = None
    position = 0  # index into the sorted chunks: tokens come in order of their offsets
    for token in doc:
        end = token.idx + len(token)
        while position < len(answered) and answered[position][1] < end:
            position += 1
        decided = position < len(answered) and answered[position][0] <= token.idx
        if only_missing and token.ent_iob != 0:
            decided = False
        if decided and token.i not in covered:
            if run_start is None:
                run_start = token.i
        elif run_start is not None:
            runs.append(doc[run_start : token.i])
            run_start = None
    if run_start is not None:
        runs.append(doc[run_start:])
    return runs
