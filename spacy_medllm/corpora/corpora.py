"""Public medical NER corpora as gold examples: readers, deterministic splits, stats, converters.

`load_corpus(name, split, path=None)` returns gold examples in the package's format
(`spacy_medllm.training.data`: `{"id", "text", "spans": [(start, end, label)], "answer_entities"}`,
character offsets, end exclusive); `corpus_stats(name)` says what was read, dropped and resolved;
`medllm.Corpus.v1` is the same as a spaCy reader (`[corpora.train] @readers = "medllm.Corpus.v1"`),
and `python -m spacy_medllm.corpora.corpora convert NAME --output DIR` writes `{split}.spacy` DocBins,
`{split}.jsonl` and `stats.json`.

Nothing of these corpora is shipped with the package: the readers read the files where they are.
The default folder is `$MEDLLM_CORPORA`, else `../shared/corpora` next to the repository; every
function takes a `path` to override it (the corpus's own folder, or file for `et-dev`).

The corpora (`CORPORA` holds the details):

- `ade-corpus-v2` (Gurulingappa et al. 2012; licence not stated, research use): the sentences of
  DRUG-AE.rel and DRUG-DOSE.rel, one example per sentence, labels DRUG, ADVERSE_EVENT and DOSAGE
  (DOSAGE only when asked for). The offsets in the files are document offsets; a sentence's own
  offset is the one that places the most of its mentions on their strings (every mention agrees in
  the released files; a mention that does not is dropped and counted). ADE-NEG.txt is skipped: its
  drugs are not annotated, so its sentences would teach that drugs are not DRUG. No official split:
  a sentence goes to the split of its PubMed ID by `hash_split` (sha256 of the PMID, 80/10/10), so
  no abstract spans two splits, and the split never depends on a random state. A sentence text
  that occurs under several PMIDs (one title does) is kept once, in the first of train/dev/test.
- `bc5cdr` (BioCreative V CDR; public domain): official train/dev/test abstracts (title + " " +
  abstract, as the PubTator offsets count), labels `Chemical` and `Disease` as in the source.
- `ncbi-disease` (public domain): official train/dev/test abstracts from the original PubTator-style
  files, the four fine types collapsed to `Disease` (`ncbi-disease-fine` keeps SpecificDisease,
  DiseaseClass, Modifier and CompositeMention). PMID 8528200, twice in the train file, is kept once.
- `phee` (Sun et al. 2022; MIT): official train/dev/test sentences. Treatment.Drug gives DRUG, the
  Effect of an Adverse_event ADVERSE_EVENT, Treatment.Dosage DOSAGE, Treatment.Disorder and
  Subject.Disorder DISEASE; the Effect of a Potential_therapeutic_event is not an adverse event and
  is skipped (counted). An argument listing several pieces (`[["macular edema", "retinopathy"]]`,
  mostly coordinated mentions) gives one span per piece. Most PHEE sentences are ADE-corpus
  sentences: `check_no_cross_contamination` refuses to train on one and test on the other.
- `seed-ae-emails` (the seed project's synthetic e-mails; MIT; shipped in `corpus/seed_ae_emails`):
  read by `training_data.read_seed_json` (spans where a gold string occurs, `answer_entities` with
  every gold string). `train` is deduplicated and without the test e-mails it contains; `test` is
  the seed's 59 records as they are; `test_unseen` leaves out the 6 that also occur in train.
- `et-dev` (30 hand-annotated Estonian clinical sentences written for this project): `dev` only.

For every corpus, spans with the same offsets and label are kept once, and the text of every span is
compared with the annotated mention (mismatches are counted; a mention that differs only by
surrounding whitespace keeps the source's offsets, any other is dropped). Overlapping spans are
resolved after choosing labels, the longest first (then the leftmost), as `seed_benchmark` does for
gold spans; each removed span is counted under "kept label > removed label" (`keep_overlaps=True`
keeps them all, e.g. for a generative model's answer, which may list nested mentions).

Only the standard library and spaCy are imported here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spacy.util import registry

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
from spacy_medllm.evaluation.metrics import resolve_overlaps

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc
    from spacy.training import Example as SpacyExample

logger = logging.getLogger("spacy_medllm")

CORPORA_ENV = "MEDLLM_CORPORA"
REPO_ROOT = Path(__file__).resolve().parents[2]
SPLIT_ORDER = ("train", "dev", "test")
HASH_FRACTIONS = (0.8, 0.1, 0.1)


class CorpusNotFoundError(FileNotFoundError):
    """A corpus's files are not where they were looked for."""


class CorpusContaminationError(ValueError):
    """A training and a test set share texts (or come from corpora that do)."""


