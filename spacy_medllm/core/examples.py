"""Gold examples for fine-tuning, and the prompt/completion token records built from them.

A gold example is a plain dict:

    {"id": str, "text": str,
     "spans": [(start, end, label), ...],           # character offsets, end exclusive
     "answer_entities": [(text, label), ...] | None}

`answer_entities` is what the model must answer, in order. When it is None the answer is made from
the spans (`PromptBuilder.answer_for_spans`). The seed e-mails need it: their gold strings are not
always in the text (the seed's gold paraphrases about 15% of them, and a model trained on the seed
must learn that style), so the answer cannot be derived from spans alone.

Readers: `read_jsonl` (`{"text", "entities"|"spans": [{"start", "end", "label"}]}` per line),
`read_docbin` (a `.spacy` file's `doc.ents`), `read_seed_json` (the seed's
`[{"input", "output": "{"drug_name": ..., "adverse_events": [...]}"}]`), and `read_examples`,
which picks one by the file's suffix.

The `Example` type is shared by fine-tuning and evaluation. Only the standard library and spaCy
are imported here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

from spacy_medllm.core.alignment import find_entities
from spacy_medllm.core.prompts import PromptBuilder
from spacy_medllm.core.records import ParsedEntity

logger = logging.getLogger("spacy_medllm")


Span3 = tuple[int, int, str]

Example = dict[str, Any]

PathLike = Union[str, Path]  # noqa: UP007 (a runtime alias)

SEED_DRUG_LABEL = "DRUG"

SEED_EVENT_LABEL = "ADVERSE_EVENT"


def make_example(
    text: str,
    spans: Iterable[Sequence[Any]] = (),
    answer_entities: Iterable[Sequence[str]] | None = None,
    id: str | None = None,
) -> Example:
    """A checked gold example: spans inside the text, non-empty, with string labels."""
    if not isinstance(text, str):
        raise TypeError(f"An example's text must be a string, got {type(text).__name__}")
    checked: list[Span3] = []
    for span in spans:
        start, end, label = int(span[0]), int(span[1]), span[2]
        if not (0 <= start < end <= len(text)):
            raise ValueError(
                f"Example {id!r}: span ({start}, {end}, {label!r}) is outside the text "
                f"(length {len(text)}) or empty"
            )
        if not isinstance(label, str) or not label:
            raise ValueError(f"Example {id!r}: span ({start}, {end}) has no label")
        checked.append((start, end, label))
    checked.sort(key=lambda s: (s[0], -s[1], s[2]))
    answer = None
    if answer_entities is not None:
        answer = [(str(entity[0]), str(entity[1])) for entity in answer_entities]
    return {
        "id": str(id) if id is not None else "",
        "text": text,
        "spans": checked,
        "answer_entities": answer,
    }


def example_labels(examples: Iterable[Example]) -> list[str]:
    """The labels used by the examples (spans and answers), in order of first appearance."""
    seen: dict[str, None] = {}
    for example in examples:
        for _, _, label in example["spans"]:
            seen.setdefault(label, None)
        for _, label in example.get("answer_entities") or ():
            seen.setdefault(label, None)
    return list(seen)


def filter_labels(examples: Iterable[Example], labels: Iterable[str]) -> tuple[list[Example], int]:
    """Examples with only the spans and answer entities whose label is in `labels`; also returns
    how many spans and answer entities were removed."""
    keep = set(labels)
    out: list[Example] = []
    removed = 0
    for example in examples:
        spans = [s for s in example["spans"] if s[2] in keep]
        removed += len(example["spans"]) - len(spans)
        answer = example.get("answer_entities")
        if answer is not None:
            kept_answer = [a for a in answer if a[1] in keep]
            removed += len(answer) - len(kept_answer)
            answer = kept_answer
        out.append({**example, "spans": spans, "answer_entities": answer})
    return out, removed


def deduplicate(examples: Iterable[Example]) -> list[Example]:
    """The examples with identical texts removed, keeping the first of each."""
    seen: set[str] = set()
    out: list[Example] = []
    for example in examples:
        if example["text"] in seen:
            continue
        seen.add(example["text"])
        out.append(example)
    return out


def shared_inputs(first: Iterable[Example], second: Iterable[Example]) -> list[str]:
    """Texts that occur in both sets (a train/test leak), in the order of `second`, each once."""
    texts = {example["text"] for example in first}
    shared: dict[str, None] = {}
    for example in second:
        if example["text"] in texts:
            shared.setdefault(example["text"], None)
    return list(shared)


def remove_shared(examples: Iterable[Example], other: Iterable[Example]) -> list[Example]:
    """`examples` without the texts that also occur in `other` (drop test leaks from training)."""
    texts = {example["text"] for example in other}
    return [example for example in examples if example["text"] not in texts]


def split_example(example: Example, ranges: Sequence[tuple[int, int]]) -> list[Example]:
    """The example cut into the pieces `text[start:end]` of `ranges`, spans shifted to them.

    `ranges` are sorted, non-overlapping character ranges (as `chunking.plan_chunks` returns);
    neighbouring ranges that a gold span crosses are joined first, so no span is ever cut or
    lost. Piece ids are `<id>#<n>`. A span outside every range is an error (the ranges of
    `plan_chunks` cover every non-space character, so that means the ranges are wrong). An example
    whose answer is given as strings (`answer_entities`, the seed's paraphrasing gold) cannot be
    cut, because its answer strings are not tied to offsets: more than one range is an error.
    """
    if not ranges:
        raise ValueError(f"Example {example.get('id')!r}: no ranges to cut it into")
    joined: list[list[int]] = []
    for start, end in sorted(ranges):
        # a span that reaches past the previous piece's end and starts before this one
        if joined and any(s < start and e > joined[-1][1] for s, e, _ in example["spans"]):
            joined[-1][1] = end
        else:
            joined.append([start, end])
    if len(joined) > 1 and example.get("answer_entities") is not None:
        raise ValueError(
            f"Example {example.get('id')!r} has its answer as strings (answer_entities), which "
            "cannot be cut into pieces; train it whole (no max_chunk_tokens)"
        )
    pieces: list[Example] = []
    placed = 0
    for n, (start, end) in enumerate(joined):
        spans = [
            (s - start, e - start, label)
            for s, e, label in example["spans"]
            if start <= s and e <= end
        ]
        placed += len(spans)
        piece = make_example(
            example["text"][start:end],
            spans,
            example.get("answer_entities"),
            id=f"{example.get('id', '')}#{n}" if len(joined) > 1 else example.get("id"),
        )
        pieces.append(piece)
    if placed != len(example["spans"]):
        raise ValueError(
            f"Example {example.get('id')!r}: {len(example['spans']) - placed} span(s) fall outside "
            "the ranges it was cut into"
        )
    return pieces


def read_jsonl(path: PathLike) -> list[Example]:
    """Read `{"text", "entities"|"spans": [{"start", "end", "label"[, "text"]}][, "id"]}` lines.

    An entity's optional "text" must equal text[start:end]. Blank lines are skipped.
    """
    path = Path(path)
    examples: list[Example] = []
    with path.open(encoding="utf8") as file_:
        for line_no, line in enumerate(file_, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err})") from None
            if not isinstance(data, dict) or not isinstance(data.get("text"), str):
                raise ValueError(f"{where}: each line needs a 'text' string")
            entities = data.get("entities", data.get("spans", []))
            spans = []
            for entity in entities:
                try:
                    start, end, label = int(entity["start"]), int(entity["end"]), entity["label"]
                except (KeyError, TypeError, ValueError):
                    raise ValueError(
                        f"{where}: each entity needs 'start', 'end' and 'label', got {entity!r}"
                    ) from None
                if "text" in entity and data["text"][start:end] != entity["text"]:
                    raise ValueError(
                        f"{where}: entity text {entity['text']!r} does not match the text at "
                        f"[{start}:{end}] ({data['text'][start:end]!r})"
                    )
                spans.append((start, end, label))
            example_id = data.get("id", f"{path.stem}:{line_no}")
            try:
                examples.append(make_example(data["text"], spans, id=example_id))
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
    return examples


def read_docbin(path: PathLike) -> list[Example]:
    """Read the texts and `doc.ents` of a spaCy DocBin (.spacy) file."""
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    path = Path(path)
    doc_bin = DocBin().from_disk(path)
    return [
        make_example(
            doc.text,
            [(ent.start_char, ent.end_char, ent.label_) for ent in doc.ents],
            id=f"{path.stem}:{i}",
        )
        for i, doc in enumerate(doc_bin.get_docs(Vocab()))
    ]


@dataclass
class SeedRecovery:
    """How the seed's gold strings were found in their e-mails."""

    n_records: int = 0
    n_strings: int = 0
    exact: int = 0  # found as written
    case_insensitive: int = 0  # found only ignoring case
    unrecovered: int = 0  # not in the text (paraphrased): in the answer, but no span

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def seed_answer_order(
    text: str, gold: Sequence[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[Span3], list[str]]:
    """Order the gold strings of one seed record and recover their spans.

    Returns (answer entities, spans, match step per gold string: "exact", "case_insensitive" or
    "" when not found). Strings found in the text are ordered by their first occurrence (exact
    case first, then ignoring case; a standalone word before an occurrence inside a longer word,
    as inference's alignment does). A string that is not in the text keeps its place in the gold
    order: it follows the gold string listed before it (the drug comes first in the gold), so a
    paraphrased event stays next to the events the gold lists around it.
    """
    entities = [ParsedEntity(t, label) for t, label in gold]
    aligned, _ = find_entities(text, entities, case_sensitive=False, fuzzy=False, repeated="all")
    first: dict[tuple[str, str], tuple[int, str]] = {}
    for entity in aligned:  # sorted by position
        first.setdefault((entity.text, entity.label), (entity.start, entity.match))
    keys: list[tuple[float, int]] = []
    steps: list[str] = []
    previous = -1.0
    for index, item in enumerate(gold):
        if item in first:
            position, step = first[item]
            previous = float(position)
        else:
            position, step = previous, ""
        keys.append((float(position), index))
        steps.append(step)
    order = sorted(range(len(gold)), key=lambda i: keys[i])
    answer = [gold[i] for i in order]
    # Spans: every occurrence found; where spans overlap, the longer one wins.
    spans: list[Span3] = []
    for entity in sorted(aligned, key=lambda a: (-(a.end - a.start), a.start)):
        if all(entity.end <= s or entity.start >= e for s, e, _ in spans):
            spans.append((entity.start, entity.end, entity.label))
    return answer, sorted(spans), steps


def read_seed_json(
    path: PathLike,
    drug_label: str = SEED_DRUG_LABEL,
    event_label: str = SEED_EVENT_LABEL,
    recovery: SeedRecovery | None = None,
) -> list[Example]:
    """Read the seed's `[{"input", "output"}]` JSON: labels `drug_label` and `event_label`.

    The answer entities are the gold strings, also those not in the input (see
    `seed_answer_order` for their order); spans are recovered where a string occurs. Pass a
    `SeedRecovery` to receive the counts of found and unrecoverable strings.
    """
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{'input', 'output'}} records")
    stats = recovery if recovery is not None else SeedRecovery()
    examples: list[Example] = []
    for index, record in enumerate(data):
        where = f"{path} record {index}"
        if not isinstance(record, Mapping) or not isinstance(record.get("input"), str):
            raise ValueError(f"{where}: needs an 'input' string")
        output = record.get("output")
        try:
            answer = json.loads(output) if isinstance(output, str) else output
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: 'output' is not valid JSON ({err})") from None
        if not isinstance(answer, Mapping):
            raise ValueError(f"{where}: 'output' must be a JSON object, got {output!r}")
        gold: list[tuple[str, str]] = []
        drug = answer.get("drug_name")
        if isinstance(drug, str) and drug.strip():
            gold.append((drug, drug_label))
        events = answer.get("adverse_events") or []
        if isinstance(events, str):
            events = [events]
        gold.extend((e, event_label) for e in events if isinstance(e, str) and e.strip())
        gold = list(dict.fromkeys(gold))  # the answer lists each (text, label) once
        text = record["input"]
        ordered, spans, steps = seed_answer_order(text, gold)
        stats.n_records += 1
        stats.n_strings += len(steps)
        stats.exact += steps.count("exact")
        stats.case_insensitive += steps.count("case_insensitive")
        stats.unrecovered += steps.count("")
        examples.append(make_example(text, spans, ordered, id=f"{path.stem}:{index}"))
    logger.info(
        "%s: %d records, %d gold strings: %d exact, %d ignoring case, %d not in the text",
        path,
        stats.n_records,
        stats.n_strings,
        stats.exact,
        stats.case_insensitive,
        stats.unrecovered,
    )
    return examples


def read_examples(path: PathLike) -> list[Example]:
    """Read gold examples, choosing the reader by suffix: .jsonl, .spacy, or .json (the seed's)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".spacy":
        return read_docbin(path)
    if suffix == ".json":
        return read_seed_json(path)
    raise ValueError(
        f"Cannot tell the format of {str(path)!r}: use .jsonl (text + entities), .spacy (DocBin) "
        "or .json (the seed's input/output records)"
    )


def answer_text(builder: PromptBuilder, example: Example) -> str:
    """The canonical JSON answer for an example."""
    if example.get("answer_entities") is not None:
        return builder.answer(example["answer_entities"])
    return builder.answer_for_spans(example["text"], example["spans"])


def resolve_overlaps(spans: Sequence[Span3]) -> list[Span3]:
    """Non-overlapping spans: the longest first, then the leftmost, then the earlier in `spans`."""
    ranked = sorted(range(len(spans)), key=lambda i: (-(spans[i][1] - spans[i][0]), spans[i][0], i))
    kept: list[Span3] = []
    for i in ranked:
        start, end, label = spans[i]
        if all(end <= s or start >= e for s, e, _ in kept):
            kept.append((start, end, label))
    return sorted(set(kept))
