"""Readers of the public medical corpora, each into a `RawCorpus` of texts with character spans.

ADE-Corpus-V2, BC5CDR and NCBI-disease (PubTator), PHEE, the seed adverse-event e-mails and the
Estonian et-dev set. Mentions are checked against their text; traps of each corpus (offsets that
do not match, duplicated sentences) are counted, not hidden.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spacy_medllm.core.examples import (
    Example,
    SeedRecovery,
    Span3,
    deduplicate,
    make_example,
    read_jsonl,
    read_seed_json,
    remove_shared,
    shared_inputs,
)
from spacy_medllm.corpora.paths import CorpusNotFoundError, need_path
from spacy_medllm.corpora.splits import SPLIT_ORDER, dedupe_texts_across_splits, hash_split

logger = logging.getLogger("spacy_medllm")


def _check_mention(
    text: str, start: int, end: int, mention: str, counts: Counter[str], where: str
) -> bool:
    """Whether text[start:end] is the annotated mention (whitespace around it aside)."""
    if not (0 <= start < end <= len(text)):
        counts["mention_out_of_range"] += 1
        logger.warning("%s: span (%d, %d) outside the text; dropped", where, start, end)
        return False
    found = text[start:end]
    if found == mention:
        return True
    counts["mention_mismatches"] += 1
    if found == mention.strip():
        counts["mention_mismatches_whitespace_only"] += 1
        return True
    counts["mention_mismatches_dropped"] += 1
    logger.warning("%s: %r at (%d, %d) is not %r; dropped", where, found, start, end, mention)
    return False


def _dedupe_spans(spans: Sequence[Span3], counts: Counter[str]) -> list[Span3]:
    """Spans with the same (start, end, label) kept once, in order; counts the repeats."""
    unique = list(dict.fromkeys(spans))
    counts["duplicate_spans"] += len(spans) - len(unique)
    return unique


@dataclass
class RawCorpus:
    """All splits of a corpus as read (spans deduplicated, overlaps not yet resolved)."""

    splits: dict[str, list[Example]]
    stats: dict[str, Any] = field(default_factory=dict)


ADE_LABELS = {"effect": "ADVERSE_EVENT", "dose": "DOSAGE", "drug": "DRUG"}


def _ade_rows(path: Path, kind: str, counts: Counter[str]) -> Iterator[tuple[str, str, list]]:
    """(pmid, sentence, [(mention, doc_start, doc_end, label), (drug, ...)]) per relation line."""
    for n, line in enumerate(path.read_text("utf8").splitlines(), start=1):
        if not line.strip():
            continue
        pmid, _, rest = line.partition("|")
        parts = rest.rsplit("|", 6)  # the sentence is the only free-text field
        if len(parts) != 7 or not all(parts[i].isdigit() for i in (2, 3, 5, 6)):
            counts["malformed_lines"] += 1
            logger.warning("%s:%d: not PMID|sentence|effect|begin|end|drug|begin|end", path, n)
            continue
        sentence, entity, e_start, e_end, drug, d_start, d_end = parts
        counts[f"relations_{kind}"] += 1
        yield (
            pmid,
            sentence,
            [
                (entity, int(e_start), int(e_end), ADE_LABELS[kind]),
                (drug, int(d_start), int(d_end), ADE_LABELS["drug"]),
            ],
        )


def _occurrences(text: str, needle: str) -> list[int]:
    return [m.start() for m in re.finditer(f"(?={re.escape(needle)})", text)] if needle else []


def read_ade(folder: Path, negatives: bool = False) -> RawCorpus:
    """ADE-Corpus-V2 sentences with DRUG, ADVERSE_EVENT and DOSAGE spans, split by PMID hash.

    `negatives`: also the sentences of ADE-NEG.txt (no drug-AE relation), as texts without
    entities, split by the same PMID hash; only ADVERSE_EVENT is complete on them (drugs in
    ADE-NEG sentences are not annotated), so use them for ADVERSE_EVENT alone. A sentence that is
    also a positive one is kept once, with its spans.
    """
    folder = need_path(folder, "ade-corpus-v2")
    if (folder / "ADE-Corpus-V2").is_dir():
        folder = folder / "ADE-Corpus-V2"
    counts: Counter[str] = Counter()
    groups: dict[tuple[str, str], list[tuple[str, int, int, str]]] = defaultdict(list)
    for file_name, kind in (("DRUG-AE.rel", "effect"), ("DRUG-DOSE.rel", "dose")):
        for pmid, sentence, mentions in _ade_rows(
            need_path(folder / file_name, "ade"), kind, counts
        ):
            groups[(pmid, sentence)].extend(mentions)
    negative_file = folder / "ADE-NEG.txt"
    negative_rows = []
    if negative_file.exists():
        for line in negative_file.read_text("utf8").splitlines():
            pmid, _, sentence = line.strip().partition(" NEG ")
            if line.strip() and pmid.isdigit() and sentence.strip():
                negative_rows.append((pmid, sentence.strip()))
            elif line.strip():
                counts["negative_lines_malformed"] += 1
    if not negatives:
        counts["negative_sentences_skipped"] = len(negative_rows)
    splits: dict[str, list[tuple[int, int, Example]]] = {s: [] for s in SPLIT_ORDER}
    for (pmid, sentence), mentions in groups.items():
        counts["mentions"] += len(mentions)
        unique = list(dict.fromkeys(mentions))
        counts["duplicate_mentions"] += len(mentions) - len(unique)
        # The sentence's document offset: the one that puts the most mentions on their strings.
        votes: Counter[int] = Counter()
        for mention, doc_start, _, _ in unique:
            votes.update({doc_start - pos for pos in _occurrences(sentence, mention)})
        offset = votes.most_common(1)[0][0] if votes else 0
        spans: list[Span3] = []
        for mention, doc_start, doc_end, label in unique:
            start, end = doc_start - offset, doc_end - offset
            if start < 0 or sentence[start:end] != mention:
                counts["mentions_unplaced"] += 1
                logger.warning("ade %s: %r not at a consistent offset; dropped", pmid, mention)
                continue
            spans.append((start, end, label))
        example = make_example(sentence, _dedupe_spans(spans, counts), id=f"{pmid}:{offset}")
        splits[hash_split(pmid)].append((int(pmid), offset, example))
    counts["sentences"] = len(groups)
    if negatives:
        positive = {sentence for _, sentence in groups}
        seen: set[tuple[str, str]] = set()
        for n, (pmid, sentence) in enumerate(negative_rows):
            if sentence in positive or (pmid, sentence) in seen:
                counts["negative_sentences_duplicate"] += 1
                continue
            seen.add((pmid, sentence))
            example = make_example(sentence, (), id=f"{pmid}:neg{n}")
            # after the positive sentences of the same PMID (offsets are >= 0, -1 sorts first)
            splits[hash_split(pmid)].append((int(pmid), 10**9 + n, example))
        counts["negative_sentences"] = len(seen)
    ordered = {
        s: [e for _, _, e in sorted(rows, key=lambda r: r[:2])] for s, rows in splits.items()
    }
    ordered = dedupe_texts_across_splits(ordered, counts)
    pmids = {s: len({e["id"].split(":")[0] for e in exs}) for s, exs in ordered.items()}
    return RawCorpus(ordered, {"reader": dict(counts), "pmids_per_split": pmids})


def read_pubtator(
    path: Path,
    corpus: str,
    counts: Counter[str],
    label_map: Mapping[str, str] | None = None,
) -> list[Example]:
    """Documents of a PubTator file: text = title + " " + abstract (what the offsets count), spans
    from the `PMID<TAB>start<TAB>end<TAB>mention<TAB>type[<TAB>id...]` lines; relation lines
    (`PMID<TAB>CID<TAB>...`) are skipped. A PMID that occurs twice is kept once (the first)."""
    docs: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line_no, line in enumerate(need_path(path, corpus).read_text("utf8").splitlines(), start=1):
        if not line.strip():
            current = None
            continue
        head = line.split("|", 2)
        if len(head) == 3 and head[1] in ("t", "a") and head[0].isdigit():
            if head[1] == "t":
                current = {"pmid": head[0], "title": head[2], "abstract": "", "anns": []}
                docs.append(current)
            elif current is not None and current["pmid"] == head[0]:
                current["abstract"] = head[2]
            continue
        cols = line.split("\t")
        if current is None or cols[0] != current["pmid"]:
            counts["malformed_lines"] += 1
            logger.warning("%s:%d: a line outside a document", path, line_no)
            continue
        if len(cols) >= 5 and cols[1].isdigit() and cols[2].isdigit():
            current["anns"].append((int(cols[1]), int(cols[2]), cols[3], cols[4], line_no))
        else:
            counts["relation_lines"] += 1
    examples: list[Example] = []
    seen: set[str] = set()
    for doc in docs:
        if doc["pmid"] in seen:
            counts["duplicate_documents_removed"] += 1
            continue
        seen.add(doc["pmid"])
        text = f"{doc['title']} {doc['abstract']}"
        spans: list[Span3] = []
        for start, end, mention, kind, line_no in doc["anns"]:
            counts["mentions"] += 1
            if _check_mention(text, start, end, mention, counts, f"{path.name}:{line_no}"):
                label = label_map.get(kind, kind) if label_map else kind
                spans.append((start, end, label))
        examples.append(make_example(text, _dedupe_spans(spans, counts), id=doc["pmid"]))
    counts["documents"] += len(examples)
    return examples


def _first_dir(folder: Path, *subfolders: str) -> Path:
    """The first of `folder`'s subfolders that exists, else `folder` itself (already the data)."""
    return next((folder / s for s in subfolders if (folder / s).is_dir()), folder)