# -- where the corpora are ------------------------------------------------------------------------


def corpora_root(path: str | Path | None = None) -> Path:
    """The folder holding the corpora: `path`, else $MEDLLM_CORPORA, else ../shared/corpora."""
    if path is not None:
        return Path(path)
    if os.environ.get(CORPORA_ENV):
        return Path(os.environ[CORPORA_ENV]).expanduser()
    return REPO_ROOT.parent / "shared" / "corpora"


def _need(path: Path, corpus: str) -> Path:
    if not path.exists():
        raise CorpusNotFoundError(
            f"{corpus}: {path} does not exist; pass path=... (or set ${CORPORA_ENV} to the folder "
            "that holds the corpora)"
        )
    return path


# -- shared pieces --------------------------------------------------------------------------------


def hash_split(key: str, fractions: Sequence[float] = HASH_FRACTIONS) -> str:
    """The split of a key (a PubMed ID): sha256 of the key, its first 8 bytes as a number in
    [0, 1), cut at the cumulative `fractions` of train, dev, test. No random state involved."""
    if len(fractions) != len(SPLIT_ORDER) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be 3 numbers summing to 1, got {fractions}")
    value = int.from_bytes(hashlib.sha256(key.encode("utf8")).digest()[:8], "big") / 2**64
    edge = 0.0
    for split, fraction in zip(SPLIT_ORDER, fractions, strict=True):
        edge += fraction
        if value < edge:
            return split
    return SPLIT_ORDER[-1]


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


def _dedupe_texts_across_splits(
    splits: dict[str, list[Example]], counts: Counter[str]
) -> dict[str, list[Example]]:
    """Each text kept once: the first occurrence, in train, dev, test order (a text repeated in a
    later split would otherwise be a leak)."""
    seen: set[str] = set()
    out: dict[str, list[Example]] = {}
    for split in sorted(splits, key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 99):
        kept = []
        for example in splits[split]:
            if example["text"] in seen:
                counts["duplicate_texts_removed"] += 1
                continue
            seen.add(example["text"])
            kept.append(example)
        out[split] = kept
    return out


@dataclass
class RawCorpus:
    """All splits of a corpus as read (spans deduplicated, overlaps not yet resolved)."""

    splits: dict[str, list[Example]]
    stats: dict[str, Any] = field(default_factory=dict)


# -- ADE corpus v2 --------------------------------------------------------------------------------

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


def read_ade(folder: Path) -> RawCorpus:
    """ADE-Corpus-V2 sentences with DRUG, ADVERSE_EVENT and DOSAGE spans, split by PMID hash."""
    folder = _need(folder, "ade-corpus-v2")
    if (folder / "ADE-Corpus-V2").is_dir():
        folder = folder / "ADE-Corpus-V2"
    counts: Counter[str] = Counter()
    groups: dict[tuple[str, str], list[tuple[str, int, int, str]]] = defaultdict(list)
    for file_name, kind in (("DRUG-AE.rel", "effect"), ("DRUG-DOSE.rel", "dose")):
        for pmid, sentence, mentions in _ade_rows(_need(folder / file_name, "ade"), kind, counts):
            groups[(pmid, sentence)].extend(mentions)
    negatives = folder / "ADE-NEG.txt"
    if negatives.exists():
        counts["negative_sentences_skipped"] = sum(
            1 for line in negatives.read_text("utf8").splitlines() if line.strip()
        )
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
    ordered = {
        s: [e for _, _, e in sorted(rows, key=lambda r: r[:2])] for s, rows in splits.items()
    }
    ordered = _dedupe_texts_across_splits(ordered, counts)
    pmids = {s: len({e["id"].split(":")[0] for e in exs}) for s, exs in ordered.items()}
    return RawCorpus(ordered, {"reader": dict(counts), "pmids_per_split": pmids})


# -- PubTator (BC5CDR, NCBI-disease) --------------------------------------------------------------


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
    for line_no, line in enumerate(_need(path, corpus).read_text("utf8").splitlines(), start=1):
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
    folder = _need(folder, "bc5cdr")
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
    folder = _need(folder, "ncbi-disease")
    if (folder / "original-data").is_dir():
        folder = folder / "original-data"
    label_map = None if fine_types else dict.fromkeys(NCBI_FINE_TYPES, "Disease")
    counts: Counter[str] = Counter()
    splits = {
        s: read_pubtator(folder / f, "ncbi-disease", counts, label_map)
        for s, f in NCBI_FILES.items()
    }
    return RawCorpus(splits, {"reader": dict(counts)})


