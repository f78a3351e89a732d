"""Choosing the silver labels a student learns from: problem documents out, teachers' agreement,
expected labels, confidence thresholds; then a train/dev split by a hash of the document id.

A span the filters remove becomes missing tokens (not "O"), so the student does not learn the
teacher's doubts as negatives.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from spacy.tokens import Doc, DocBin

from spacy_medllm.distillation.teacher import (
    PROBLEMS,
    read_docbin,
    record_problems,
    write_atomic,
)

AGREEMENT_MODES = ("doc", "intersection")

INCOMPLETE_MODES = ("missing", "drop")  # select_silver: a doc missing an expected label


def mark_read_tokens_outside(doc: Doc) -> None:
    """Set to "O" the tokens a `medllm_ner` teacher read in an answered chunk and left unmarked.

    `medllm_ner` does this itself (`spacy_medllm.pipeline.spans.outside_runs`); silver written
    before it did has those tokens missing, which spaCy's NER student reads as "unknown", so it
    never learns "O" and marks entities everywhere. Tokens of unanswered chunks stay missing.
    """
    from spacy_medllm.pipeline.component import RECORD_ATTR
    from spacy_medllm.pipeline.spans import outside_runs

    for record in (doc._.get(RECORD_ATTR) or {}).values():
        if isinstance(record, dict) and record.get("chunks"):
            ents = list(doc.ents)
            outside = outside_runs(doc, ents, record, only_missing=True)
            doc.set_ents(ents, outside=outside, default="unmodified")


def doc_id(doc: Doc) -> str:
    """A silver doc's id: `user_data["id"]`, else a hash of its text."""
    import hashlib

    found = doc.user_data.get("id")
    return str(found) if found else "sha1:" + hashlib.sha1(doc.text.encode("utf8")).hexdigest()


def _span_set(doc: Doc) -> set[tuple[int, int, str]]:
    return {(e.start_char, e.end_char, e.label_) for e in doc.ents}


def select_silver(
    docs: Sequence[Doc],
    *,
    drop: Iterable[str] = PROBLEMS,
    other: Sequence[Doc] | None = None,
    agreement: str = "doc",
    expect_labels: Iterable[str] = (),
    incomplete: str = "missing",
    min_confidence: float | None = None,
) -> tuple[list[Doc], dict[str, Any]]:
    """The silver docs a student should learn from, and what was dropped and why.

    `drop`: record problems that exclude a document (see `record_problems`). `other`: a second
    teacher's docs for the same ids; with `agreement="doc"` a document stays only if both teachers
    found the same spans, with "intersection" it stays with the spans both found, and the tokens
    of the spans only one found become missing (unknown to the student), not "O".

    `expect_labels`: labels every text is known to mention (each ADE-Corpus-V2 sentence names a
    drug and an adverse event). A document where the teacher found none of one of them is
    incomplete: its teacher missed something, and training on its "O" tokens would teach the
    student that miss as a fact. `incomplete="missing"` keeps its entities and makes its
    unmarked tokens missing (spaCy's NER learns nothing from those tokens); "drop" drops it.

    `min_confidence`: entities whose teacher confidence (`span._.medllm_confidence`, the mean
    log-probability of their answer tokens; silver labelled with `label_texts(confidence=True)`)
    is below it stop being entities and their tokens become missing; checked before
    `expect_labels`, so a document can become incomplete by it.
    """
    from spacy_medllm.pipeline.component import CONFIDENCE_ATTR

    drop = set(drop)
    expect = set(expect_labels)
    unknown = drop - set(PROBLEMS)
    if unknown:
        raise ValueError(f"unknown problems {sorted(unknown)}; known: {list(PROBLEMS)}")
    if agreement not in AGREEMENT_MODES:
        raise ValueError(f"agreement must be one of {AGREEMENT_MODES}, got {agreement!r}")
    if incomplete not in INCOMPLETE_MODES:
        raise ValueError(f"incomplete must be one of {INCOMPLETE_MODES}, got {incomplete!r}")
    others: dict[str, Doc] = {}
    if other is not None:
        others = {doc_id(d): d for d in other}
    dropped: Counter[str] = Counter()
    n_spans_removed = n_incomplete = n_low_confidence = n_scored = n_ents = 0
    kept: list[Doc] = []
    for doc in docs:
        problems = drop.intersection(record_problems(doc))
        if problems:
            dropped.update(problems)
            continue
        disputed: list[Any] = []
        if other is not None:
            partner = others.get(doc_id(doc))
            if partner is None or partner.text != doc.text:
                dropped["no_second_teacher"] += 1
                continue
            ours, theirs = _span_set(doc), _span_set(partner)
            if agreement == "doc" and ours != theirs:
                dropped["disagreement"] += 1
                continue
            if agreement == "intersection" and ours != theirs:
                common = [e for e in doc.ents if (e.start_char, e.end_char, e.label_) in theirs]
                n_spans_removed += len(doc.ents) - len(common)
                disputed = [
                    doc.char_span(s, e, alignment_mode="expand") for s, e, _ in ours ^ theirs
                ]
                doc.ents = common
        mark_read_tokens_outside(doc)
        if disputed:
            free = [span for span in disputed if span is not None]
            doc.set_ents(
                list(doc.ents), missing=_outside_ents(free, doc.ents), default="unmodified"
            )
        if min_confidence is not None:
            scores = [(ent, ent._.get(CONFIDENCE_ATTR)) for ent in doc.ents]
            n_ents += len(scores)
            n_scored += sum(value is not None for _, value in scores)
            low = [ent for ent, value in scores if value is not None and value < min_confidence]
            if low:
                sure = [ent for ent, value in scores if value is None or value >= min_confidence]
                doc.set_ents(sure, missing=low, default="unmodified")
                n_low_confidence += len(low)
        if expect and not expect <= {e.label_ for e in doc.ents}:
            if incomplete == "drop":
                dropped["incomplete"] += 1
                continue
            doc.set_ents(list(doc.ents), default="missing")
            n_incomplete += 1
        kept.append(doc)
    if min_confidence is not None and n_ents and not n_scored:
        raise ValueError(
            "min_confidence: none of the silver entities has a confidence; label with "
            "--confidence (a medllm_ner teacher whose generator scores tokens)"
        )
    stats = {
        "n_docs_in": len(docs),
        "n_docs_kept": len(kept),
        "dropped": dict(sorted(dropped.items())),
        "n_spans_removed_by_intersection": n_spans_removed,
        "drop": sorted(drop),
        "agreement": agreement if other is not None else None,
        "expect_labels": sorted(expect),
        "incomplete": incomplete if expect else None,
        "n_incomplete_kept_with_missing_tokens": n_incomplete,
        "min_confidence": min_confidence,
        "n_spans_below_min_confidence": n_low_confidence,
    }
    return kept, stats


