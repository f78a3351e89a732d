"""Gold examples as spaCy Docs and files: spans snapped to tokens (counted), DocBins, JSONL, and
spaCy's corpus reader `medllm.Corpus.v1` for `spacy train`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spacy.util import registry

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc
    from spacy.training import Example as SpacyExample

from spacy_medllm.core.examples import (
    Example,
    Span3,
    resolve_overlaps,
)
from spacy_medllm.corpora.registry import corpus_info, corpus_stats, load_corpus

logger = logging.getLogger("spacy_medllm")


@dataclass
class AlignmentCounts:
    """What snapping character spans to a tokenizer's tokens did."""

    n_spans: int = 0
    n_snapped: int = 0  # boundaries moved outwards to token edges (alignment_mode="expand")
    n_unaligned: int = 0  # no token inside the span (e.g. whitespace only): dropped
    n_overlaps_removed: int = 0  # overlapping another span after snapping: the shorter dropped

    def add(self, other: AlignmentCounts) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def align_spans(
    doc: Doc, spans: Iterable[Span3], counts: AlignmentCounts | None = None
) -> list[Span3]:
    """Character spans snapped to `doc`'s tokens (alignment_mode="expand"), overlaps resolved."""
    counts = counts if counts is not None else AlignmentCounts()
    snapped: list[Span3] = []
    for start, end, label in spans:
        counts.n_spans += 1
        span = doc.char_span(start, end, label=label, alignment_mode="expand")
        if span is None or len(span) == 0:
            counts.n_unaligned += 1
            continue
        if (span.start_char, span.end_char) != (start, end):
            counts.n_snapped += 1
        snapped.append((span.start_char, span.end_char, label))
    snapped = list(dict.fromkeys(snapped))
    kept = resolve_overlaps(snapped)
    counts.n_overlaps_removed += len(snapped) - len(kept)
    return kept


def gold_doc(
    make_doc: Callable[[str], Doc], example: Example, counts: AlignmentCounts | None = None
) -> Doc:
    """A Doc of the example's text (tokenized by `make_doc`, e.g. `nlp.make_doc`) with its spans
    as `doc.ents` (snapped with `align_spans`); the example's id goes to `doc.user_data["id"]`."""
    doc = make_doc(example["text"])
    spans = align_spans(doc, example["spans"], counts)
    doc.ents = [doc.char_span(s, e, label=label) for s, e, label in spans]
    doc.user_data["id"] = example.get("id", "")
    return doc


@registry.readers("medllm.Corpus.v1")
def create_corpus_reader(
    name: str,
    split: str,
    path: str | None = None,
    labels: list[str] | None = None,
    limit: int = 0,
) -> Callable[[Language], Iterator[SpacyExample]]:
    """A spaCy corpus reader over `load_corpus(name, split, path)`: for `spacy train` configs.

    Each spaCy Example has `nlp.make_doc(text)` as predicted doc and the gold spans (snapped to
    those tokens, alignment_mode="expand") as the reference's `doc.ents`.
    """
    from spacy.training import Example as SpacyExample

    def read(nlp: Language) -> Iterator[SpacyExample]:
        examples = load_corpus(name, split, path, labels=labels, limit=limit or None)
        counts = AlignmentCounts()
        for example in examples:
            reference = gold_doc(nlp.make_doc, example, counts)
            yield SpacyExample(nlp.make_doc(example["text"]), reference)
        if counts.n_unaligned or counts.n_overlaps_removed:
            logger.warning("medllm.Corpus.v1 %s:%s: %s", name, split, counts.to_dict())

    return read


def write_jsonl(examples: Iterable[Example], path: str | Path) -> Path:
    """One `{"id", "text", "entities": [{"start", "end", "label", "text"}]}` line per example
    (readable by `training_data.read_jsonl`); "answer_entities" added when the example has them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf8") as file_:
        for example in examples:
            record: dict[str, Any] = {
                "id": example.get("id", ""),
                "text": example["text"],
                "entities": [
                    {"start": s, "end": e, "label": label, "text": example["text"][s:e]}
                    for s, e, label in example["spans"]
                ],
            }
            if example.get("answer_entities") is not None:
                record["answer_entities"] = [list(a) for a in example["answer_entities"]]
            file_.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def write_docbin(
    examples: Iterable[Example], path: str | Path, make_doc: Callable[[str], Doc]
) -> AlignmentCounts:
    """A `.spacy` DocBin of `gold_doc`s (user data kept: the example ids); returns the counts."""
    from spacy.tokens import DocBin

    counts = AlignmentCounts()
    doc_bin = DocBin(store_user_data=True)
    for example in examples:
        doc_bin.add(gold_doc(make_doc, example, counts))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc_bin.to_disk(path)
    return counts


def convert_corpus(
    name: str,
    output: str | Path,
    path: str | Path | None = None,
    *,
    labels: Sequence[str] | None = None,
    lang: str | None = None,
) -> dict[str, Any]:
    """Write `{split}.spacy`, `{split}.jsonl` for every split and `stats.json` to `output`.

    The DocBins are tokenized by `spacy.blank(lang)` (default: the corpus's language); stats.json
    is `corpus_stats` plus, per split, what snapping to those tokens did.
    """
    import spacy

    info = corpus_info(name)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    nlp = spacy.blank(lang or info.lang)
    stats = corpus_stats(name, path, labels=labels)
    for split in info.splits:
        examples = load_corpus(name, split, path, labels=labels)
        write_jsonl(examples, output / f"{split}.jsonl")
        counts = write_docbin(examples, output / f"{split}.spacy", nlp.make_doc)
        stats["splits"][split]["alignment"] = {"tokenizer": f"spacy.blank({nlp.lang!r})"}
        stats["splits"][split]["alignment"].update(counts.to_dict())
    (output / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False), "utf8")
    return stats
