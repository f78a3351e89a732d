"""Public medical NER corpora as gold examples: readers, deterministic splits, stats, converters.

`load_corpus(name, split, path=None)` returns gold examples in the package's format
(`spacy_medllm.core.examples`: `{"id", "text", "spans": [(start, end, label)], "answer_entities"}`,
character offsets, end exclusive); `corpus_stats(name)` says what was read, dropped and resolved;
`medllm.Corpus.v1` is the same as a spaCy reader (`[corpora.train] @readers = "medllm.Corpus.v1"`),
and `python -m spacy_medllm corpus convert NAME --output DIR` writes `{split}.spacy` DocBins,
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

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from spacy_medllm.core.examples import (
    Example,
    resolve_overlaps,
    shared_inputs,
)
from spacy_medllm.corpora.paths import REPO_ROOT, corpora_root
from spacy_medllm.corpora.readers import (
    NCBI_FINE_TYPES,
    RawCorpus,
    read_ade,
    read_bc5cdr,
    read_et_clinical,
    read_et_dev,
    read_ncbi,
    read_out_of_style,
    read_phee,
    read_seed,
)
from spacy_medllm.corpora.splits import SPLIT_ORDER


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
        "ade-corpus-v2-ae",
        SPLIT_ORDER,
        ("ADVERSE_EVENT",),
        ("ADVERSE_EVENT",),
        "en",
        "not stated by the distributor (research use, cite Gurulingappa et al. 2012)",
        "every sentence, ADE-NEG.txt's 16,688 included as texts without entities (the data as it "
        "comes: about 80% empty); ADVERSE_EVENT only (ADE-NEG does not annotate drugs); the same "
        "PMID hash split as ade-corpus-v2",
        lambda folder: read_ade(folder, negatives=True),
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
        "out-of-style",
        ("test",),
        ("DRUG", "ADVERSE_EVENT"),
        ("DRUG", "ADVERSE_EVENT"),
        "en",
        "written for this project (corpus/out_of_style, MIT)",
        "test only (68 texts in 9 styles; corpus/out_of_style/GUIDE.md)",
        read_out_of_style,
        lambda: REPO_ROOT / "corpus" / "out_of_style" / "out-of-style.jsonl",
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
    CorpusInfo(
        "et-clinical",
        ("test",),
        ("DRUG", "ADVERSE_EVENT", "DISEASE", "PROCEDURE"),
        ("DRUG", "ADVERSE_EVENT", "DISEASE", "PROCEDURE"),
        "et",
        "written for this project (corpus/et_clinical, MIT)",
        "test only (68 sentences in 10 clinical styles; corpus/et_clinical/GUIDE.md)",
        read_et_clinical,
        lambda: REPO_ROOT / "corpus" / "et_clinical" / "et-clinical.jsonl",
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