BC5CDR_FILES = {
    "train": "CDR_TrainingSet.PubTator.txt",
    "dev": "CDR_DevelopmentSet.PubTator.txt",
    "test": "CDR_TestSet.PubTator.txt",
}


def read_bc5cdr(folder: Path) -> RawCorpus:
    """BC5CDR abstracts with Chemical and Disease spans, official splits."""
    folder = need_path(folder, "bc5cdr")
    folder = _first_dir(folder, "BC5-CDR/original-data", "original-data")
    counts: Counter[str] = Counter()
    splits = {s: read_pubtator(folder / f, "bc5cdr", counts) for s, f in BC5CDR_FILES.items()}
    return RawCorpus(splits, {"reader": dict(counts)})


NCBI_FILES = {
    "train": "train/NCBItrainset_corpus.txt",
    "dev": "devel/NCBIdevelopset_corpus.txt",
    "test": "test/NCBItestset_corpus.txt",
}

NCBI_FINE_TYPES = ("SpecificDisease", "DiseaseClass", "Modifier", "CompositeMention")


def read_ncbi(folder: Path, fine_types: bool = False) -> RawCorpus:
    """NCBI-disease abstracts, official splits; label Disease (or the four fine types)."""
    folder = need_path(folder, "ncbi-disease")
    if (folder / "original-data").is_dir():
        folder = folder / "original-data"
    label_map = None if fine_types else dict.fromkeys(NCBI_FINE_TYPES, "Disease")
    counts: Counter[str] = Counter()
    splits = {
        s: read_pubtator(folder / f, "ncbi-disease", counts, label_map)
        for s, f in NCBI_FILES.items()
    }
    return RawCorpus(splits, {"reader": dict(counts)})


