"""Evaluate any spaCy pipeline that sets `doc.ents` on a gold corpus, and compare systems.

`evaluate_pipeline(nlp, examples)` runs `nlp.pipe` over the examples' texts (timed) and scores the
predicted entities against the gold spans (`spacy_medllm.corpora.corpora.load_corpus` gives examples for
the registered corpora). It works for `medllm_ner` pipelines, trained spaCy NER, an EntityRuler,
or anything else that sets `doc.ents` (or `doc.spans[spans_key]`).

How documents are compared
--------------------------
- Gold docs are the pipeline's own tokenization (`nlp.make_doc`) with the gold spans snapped to
  tokens (`alignment_mode="expand"`, `corpora.align_spans`); spans with no token inside are
  counted as unaligned and dropped, spans that overlap after snapping keep the longest.
- Predicted spans are the pipeline's entities, mapped to the corpus's labels (`label_map`, and
  otherwise a predicted label equal to a gold label ignoring case, e.g. DISEASE -> Disease) and
  snapped to the same tokens. Predicted labels outside the scored labels are left out of the
  P/R/F figures (counted, and shown in the confusion table).

What is reported (per system)
-----------------------------
- `strict`: seqeval, IOB2, mode="strict" (`seed_benchmark.span_scores`): micro P/R/F1 with the
  TP/FP/FN of seqeval's entities, per label, and seqeval's macro average (over the labels that
  occur in gold or predictions).
- `spacy`: spaCy's `Scorer.score_spans(examples, "ents")` on the same docs (ents_p/r/f, per type).
  With non-overlapping spans on shared tokens it agrees with the strict micro figures.
- `overlap`: partial match: a predicted span is correct if it overlaps a gold span of the same
  label (precision side), a gold span is found if a predicted span of its label overlaps it
  (recall side); micro and per label.
- `confusion`: for each gold span, the label of the predicted span that overlaps it most
  (any predicted label), or MISSED; each predicted span that overlaps no gold span is SPURIOUS.
- `speed`: wall time of `list(nlp.pipe(texts))` (generators of `medllm_ner` components are
  initialised first), words (non-space tokens of the predicted docs) and docs per second.
- `memory`: the process's peak resident memory over loading `medllm_ner` models and the run
  (`memory.PeakMemory`: exact on Linux; `method` says how it was taken), with the RSS at the
  start (what earlier work in the process already held), the peak while the models loaded and
  the RSS once they had, at the end, and the CUDA allocator's peak on a GPU.
- `seed`: on examples with `answer_entities` (the seed e-mails), the seed's set metric
  (`seed_metric.set_scores`): gold = the answer strings (also those not in the text), predicted
  = the texts of the predicted spans (the "grounded" variant of `seed_benchmark`).
- `bertscore_f1` (optional): mean BERTScore F1 (`seed_benchmark.BertScore` on the packaged local
  MiniLM) between "LABEL: a, b; LABEL2: none" strings of predicted and gold entities.
- `medllm`: per `medllm_ner` component, what it recorded over the documents
  (`records.summarise_records`): answers parsed, entities emitted, spans, and the emitted entities
  that did not become spans by reason (`not_in_text`: invented; `truncated`: cut off by the answer
  budget). The Markdown report shows them in a table of their own.

Outputs: `write_report` gives `<stem>.json` (no corpus text: spans as offsets only),
`<stem>.summary.json` (the same without the per-document spans: what the repository keeps),
`<stem>.md` and `<stem>.png` (per-label strict F1); `combine_results` makes one README table from
several result (or summary) files (rows = systems, columns = corpora, cells = strict micro F1,
and words/s), and `plot_f1_vs_speed` plots F1 against words/s (log x) across systems and corpora.

    python -m spacy_medllm.evaluation.evaluate --pipeline NAME=PATH --corpus NAME --split test --output DIR
    python -m spacy_medllm.evaluation.evaluate combine DIR/*.summary.json --output table.md --plot speed.png

Heavy imports (spaCy models, seqeval, matplotlib, torch) happen inside the functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spacy_medllm.core.examples import Example, example_labels
from spacy_medllm.corpora.corpora import (
    AlignmentCounts,
    align_spans,
    check_no_cross_contamination,
    gold_doc,
)
from spacy_medllm.evaluation.seed_benchmark import iob_tags, resolve_overlaps, span_scores
from spacy_medllm.util.formatting import (
    fmt_mib,
    fmt_rate,
    fmt_score,
    json_default,
    machine_info,
    markdown_table,
    name_value_pairs,
)
from spacy_medllm.util.memory import PeakMemory

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

logger = logging.getLogger("spacy_medllm")

CharSpan = tuple[int, int, str]
MISSED = "MISSED"
SPURIOUS = "SPURIOUS"


# -- labels ---------------------------------------------------------------------------------------


def label_mapper(labels: Sequence[str], label_map: Mapping[str, str] | None = None) -> Any:
    """A function from a predicted label to the label it is scored as: `label_map` first, then a
    scored label equal to it ignoring case, else the label unchanged."""
    explicit = dict(label_map or {})
    by_case = {label.lower(): label for label in labels}

    def mapped(label: str) -> str:
        if label in explicit:
            return explicit[label]
        if label in labels:
            return label
        return by_case.get(label.lower(), label)

    return mapped


# -- metrics --------------------------------------------------------------------------------------


def _prf(tp_pred: int, n_pred: int, tp_gold: int, n_gold: int) -> dict[str, float]:
    p = tp_pred / n_pred if n_pred else 0.0
    r = tp_gold / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def _overlaps(a: CharSpan, b: CharSpan) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def strict_scores(
    gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]], labels: Sequence[str]
) -> dict[str, Any]:
    """seqeval strict IOB2 scores: micro (with TP/FP/FN), per label, and seqeval's macro avg."""
    import warnings

    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    scores = span_scores(gold_tags, pred_tags, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = classification_report(
            [list(t) for t in gold_tags],
            [list(t) for t in pred_tags],
            mode="strict",
            scheme=IOB2,
            zero_division=0,
            output_dict=True,
        )
    macro = report.get("macro avg")
    scores["macro"] = {
        "precision": float(macro["precision"]) if macro else 0.0,
        "recall": float(macro["recall"]) if macro else 0.0,
        "f1": float(macro["f1-score"]) if macro else 0.0,
    }
    return scores


def overlap_scores(
    gold: Sequence[Sequence[CharSpan]], pred: Sequence[Sequence[CharSpan]], labels: Sequence[str]
) -> dict[str, Any]:
    """Partial-match P/R/F1: overlapping spans of the same label count (see the module doc)."""
    per: dict[str, Counter[str]] = {label: Counter() for label in labels}
    for gold_spans, pred_spans in zip(gold, pred, strict=True):
        for span in pred_spans:
            counts = per.setdefault(span[2], Counter())
            counts["n_pred"] += 1
            counts["tp_pred"] += any(_overlaps(span, g) and g[2] == span[2] for g in gold_spans)
        for span in gold_spans:
            counts = per.setdefault(span[2], Counter())
            counts["n_gold"] += 1
            counts["tp_gold"] += any(_overlaps(span, p) and p[2] == span[2] for p in pred_spans)
    keys = ("tp_pred", "n_pred", "tp_gold", "n_gold")
    per_label = {
        label: {**{k: c[k] for k in keys}, **_prf(*(c[k] for k in keys))}
        for label, c in per.items()
    }
    total = {k: sum(c[k] for c in per.values()) for k in keys}
    return {"micro": {**total, **_prf(*(total[k] for k in keys))}, "per_label": per_label}


def confusion_table(
    gold: Sequence[Sequence[CharSpan]], pred: Sequence[Sequence[CharSpan]]
) -> dict[str, dict[str, int]]:
    """{gold label: {predicted label | MISSED: n}, SPURIOUS: {predicted label: n}} (module doc)."""
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for gold_spans, pred_spans in zip(gold, pred, strict=True):
        for g in gold_spans:
            best, best_overlap = None, 0
            for p in pred_spans:
                overlap = min(g[1], p[1]) - max(g[0], p[0])
                if overlap > best_overlap:
                    best, best_overlap = p, overlap
            table[g[2]][best[2] if best else MISSED] += 1
        for p in pred_spans:
            if not any(_overlaps(p, g) for g in gold_spans):
                table[SPURIOUS][p[2]] += 1
    return {row: dict(sorted(cells.items())) for row, cells in sorted(table.items())}


def spacy_scores(gold_docs: Sequence[Doc], pred_docs: Sequence[Doc]) -> dict[str, Any]:
    """spaCy's own `Scorer.score_spans(..., "ents")` on (predicted, gold) pairs."""
    from spacy.scorer import Scorer
    from spacy.training import Example as SpacyExample

    examples = [SpacyExample(p, g) for p, g in zip(pred_docs, gold_docs, strict=True)]
    return Scorer.score_spans(examples, "ents")


def seed_set_metric(
    examples: Sequence[Example], pred: Sequence[Sequence[CharSpan]]
) -> dict[str, Any]:
    """The seed's set metric: answer strings vs the texts of the predicted spans."""
    from spacy_medllm.evaluation.seed_metric import set_scores

    gold_sets = [{text for text, _ in e.get("answer_entities") or ()} for e in examples]
    pred_sets = [
        {e["text"][s:t] for s, t, _ in spans} for e, spans in zip(examples, pred, strict=True)
    ]
    return set_scores(gold_sets, pred_sets).to_dict()


def canonical_entities(entities: Iterable[tuple[str, str]], labels: Sequence[str]) -> str:
    """What BERTScore compares: "LABEL: a, b; LABEL2: none", labels in order, texts as given."""
    by_label: dict[str, list[str]] = {label: [] for label in labels}
    for text, label in entities:
        if label in by_label:
            by_label[label].append(text.strip())
    return "; ".join(f"{label}: {', '.join(texts) or 'none'}" for label, texts in by_label.items())


def bertscore_f1(
    examples: Sequence[Example],
    pred: Sequence[Sequence[CharSpan]],
    labels: Sequence[str],
    model: str | Path | None = None,
) -> tuple[float | None, dict[str, Any]]:
    """Mean BERTScore F1 of predicted vs gold canonical entity strings; (None, reason) when the
    packaged local encoder is not installed."""
    from spacy_medllm.evaluation.seed_benchmark import (
        BERTSCORE_PACKAGE,
        BertScore,
        default_bertscore_model,
    )

    folder = Path(model) if model else default_bertscore_model()
    if folder is None:
        return None, {"enabled": False, "reason": f"{BERTSCORE_PACKAGE} is not installed"}
    references = []
    for example in examples:
        gold = example.get("answer_entities")
        if gold is None:
            gold = [(example["text"][s:e], label) for s, e, label in example["spans"]]
        references.append(canonical_entities(gold, labels))
    candidates = [
        canonical_entities(((e["text"][s:t], label) for s, t, label in spans), labels)
        for e, spans in zip(examples, pred, strict=True)
    ]
    scorer = BertScore(folder)
    values = scorer.f1(candidates, references)
    info = {"enabled": True, "model": folder.name, "num_layers": scorer.num_layers}
    return (sum(values) / len(values) if values else None), info


# -- running a pipeline ---------------------------------------------------------------------------


def initialize_generators(nlp: Language) -> None:
    """Load the models of components with a generator (medllm_ner) before the clock starts."""
    for _, pipe in nlp.pipeline:
        initialize = getattr(getattr(pipe, "generator", None), "initialize", None)
        if callable(initialize):
            initialize()


def predicted_char_spans(doc: Doc, spans_key: str | None = None) -> list[CharSpan]:
    """The pipeline's spans: `doc.ents`, or `doc.spans[spans_key]`."""
    spans = doc.ents if spans_key is None else doc.spans.get(spans_key, [])
    return [(s.start_char, s.end_char, s.label_) for s in spans]


def evaluate_pipeline(
    nlp: Language,
    examples: Sequence[Example],
    *,
    name: str = "pipeline",
    labels: Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
    spans_key: str | None = None,
    batch_size: int | None = None,
    seed_metric: bool | None = None,
    bertscore: bool = False,
    bertscore_model: str | Path | None = None,
    include_docs: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run `nlp` over the examples and score it (see the module docstring); returns a dict.

    `labels`: the labels scored (default: those of the gold examples). `seed_metric`: default
    on when every example has `answer_entities`. `include_docs`: per document, the id and the gold
    and predicted spans as offsets (never the text). `progress`: a progress bar (stderr) while the
    pipeline runs (an LLM pipeline can take many minutes over a test split).
    """
    from tqdm import tqdm

    examples = list(examples)
    labels = list(labels) if labels is not None else example_labels(examples)
    mapped = label_mapper(labels, label_map)
    texts = [e["text"] for e in examples]

    # memory: the model's loading and the whole run; time: the run only
    with PeakMemory() as memory:
        with PeakMemory() as loading:
            initialize_generators(nlp)
        start = time.perf_counter()
        kwargs = {} if batch_size is None else {"batch_size": batch_size}
        docs = list(
            tqdm(
                nlp.pipe(texts, **kwargs),
                total=len(texts),
                desc=f"evaluate {name}",
                unit="doc",
                disable=not progress,
            )
        )
        seconds = time.perf_counter() - start

    gold_counts, pred_counts = AlignmentCounts(), AlignmentCounts()
    gold_spans: list[list[CharSpan]] = []
    pred_spans: list[list[CharSpan]] = []  # scored labels only
    pred_all: list[list[CharSpan]] = []  # every predicted label (after mapping)
    gold_docs, pred_docs, gold_tags, pred_tags = [], [], [], []
    other: Counter[str] = Counter()
    used_map: dict[str, str] = {}
    for example, doc in zip(examples, docs, strict=True):
        # only the scored labels, so a span of another label cannot push a scored one out
        scored_gold = {**example, "spans": [s for s in example["spans"] if s[2] in labels]}
        reference = gold_doc(nlp.make_doc, scored_gold, gold_counts)
        reference_spans = [(e.start_char, e.end_char, e.label_) for e in reference.ents]
        raw = predicted_char_spans(doc, spans_key)
        for _, _, label in raw:
            if mapped(label) != label:
                used_map[label] = mapped(label)
        predicted = make_doc_with_ents(
            nlp, example["text"], [(s, e, mapped(label)) for s, e, label in raw], pred_counts
        )
        every = [(e.start_char, e.end_char, e.label_) for e in predicted.ents]
        scored = [s for s in every if s[2] in labels]
        other.update(s[2] for s in every if s[2] not in labels)
        predicted.ents = [predicted.char_span(s, e, label=label) for s, e, label in scored]
        gold_docs.append(reference)
        pred_docs.append(predicted)
        gold_spans.append(reference_spans)
        pred_spans.append(scored)
        pred_all.append(every)
        gold_tags.append(iob_tags(reference, reference_spans))
        pred_tags.append(iob_tags(predicted, scored))

    n_words = sum(sum(1 for token in doc if not token.is_space) for doc in docs)
    result: dict[str, Any] = {
        "name": name,
        "n_docs": len(examples),
        "labels": labels,
        "label_map_used": dict(sorted(used_map.items())),
        "gold": {"n_spans": sum(map(len, gold_spans)), "alignment": gold_counts.to_dict()},
        "predicted": {
            "n_spans": sum(map(len, pred_spans)),
            "n_spans_other_label": dict(sorted(other.items())),
            "alignment": pred_counts.to_dict(),
        },
        "strict": strict_scores(gold_tags, pred_tags, labels),
        "spacy": spacy_scores(gold_docs, pred_docs),
        "overlap": overlap_scores(gold_spans, pred_spans, labels),
        "confusion": confusion_table(gold_spans, pred_all),
        "speed": {
            "seconds": seconds,
            "n_docs": len(docs),
            "n_words": n_words,
            "words_per_s": n_words / seconds if seconds > 0 else None,
            "docs_per_s": len(docs) / seconds if seconds > 0 else None,
            "batch_size": batch_size or nlp.batch_size,
        },
        "memory": {
            **memory.to_dict(),
            "loading_peak_rss_mib": loading.to_dict()["peak_rss_mib"],
            "loaded_rss_mib": loading.to_dict()["end_rss_mib"],
        },
        "seed": None,
        "bertscore_f1": None,
        "medllm": llm_records(nlp, docs),
    }
    if seed_metric is None:
        seed_metric = bool(examples) and all(e.get("answer_entities") is not None for e in examples)
    if seed_metric:
        result["seed"] = seed_set_metric(examples, pred_spans)
    if bertscore:
        result["bertscore_f1"], result["bertscore"] = bertscore_f1(
            examples, pred_spans, labels, bertscore_model
        )
    if include_docs:
        result["docs"] = [
            {"id": e.get("id", ""), "gold": [list(s) for s in g], "pred": [list(s) for s in p]}
            for e, g, p in zip(examples, gold_spans, pred_all, strict=True)
        ]
    return result


def llm_records(nlp: Language, docs: Sequence[Doc]) -> dict[str, dict[str, Any]]:
    """For each `medllm_ner` component of `nlp`: what it recorded over `docs`, summed
    (`records.summarise_records`: parseable answers, emitted entities, spans, rejections by
    reason). Empty for a pipeline without one."""
    from spacy_medllm.core.records import summarise_records
    from spacy_medllm.pipeline.component import get_record

    return {
        name: summarise_records(get_record(doc, name) for doc in docs)
        for name in nlp.pipe_names
        if nlp.get_pipe_meta(name).factory == "medllm_ner"
    }


def make_doc_with_ents(
    nlp: Language, text: str, spans: Iterable[CharSpan], counts: AlignmentCounts | None = None
) -> Doc:
    """`nlp.make_doc(text)` with `spans` snapped to its tokens (`align_spans`) as `doc.ents`;
    overlapping spans (possible in `doc.spans`) are resolved first, the longest kept."""
    doc = nlp.make_doc(text)
    spans = list(dict.fromkeys(spans))
    resolved = resolve_overlaps(spans)
    if counts is not None:
        counts.n_overlaps_removed += len(spans) - len(resolved)
    aligned = align_spans(doc, resolved, counts)
    doc.ents = [doc.char_span(s, e, label=label) for s, e, label in aligned]
    return doc


# -- loading and reports --------------------------------------------------------------------------


def load_pipeline(spec: str | Path) -> Language:
    """`spacy.load(spec)` (a path or an installed package), with medllm_ner registered."""
    import spacy

    from spacy_medllm.pipeline import component as _component  # noqa: F401 - registers the factory

    return spacy.load(spec)


def evaluate_corpus(
    pipelines: Sequence[tuple[str, str | Path | Language]],
    corpus: str,
    split: str = "test",
    output: str | Path | None = None,
    *,
    path: str | Path | None = None,
    limit: int | None = None,
    labels: Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
    trained_on: Sequence[str] = (),
    stem: str | None = None,
    plot: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Score each (name, pipeline path | nlp) on one split of a registered corpus.

    `trained_on`: corpora the pipelines were trained on (`name` or `name:split`); a combination
    `corpora.check_no_cross_contamination` refuses raises before anything runs. Writes
    `<stem>.json/.md/.png` to `output` (stem: "<corpus>-<split>") when given; returns the report.
    `options` go to `evaluate_pipeline`.
    """
    from spacy_medllm.corpora.corpora import corpus_info, corpus_path, load_corpus

    if trained_on:
        check_no_cross_contamination(list(trained_on), f"{corpus}:{split}")
    names = [name for name, _ in pipelines]
    if len(set(names)) != len(names):
        raise ValueError(f"system names must be unique: {names}")
    info = corpus_info(corpus)
    examples = load_corpus(corpus, split, path, labels=labels, limit=limit)
    scored = list(labels) if labels is not None else list(info.default_labels)
    systems = []
    for name, spec in pipelines:
        nlp = load_pipeline(spec) if isinstance(spec, (str, Path)) else spec
        logger.info("evaluate: %s on %s:%s (%d docs)", name, corpus, split, len(examples))
        result = evaluate_pipeline(
            nlp, examples, name=name, labels=scored, label_map=label_map, **options
        )
        result["source"] = str(spec) if isinstance(spec, (str, Path)) else type(spec).__name__
        result["pipeline"] = {"lang": nlp.lang, "pipe_names": list(nlp.pipe_names)}
        systems.append(result)
    report = {
        "corpus": corpus,
        "split": split,
        "corpus_path": str(corpus_path(corpus, path)),
        "licence": info.licence,
        "n_docs": len(examples),
        "limit": limit,
        "labels": scored,
        "trained_on": list(trained_on),
        "machine": machine_info(),
        "systems": systems,
    }
    if output is not None:
        write_report(report, output, stem=stem, plot=plot)
    return report


def summary_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report without the per-document spans (`docs`): every score, count and setting, small
    enough to keep in git, and all that `combine_results` and `plot_f1_vs_speed` read."""
    systems = [{k: v for k, v in s.items() if k != "docs"} for s in report["systems"]]
    return {**report, "systems": systems}


def write_report(
    report: Mapping[str, Any],
    output: str | Path,
    *,
    stem: str | None = None,
    plot: bool = True,
    summary: bool = True,
) -> dict[str, Path]:
    """Write `<stem>.json` (with the per-document spans), with `summary` `<stem>.summary.json`
    (without them, see `summary_report`), `<stem>.md` and (with `plot`) `<stem>.png` to the
    `output` folder."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{report['corpus']}-{report['split']}"
    paths = {"json": output / f"{stem}.json", "md": output / f"{stem}.md"}
    contents = [("json", report)]
    if summary:
        paths["summary"] = output / f"{stem}.summary.json"
        contents.append(("summary", summary_report(report)))
    for key, content in contents:
        paths[key].write_text(
            json.dumps(content, indent=2, ensure_ascii=False, default=json_default) + "\n", "utf8"
        )
    paths["md"].write_text(markdown_report(report), "utf8")
    if plot and report["systems"]:
        paths["png"] = plot_per_label_f1(report, output / f"{stem}.png")
    return paths


COLUMNS = {
    "Strict P / R / F1": "seqeval, IOB2, mode='strict', micro; gold and predicted spans snapped "
    "to the pipeline's tokens (alignment_mode='expand')",
    "Macro F1": "seqeval's macro average over the labels in gold or predictions",
    "spaCy P / R / F": "spaCy's Scorer.score_spans(examples, 'ents') on the same docs",
    "Overlap P / R / F1": "a predicted span counts if it overlaps a gold span of the same label; "
    "a gold span is found if a predicted span of its label overlaps it",
    "words/s": "non-space tokens of the predicted docs / wall time of list(nlp.pipe(texts)), "
    "models loaded before the clock starts",
    "peak RSS MiB": "the process's peak resident memory while medllm_ner models load and the "
    "texts run (everything the process holds counts, other pipelines loaded for the same report "
    "too; the JSON has the RSS at the start; scripts/bench_memory.py runs one per process)",
    "F1 <label>": "strict F1 per label; n/a when the label has neither gold nor predicted spans",
    "Seed P / R / F1": "seed e-mails only: the seed's set metric, gold answer strings vs the "
    "texts of the predicted spans",
    "BERTScore F1": "mean over documents of BERTScore F1 (local all-MiniLM-L6-v2, 6 layers, no "
    "baseline rescaling) between 'LABEL: a, b; ...' strings of predicted and gold entities",
}


def _f(value: Any) -> str:
    return fmt_score(None if value is None else float(value))


def _label_f1(scores: Mapping[str, Any]) -> str:
    """Per-label F1, or n/a for a label with no gold and no predicted span."""
    return _f(scores["f1"]) if scores["tp"] + scores["fp"] + scores["fn"] else "n/a"


def markdown_report(report: Mapping[str, Any]) -> str:
    """Tables for one corpus split: scores per system, per-label F1, confusion per system."""
    labels = report["labels"]
    seed = any(s.get("seed") for s in report["systems"])
    bert = any(s.get("bertscore_f1") is not None for s in report["systems"])
    header = [
        "System",
        "Strict P",
        "Strict R",
        "Strict F1",
        "Macro F1",
        "spaCy P",
        "spaCy R",
        "spaCy F",
        "Overlap P",
        "Overlap R",
        "Overlap F1",
        *(f"F1 {label}" for label in labels),
        "TP/FP/FN",
        "words/s",
        "peak RSS MiB",
    ]
    header += ["Seed P", "Seed R", "Seed F1"] if seed else []
    header += ["BERTScore F1"] if bert else []
    rows = []
    for system in report["systems"]:
        strict, sp, ov = system["strict"], system["spacy"], system["overlap"]["micro"]
        micro = strict["micro"]
        row = [
            system["name"],
            _f(micro["precision"]),
            _f(micro["recall"]),
            _f(micro["f1"]),
            _f(strict["macro"]["f1"]),
            _f(sp["ents_p"]),
            _f(sp["ents_r"]),
            _f(sp["ents_f"]),
            _f(ov["precision"]),
            _f(ov["recall"]),
            _f(ov["f1"]),
            *(_label_f1(strict["per_label"][label]) for label in labels),
            f"{micro['tp']}/{micro['fp']}/{micro['fn']}",
            fmt_rate(system["speed"]["words_per_s"]),
            fmt_mib((system.get("memory") or {}).get("peak_rss_mib")),
        ]
        if seed:
            s = system.get("seed") or {}
            row += [_f(s.get("precision")), _f(s.get("recall")), _f(s.get("f1"))]
        if bert:
            row += [_f(system.get("bertscore_f1"))]
        rows.append(row)
    first = report["systems"][0] if report["systems"] else None
    gold = first["gold"] if first else None
    parts = [
        f"## {report['corpus']} ({report['split']})",
        "",
        f"{report['n_docs']} documents"
        + (f" (first {report['limit']})" if report.get("limit") else "")
        + f"; labels {', '.join(labels)}; licence: {report.get('licence', 'n/a')}.",
    ]
    if gold:
        a = gold["alignment"]
        parts.append(
            f"Gold spans: {gold['n_spans']} after snapping to the tokens of "
            f"{first['name']} ({a['n_snapped']} widened, {a['n_unaligned']} unaligned, "
            f"{a['n_overlaps_removed']} overlaps removed)."
        )
    parts += ["", markdown_table(header, rows), ""]
    llm_rows = [
        [
            system["name"],
            component,
            f"{r['n_chunks'] - r['n_parse_errors']}/{r['n_chunks']}",
            str(r["n_emitted"]),
            str(r["n_spans"]),
            str(r["rejected"].get("not_in_text", 0)),
            str(r["rejected"].get("truncated", 0)),
            str(
                sum(r["rejected"].values())
                - r["rejected"].get("not_in_text", 0)
                - r["rejected"].get("truncated", 0)
            ),
            str(r["n_errors"]),
        ]
        for system in report["systems"]
        for component, r in (system.get("medllm") or {}).items()
    ]
    if llm_rows:
        parts += [
            "What the LLM components recorded (entities the model emitted that did not become "
            "spans are counted, not hidden):",
            "",
            markdown_table(
                [
                    "System",
                    "Component",
                    "Answers parsed",
                    "Entities emitted",
                    "Spans",
                    "Rejected: not in text",
                    "Rejected: truncated",
                    "Rejected: other",
                    "Doc errors",
                ],
                llm_rows,
            ),
            "",
        ]
    for system in report["systems"]:
        parts += [f"Confusion ({system['name']}): rows gold, columns predicted", ""]
        parts += [confusion_markdown(system["confusion"]), ""]
    machine = report.get("machine", {})
    parts += ["Columns:", ""]
    skip = {"Seed P / R / F1"} if not seed else set()
    skip |= {"BERTScore F1"} if not bert else set()
    parts += [f"- **{key}**: {text}." for key, text in COLUMNS.items() if key not in skip]
    parts += [
        "",
        f"Machine: {machine.get('cpu_count')} CPUs, Python {machine.get('python')}, "
        f"spaCy {machine.get('spacy')}, torch {machine.get('torch')}.",
        "",
    ]
    return "\n".join(parts)


def confusion_markdown(confusion: Mapping[str, Mapping[str, int]]) -> str:
    """The confusion table as Markdown: gold labels (and SPURIOUS) by predicted labels (and
    MISSED)."""
    rows_labels = [r for r in confusion if r != SPURIOUS] + (
        [SPURIOUS] if SPURIOUS in confusion else []
    )
    columns = sorted({c for cells in confusion.values() for c in cells} - {MISSED})
    columns += [MISSED] if any(MISSED in cells for cells in confusion.values()) else []
    rows = [
        [row, *(str(confusion[row].get(column, 0)) for column in columns)] for row in rows_labels
    ]
    return markdown_table(["gold \\ predicted", *columns], rows) if rows else "(no spans)"


# -- plots and combined tables --------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_label_f1(report: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bars: strict F1 per label (and micro) for each system; labels with no gold and no
    predicted span in any system are left out."""
    plt = _pyplot()
    systems = report["systems"]
    shown = [
        label
        for label in report["labels"]
        if any(_label_f1(s["strict"]["per_label"][label]) != "n/a" for s in systems)
    ]
    groups = [*shown, "micro"]
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(groups) * max(len(systems), 1) + 2), 4.0))
    for k, system in enumerate(systems):
        strict = system["strict"]
        values = [strict["per_label"][label]["f1"] for label in shown]
        values.append(strict["micro"]["f1"])
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(groups))]
        bars = ax.bar(xs, values, width, label=system["name"])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=6, padding=1)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=15, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("strict F1 (seqeval)")
    ax.set_title(f"{report['corpus']} ({report['split']}, n={report['n_docs']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def read_reports(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    return [json.loads(Path(p).read_text("utf8")) for p in paths]


def combine_results(reports: Iterable[Mapping[str, Any] | str | Path]) -> str:
    """One Markdown table: rows = systems, columns = corpus (split), cells = strict micro F1, and
    words/s = all words / all seconds of that system over the corpora."""
    loaded = [r if isinstance(r, Mapping) else read_reports([r])[0] for r in reports]
    columns: dict[str, None] = {}
    cells: dict[str, dict[str, str]] = defaultdict(dict)
    speed: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for report in loaded:
        column = _column(report)
        columns.setdefault(column, None)
        for system in report["systems"]:
            cells[system["name"]][column] = _f(system["strict"]["micro"]["f1"])
            speed[system["name"]][0] += system["speed"]["n_words"]
            speed[system["name"]][1] += system["speed"]["seconds"]
    rows = []
    for name, row in cells.items():
        words, seconds = speed[name]
        rows.append(
            [
                name,
                *(row.get(c, "n/a") for c in columns),
                fmt_rate(words / seconds if seconds > 0 else None),
            ]
        )
    return markdown_table(["System", *columns, "words/s"], rows)


def _column(report: Mapping[str, Any]) -> str:
    return f"{report['corpus']} ({report['split']}, n={report['n_docs']})"


def plot_f1_vs_speed(reports: Iterable[Mapping[str, Any] | str | Path], path: str | Path) -> Path:
    """Strict micro F1 against words/s (log x): one point per system and corpus; the colour is
    the system, the marker the corpus."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    loaded = [r if isinstance(r, Mapping) else read_reports([r])[0] for r in reports]
    corpora = list(dict.fromkeys(_column(r) for r in loaded))
    systems = list(dict.fromkeys(s["name"] for r in loaded for s in r["systems"]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^v<>pX*"
    colour = {name: colours[i % len(colours)] for i, name in enumerate(systems)}
    marker = {corpus: markers[i % len(markers)] for i, corpus in enumerate(corpora)}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for report in loaded:
        for system in report["systems"]:
            x, y = system["speed"]["words_per_s"], system["strict"]["micro"]["f1"]
            if not x:
                continue
            ax.scatter([x], [y], color=colour[system["name"]], marker=marker[_column(report)])
            ax.annotate(
                system["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    handles = [Line2D([], [], color=colour[n], marker="o", ls="", label=n) for n in systems]
    handles += [Line2D([], [], color="grey", marker=marker[c], ls="", label=c) for c in corpora]
    ax.set_xscale("log")
    ax.set_xlabel("words per second (log)")
    ax.set_ylabel("strict micro F1 (seqeval)")
    ax.set_ylim(0, 1.05)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- command line ---------------------------------------------------------------------------------


def _parse_evaluate(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spacy_medllm.evaluation.evaluate",
        description="Score spaCy pipelines on a registered corpus (see spacy_medllm.corpora.corpora); "
        "`python -m spacy_medllm.evaluation.evaluate combine FILES` makes one table of several results.",
    )
    parser.add_argument("--pipeline", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--path", default=None, type=Path, help="the corpus folder (or file)")
    parser.add_argument("--limit", type=int, default=None, help="the first N documents only")
    parser.add_argument("--labels", default=None, help="comma-separated labels to score")
    parser.add_argument("--label-map", action="append", default=[], metavar="PREDICTED=GOLD")
    parser.add_argument("--spans-key", default=None, help="read doc.spans[KEY] instead of ents")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--trained-on", action="append", default=[], metavar="CORPUS[:SPLIT]")
    parser.add_argument("--bertscore", action="store_true")
    parser.add_argument("--bertscore-model", type=Path, default=None)
    parser.add_argument("--stem", default=None, help="output file stem (default CORPUS-SPLIT)")
    parser.add_argument("--no-plot", action="store_true")
    return parser.parse_args(argv)


def _parse_combine(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m spacy_medllm.evaluation.evaluate combine")
    parser.add_argument(
        "results", nargs="+", type=Path, help="result files (<stem>.json or <stem>.summary.json)"
    )
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to write")
    parser.add_argument("--plot", type=Path, default=None, help="F1 vs words/s PNG to write")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv and argv[0] == "combine":
        args = _parse_combine(argv[1:])
        table = combine_results(args.results)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(table + "\n", "utf8")
        if args.plot:
            plot_f1_vs_speed(args.results, args.plot)
        sys.stdout.write(table + "\n")
        return 0
    args = _parse_evaluate(argv)
    pipelines = name_value_pairs(args.pipeline, "--pipeline", "NAME=PATH")
    if not pipelines:
        raise SystemExit("give at least one --pipeline NAME=PATH")
    report = evaluate_corpus(
        pipelines,
        args.corpus,
        args.split,
        args.output,
        path=args.path,
        limit=args.limit,
        labels=args.labels.split(",") if args.labels else None,
        label_map=dict(name_value_pairs(args.label_map, "--label-map", "FROM=TO")),
        trained_on=args.trained_on,
        stem=args.stem,
        plot=not args.no_plot,
        spans_key=args.spans_key,
        batch_size=args.batch_size,
        bertscore=args.bertscore,
        bertscore_model=args.bertscore_model,
    )
    sys.stdout.write(markdown_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