# -- PHEE -----------------------------------------------------------------------------------------

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
    folder = _need(folder, "phee")
    folder = _first_dir(folder, "data/json", "json")
    counts: Counter[str] = Counter()
    splits: dict[str, list[Example]] = {}
    for split in SPLIT_ORDER:
        path = _need(folder / f"{split}.json", "phee")
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
    splits = _dedupe_texts_across_splits(splits, counts)
    return RawCorpus(splits, {"reader": dict(counts)})


# -- seed e-mails and the Estonian dev set --------------------------------------------------------

SEED_LAYOUTS = (
    ("train.json", "test.json"),
    (
        "data/entity_extraction/entity-extraction-train-data.json",
        "data/entity_extraction/entity-extraction-test-data.json",
    ),
)


def read_seed(folder: Path) -> RawCorpus:
    """The seed e-mails: train (deduplicated, test e-mails removed), test, test_unseen."""
    folder = _need(folder, "seed-ae-emails")
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
    path = _need(path, "et-dev")
    if path.is_dir():
        path = _need(path / "et-dev.jsonl", "et-dev")
    return RawCorpus({"dev": read_jsonl(path)}, {"reader": {"file": path.name}})


# -- the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusInfo:
    """What `load_corpus` knows about a corpus."""

    name: str
    splits: tuple[str, ...]
    labels: tuple[str, ...]  # every label the reader produces
    default_labels: tuple[str, ...]  # what load_corpus keeps unless told otherwise
    lang: str
    licence: str
    split_method: str
    reader: Callable[[Path], RawCorpus]
    default_path: Callable[[], Path]

    def describe(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("reader")
        data.pop("default_path")
        return data


CORPORA: dict[str, CorpusInfo] = {}


def register_corpus(info: CorpusInfo) -> CorpusInfo:
    CORPORA[info.name] = info
    return info


OFFICIAL = "official"
for _info in (
    CorpusInfo(
        "ade-corpus-v2",
        SPLIT_ORDER,
        ("DRUG", "ADVERSE_EVENT", "DOSAGE"),
        ("DRUG", "ADVERSE_EVENT"),
        "en",
        "not stated by the distributor (research use, cite Gurulingappa et al. 2012)",
        "by PubMed ID: sha256(PMID) -> 80/10/10 train/dev/test (hash_split)",
        read_ade,
        lambda: corpora_root() / "ade-corpus-v2",
    ),
    CorpusInfo(
        "bc5cdr",
        SPLIT_ORDER,
        ("Chemical", "Disease"),
        ("Chemical", "Disease"),
        "en",
        "public domain (BioCreative V CDR)",
        OFFICIAL,
        read_bc5cdr,
        lambda: corpora_root() / "bc5cdr",
    ),
    CorpusInfo(
        "ncbi-disease",
        SPLIT_ORDER,
        ("Disease",),
        ("Disease",),
        "en",
        "public domain (US Government work, NLM)",
        OFFICIAL,
        read_ncbi,
        lambda: corpora_root() / "ncbi-disease",
    ),
    CorpusInfo(
        "ncbi-disease-fine",
        SPLIT_ORDER,
        NCBI_FINE_TYPES,
        NCBI_FINE_TYPES,
        "en",
        "public domain (US Government work, NLM)",
        OFFICIAL,
        lambda folder: read_ncbi(folder, fine_types=True),
        lambda: corpora_root() / "ncbi-disease",
    ),
    CorpusInfo(
        "phee",
        SPLIT_ORDER,
        ("DRUG", "ADVERSE_EVENT", "DOSAGE", "DISEASE"),
        ("DRUG", "ADVERSE_EVENT"),
        "en",
        "MIT (Sun et al. 2022)",
        OFFICIAL,
        read_phee,
        lambda: corpora_root() / "phee",
    ),
    CorpusInfo(
        "seed-ae-emails",
        ("train", "test", "test_unseen"),
        ("DRUG", "ADVERSE_EVENT"),
        ("DRUG", "ADVERSE_EVENT"),
        "en",
        "MIT (Archit Kaila 2023; generated with gpt-4-1106-preview)",
        "the seed's own 700/59; train deduplicated and without test texts; test_unseen = test "
        "without the texts also in the original train file",
        read_seed,
        lambda: REPO_ROOT / "corpus" / "seed_ae_emails",
    ),
    CorpusInfo(
        "et-dev",
        ("dev",),
        ("DRUG", "ADVERSE_EVENT", "DISEASE", "PROCEDURE"),
        ("DRUG", "ADVERSE_EVENT", "DISEASE", "PROCEDURE"),
        "et",
        "written for this project (corpus/et_dev, MIT)",
        "dev only (30 sentences)",
        read_et_dev,
        lambda: REPO_ROOT / "corpus" / "et_dev" / "et-dev.jsonl",
    ),
):
    register_corpus(_info)


def corpus_info(name: str) -> CorpusInfo:
    if name not in CORPORA:
        raise KeyError(f"unknown corpus {name!r}; known: {sorted(CORPORA)}")
    return CORPORA[name]


def corpus_path(name: str, path: str | Path | None = None) -> Path:
    """The corpus's folder (or file): `path` if given, else its default location."""
    return Path(path) if path is not None else corpus_info(name).default_path()


@lru_cache(maxsize=16)
def _read_cached(name: str, path: str) -> RawCorpus:
    return corpus_info(name).reader(Path(path))


def read_raw(name: str, path: str | Path | None = None) -> RawCorpus:
    """All splits as read, before labels are chosen and overlaps resolved (cached per path)."""
    return _read_cached(name, str(corpus_path(name, path).resolve()))


def prepare_examples(
    examples: Iterable[Example],
    labels: Iterable[str] | None = None,
    *,
    keep_overlaps: bool = False,
    counts: Counter[str] | None = None,
) -> list[Example]:
    """Copies of `examples` with only `labels` (None: all) and, unless `keep_overlaps`, no
    overlapping spans (longest first, then leftmost; `seed_benchmark.resolve_overlaps`).

    `counts` receives "spans_other_label" and, per removed span, "overlap:KEPT>REMOVED".
    """
    keep = None if labels is None else set(labels)
    counts = counts if counts is not None else Counter()
    out: list[Example] = []
    for example in examples:
        spans = [s for s in example["spans"] if keep is None or s[2] in keep]
        counts["spans_other_label"] += len(example["spans"]) - len(spans)
        if not keep_overlaps:
            kept = resolve_overlaps(spans)
            for start, end, label in set(spans) - set(kept):
                winner = next(k for k in kept if k[0] < end and start < k[1])
                counts[f"overlap:{winner[2]}>{label}"] += 1
            spans = kept
        answer = example.get("answer_entities")
        if answer is not None and keep is not None:
            answer = [a for a in answer if a[1] in keep]
        out.append({**example, "spans": list(spans), "answer_entities": answer})
    return out


def load_corpus(
    name: str,
    split: str,
    path: str | Path | None = None,
    *,
    labels: Sequence[str] | None = None,
    keep_overlaps: bool = False,
    limit: int | None = None,
) -> list[Example]:
    """Gold examples of one split of a registered corpus (see the module docstring).

    `labels`: the labels to keep (default: the corpus's `default_labels`; ADE's DOSAGE and PHEE's
    DOSAGE/DISEASE on request). `limit`: the first N examples (the order is deterministic).
    """
    info = corpus_info(name)
    if split not in info.splits:
        raise KeyError(f"{name} has no split {split!r}; it has {list(info.splits)}")
    raw = read_raw(name, path)
    chosen = info.default_labels if labels is None else tuple(labels)
    unknown = sorted(set(chosen) - set(info.labels))
    if unknown:
        raise ValueError(f"{name} has no labels {unknown}; it has {list(info.labels)}")
    examples = raw.splits[split][:limit] if limit else raw.splits[split]
    return prepare_examples(examples, chosen, keep_overlaps=keep_overlaps)


def split_stats(examples: Sequence[Example]) -> dict[str, Any]:
    """Documents, spans per label, characters, and example ids' first/last."""
    labels = Counter(label for e in examples for _, _, label in e["spans"])
    return {
        "n_docs": len(examples),
        "n_spans": sum(labels.values()),
        "labels": dict(sorted(labels.items())),
        "n_chars": sum(len(e["text"]) for e in examples),
        "n_docs_without_spans": sum(1 for e in examples if not e["spans"]),
    }


def corpus_stats(
    name: str,
    path: str | Path | None = None,
    *,
    labels: Sequence[str] | None = None,
    keep_overlaps: bool = False,
) -> dict[str, Any]:
    """Per split: documents, spans per label, overlaps removed; the reader's counts (mismatched
    mentions, duplicates, skipped annotations); texts shared between splits."""
    info = corpus_info(name)
    raw = read_raw(name, path)
    chosen = info.default_labels if labels is None else tuple(labels)
    splits: dict[str, Any] = {}
    prepared: dict[str, list[Example]] = {}
    for split in info.splits:
        counts: Counter[str] = Counter()
        prepared[split] = prepare_examples(
            raw.splits[split], chosen, keep_overlaps=keep_overlaps, counts=counts
        )
        entry = split_stats(prepared[split])
        overlaps = {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if ":" in k}
        entry["n_overlaps_removed"] = sum(overlaps.values())
        entry["overlaps_removed"] = overlaps
        entry["n_spans_other_label"] = counts["spans_other_label"]
        splits[split] = entry
    shared = {
        f"{a}/{b}": len(shared_inputs(prepared[a], prepared[b]))
        for i, a in enumerate(info.splits)
        for b in info.splits[i + 1 :]
    }
    return {
        "corpus": name,
        "path": str(corpus_path(name, path)),
        "info": info.describe(),
        "chosen_labels": list(chosen),
        "keep_overlaps": keep_overlaps,
        "splits": splits,
        "texts_shared_between_splits": shared,
        **raw.stats,
    }


# -- contamination guards -------------------------------------------------------------------------

# Corpora that share texts: never train on one and test on another of the same group.
OVERLAPPING_CORPORA: tuple[frozenset[str], ...] = (frozenset({"phee", "ade-corpus-v2"}),)


def _name_and_split(spec: str) -> tuple[str, str | None]:
    name, _, split = spec.partition(":")
    return name, split or None


def check_no_cross_contamination(train_corpus: str | Iterable[str], test_corpus: str) -> None:
    """Refuse a train/test combination of corpora known to share texts (PHEE and ADE-Corpus-V2,
    either direction), and the same split of one corpus on both sides.

    Names may carry a split (`"phee:train"`); `train_corpus` may list several corpora.
    Raises CorpusContaminationError.
    """
    trains = [train_corpus] if isinstance(train_corpus, str) else list(train_corpus)
    test_name, test_split = _name_and_split(test_corpus)
    for spec in trains:
        train_name, train_split = _name_and_split(spec)
        for group in OVERLAPPING_CORPORA:
            if train_name != test_name and {train_name, test_name} <= group:
                raise CorpusContaminationError(
                    f"refusing to train on {train_name!r} and test on {test_name!r}: most PHEE "
                    "sentences are ADE-Corpus-V2 sentences (2,548 / 798 / 833 of PHEE's train / "
                    "dev / test), so the test set would be seen in training. Use one corpus's own "
                    "splits, or remove the shared texts first (check_no_text_overlap)."
                )
        if train_name == test_name and train_split is not None and train_split == test_split:
            raise CorpusContaminationError(
                f"refusing to train and test on the same split {train_name}:{train_split}"
            )


def normalize_text(text: str) -> str:
    """Lower case, whitespace collapsed: what text-overlap checks compare."""
    return " ".join(text.lower().split())


def shared_texts(
    first: Iterable[Example], second: Iterable[Example], *, normalize: bool = True
) -> list[Example]:
    """The examples of `second` whose text also occurs in `first` (compared after
    `normalize_text` unless `normalize=False`)."""
    key = normalize_text if normalize else (lambda text: text)
    texts = {key(e["text"]) for e in first}
    return [e for e in second if key(e["text"]) in texts]


def check_no_text_overlap(
    train: Iterable[Example],
    test: Iterable[Example],
    *,
    normalize: bool = True,
    what: str = "train/test",
) -> None:
    """Raise CorpusContaminationError if any test text also occurs among the training texts."""
    test = list(test)
    shared = shared_texts(train, test, normalize=normalize)
    if shared:
        ids = ", ".join(repr(e.get("id")) for e in shared[:5])
        raise CorpusContaminationError(
            f"{what}: {len(shared)} of {len(test)} test texts also occur in training "
            f"(ids {ids}{', ...' if len(shared) > 5 else ''})"
        )


# -- spaCy docs, the reader, writers --------------------------------------------------------------


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


# -- command line ---------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spacy_medllm.corpora.corpora",
        description="Read the public medical NER corpora: list, stats, convert to .spacy/.jsonl.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the registered corpora")
    for command in ("stats", "convert"):
        p = sub.add_parser(command)
        p.add_argument("name", choices=sorted(CORPORA))
        p.add_argument("--path", type=Path, default=None, help="the corpus folder (or file)")
        p.add_argument("--labels", default=None, help="comma-separated labels to keep")
        if command == "convert":
            p.add_argument("--output", type=Path, required=True)
            p.add_argument("--lang", default=None, help="spacy.blank language for the DocBins")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "list":
        for name, info in CORPORA.items():
            sys.stdout.write(f"{name}: splits {', '.join(info.splits)}; labels {info.labels}\n")
        return 0
    labels = args.labels.split(",") if args.labels else None
    if args.command == "stats":
        stats = corpus_stats(args.name, args.path, labels=labels)
    else:
        stats = convert_corpus(args.name, args.output, args.path, labels=labels, lang=args.lang)
    sys.stdout.write(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