# (event type or None for any, argument path) -> label
PHEE_ARGUMENTS: tuple[tuple[str | None, tuple[str, ...], str], ...] = (
    (None, ("Treatment", "Drug"), "DRUG"),
    ("Adverse_event", ("Effect",), "ADVERSE_EVENT"),
    (None, ("Treatment", "Dosage"), "DOSAGE"),
    (None, ("Treatment", "Disorder"), "DISEASE"),
    (None, ("Subject", "Disorder"), "DISEASE"),
)


def read_phee(folder: Path) -> RawCorpus:
    """PHEE sentences (official splits) with DRUG, ADVERSE_EVENT, DOSAGE and DISEASE spans."""
    folder = need_path(folder, "phee")
    folder = _first_dir(folder, "data/json", "json")
    counts: Counter[str] = Counter()
    splits: dict[str, list[Example]] = {}
    for split in SPLIT_ORDER:
        path = need_path(folder / f"{split}.json", "phee")
        examples = []
        for line_no, line in enumerate(path.read_text("utf8").splitlines(), start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            text = record["context"]
            spans: list[Span3] = []
            for annotation in record.get("annotations", []):
                for event in annotation.get("events", []):
                    counts[f"events_{event.get('event_type')}"] += 1
                    effect = event.get("Effect")
                    if event.get("event_type") != "Adverse_event" and effect:
                        counts["therapeutic_effects_skipped"] += sum(map(len, effect["text"]))
                    for event_type, arg_path, label in PHEE_ARGUMENTS:
                        if event_type is not None and event.get("event_type") != event_type:
                            continue
                        argument: Any = event
                        for key in arg_path:
                            argument = argument.get(key) if isinstance(argument, dict) else None
                        if not argument:
                            continue
                        for pieces, starts in zip(argument["text"], argument["start"], strict=True):
                            counts["argument_pieces_extra"] += len(pieces) - 1
                            for piece, start in zip(pieces, starts, strict=True):
                                counts["mentions"] += 1
                                where = f"{path.name}:{line_no}"
                                if _check_mention(
                                    text, start, start + len(piece), piece, counts, where
                                ):
                                    spans.append((start, start + len(piece), label))
            examples.append(make_example(text, _dedupe_spans(spans, counts), id=record["id"]))
        splits[split] = examples
    counts["sentences"] = sum(len(v) for v in splits.values())
    splits = dedupe_texts_across_splits(splits, counts)
    return RawCorpus(splits, {"reader": dict(counts)})


SEED_LAYOUTS = (
    ("train.json", "test.json"),
    (
        "data/entity_extraction/entity-extraction-train-data.json",
        "data/entity_extraction/entity-extraction-test-data.json",
    ),
)


def read_seed(folder: Path) -> RawCorpus:
    """The seed e-mails: train (deduplicated, test e-mails removed), test, test_unseen."""
    folder = need_path(folder, "seed-ae-emails")
    for train_name, test_name in SEED_LAYOUTS:
        if (folder / train_name).is_file() and (folder / test_name).is_file():
            break
    else:
        raise CorpusNotFoundError(f"seed-ae-emails: no train.json/test.json in {folder}")
    recovery = {"train": SeedRecovery(), "test": SeedRecovery()}
    raw_train = read_seed_json(folder / train_name, recovery=recovery["train"])
    test = read_seed_json(folder / test_name, recovery=recovery["test"])
    unique_train = deduplicate(raw_train)
    leaked = shared_inputs(unique_train, test)
    train = remove_shared(unique_train, test)
    unseen = remove_shared(test, raw_train)
    leaked_texts = set(leaked)
    stats = {
        "gold_strings": {split: r.to_dict() for split, r in recovery.items()},
        "train_records": len(raw_train),
        "train_duplicates_removed": len(raw_train) - len(unique_train),
        "train_test_leak": {
            "n_texts": len(leaked),
            "test_ids": [e["id"] for e in test if e["text"] in leaked_texts],
            "removed_from_train": len(unique_train) - len(train),
        },
        "test_duplicates": len(test) - len(deduplicate(test)),
    }
    return RawCorpus({"train": train, "test": test, "test_unseen": unseen}, stats)


def read_et_dev(path: Path) -> RawCorpus:
    """The Estonian clinical dev set (JSONL with checked entity texts); split `dev`."""
    path = need_path(path, "et-dev")
    if path.is_dir():
        path = need_path(path / "et-dev.jsonl", "et-dev")
    return RawCorpus({"dev": read_jsonl(path)}, {"reader": {"file": path.name}})


def read_out_of_style(path: Path) -> RawCorpus:
    """The project's hand-written out-of-style adverse-event texts; split `test`. Each example
    also keeps the mentions the guide leaves unannotated: "negated" and "hypothetical" (character
    ranges), so that a report can say which systems label them anyway."""
    return read_hand_written(path, "out-of-style")


def read_et_clinical(path: Path) -> RawCorpus:
    """The project's hand-written Estonian clinical-style sentences (DRUG, ADVERSE_EVENT,
    DISEASE, PROCEDURE); split `test`, with "style", "negated" and "hypothetical" as in
    `read_out_of_style`."""
    return read_hand_written(path, "et-clinical")


def read_hand_written(path: Path, name: str) -> RawCorpus:
    """A test set written for this project: `NAME.jsonl` (or the file itself), split `test`; each
    example keeps its "style" and the unannotated "negated" and "hypothetical" mentions."""
    path = need_path(path, name)
    if path.is_dir():
        path = need_path(path / f"{name}.jsonl", name)
    examples = read_jsonl(path)
    extra = [json.loads(line) for line in path.read_text("utf8").splitlines() if line.strip()]
    for example, data in zip(examples, extra, strict=True):
        example["style"] = data.get("style", "")
        for kind in ("negated", "hypothetical"):
            example[kind] = [(m["start"], m["end"]) for m in data.get(kind, [])]
    return RawCorpus({"test": examples}, {"reader": {"file": path.name}})