def _outside_ents(spans: Sequence[Any], ents: Sequence[Any]) -> list[Any]:
    """The spans that overlap none of `ents` (set_ents refuses a token both missing and in an
    entity)."""
    taken = {i for ent in ents for i in range(ent.start, ent.end)}
    return [s for s in spans if not taken.intersection(range(s.start, s.end))]


def split_silver(docs: Sequence[Doc], dev_fraction: float = 0.1) -> tuple[list[Doc], list[Doc]]:
    """(train, dev) by a hash of each doc's id (`corpora.hash_split`): stable across runs."""
    from spacy_medllm.corpora.splits import hash_split

    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must lie in (0, 1), got {dev_fraction}")
    train, dev = [], []
    for doc in docs:
        split = hash_split(doc_id(doc), (1 - dev_fraction, dev_fraction, 0.0))
        (dev if split == "dev" else train).append(doc)
    if not train or not dev:  # too few documents for the fraction: one goes to dev
        train, dev = list(docs[:-1]), list(docs[-1:])
    return train, dev


def write_selection(
    silver: str | Path,
    output: str | Path,
    *,
    drop: Iterable[str] = PROBLEMS,
    agree_with: str | Path | None = None,
    agreement: str = "doc",
    expect_labels: Iterable[str] = (),
    incomplete: str = "missing",
    min_confidence: float | None = None,
    dev_fraction: float = 0.1,
) -> dict[str, Any]:
    """`select_silver` on a silver DocBin, then `train.spacy` and `dev.spacy` (and
    `selection.json`) in `output`; returns the statistics."""
    from spacy.vocab import Vocab

    vocab = Vocab()
    docs = read_docbin(Path(silver), vocab)
    other = read_docbin(Path(agree_with), vocab) if agree_with else None
    kept, stats = select_silver(
        docs,
        drop=drop,
        other=other,
        agreement=agreement,
        expect_labels=expect_labels,
        incomplete=incomplete,
        min_confidence=min_confidence,
    )
    if len(kept) < 2:
        raise ValueError(f"only {len(kept)} silver documents left after selection: {stats}")
    train, dev = split_silver(kept, dev_fraction)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for split, split_docs in (("train", train), ("dev", dev)):
        write_atomic(DocBin(store_user_data=True, docs=split_docs), output / f"{split}.spacy")
    stats.update(
        silver=str(silver),
        agree_with=str(agree_with) if agree_with else None,
        n_train=len(train),
        n_dev=len(dev),
        labels=dict(sorted(Counter(e.label_ for d in kept for e in d.ents).items())),
    )
    (output / "selection.json").write_text(json.dumps(stats, indent=2), "utf8")
    return stats


def silver_examples(path: str | Path) -> list[dict[str, Any]]:
    """The package's example format (`{"id", "text", "spans"}`) of a silver DocBin's entities."""
    from spacy.vocab import Vocab

    return [
        {
            "id": str(doc.user_data.get("id", "")),
            "text": doc.text,
            "spans": [(e.start_char, e.end_char, e.label_) for e in doc.ents],
        }
        for doc in read_docbin(Path(path), Vocab())
    ]
