"""Evaluate any spaCy pipeline that sets `doc.ents` on a gold corpus, and compare systems.

`evaluate_pipeline(nlp, examples)` runs `nlp.pipe` over the examples' texts (timed) and scores the
predicted entities against the gold spans (`spacy_medllm.corpora.registry.load_corpus` gives
examples for the registered corpora). It works for `medllm_ner` pipelines, trained spaCy NER, an
EntityRuler, or anything else that sets `doc.ents` (or `doc.spans[spans_key]`).

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

    python -m spacy_medllm evaluate --pipeline NAME=PATH --corpus NAME --split test --output DIR
    python -m spacy_medllm combine DIR/*.summary.json --output table.md --plot speed.png

Heavy imports (spaCy models, seqeval, matplotlib, torch) happen inside the functions.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spacy_medllm.core.examples import Example, example_labels, resolve_overlaps
from spacy_medllm.corpora.docs import AlignmentCounts, align_spans, gold_doc
from spacy_medllm.corpora.splits import check_no_cross_contamination
from spacy_medllm.evaluation.metrics import (
    CharSpan,
    confusion_table,
    iob_tags,
    label_mapper,
    overlap_scores,
    spacy_scores,
    strict_scores,
)
from spacy_medllm.evaluation.plots import plot_per_label_f1
from spacy_medllm.evaluation.tables import markdown_report
from spacy_medllm.util.formatting import json_default
from spacy_medllm.util.machine import machine_info
from spacy_medllm.util.memory import PeakMemory

logger = logging.getLogger("spacy_medllm")


if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc


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
    from spacy_medllm.evaluation.bertscore import (
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

    result = score_docs(
        nlp,
        examples,
        docs,
        name=name,
        labels=labels,
        label_map=label_map,
        spans_key=spans_key,
        seed_metric=seed_metric,
        bertscore=bertscore,
        bertscore_model=bertscore_model,
        include_docs=include_docs,
    )
    n_words = sum(sum(1 for token in doc if not token.is_space) for doc in docs)
    result["speed"] = {
        "seconds": seconds,
        "n_docs": len(docs),
        "n_words": n_words,
        "words_per_s": n_words / seconds if seconds > 0 else None,
        "docs_per_s": len(docs) / seconds if seconds > 0 else None,
        "batch_size": batch_size or nlp.batch_size,
    }
    result["memory"] = {
        **memory.to_dict(),
        "loading_peak_rss_mib": loading.to_dict()["peak_rss_mib"],
        "loaded_rss_mib": loading.to_dict()["end_rss_mib"],
    }
    return result


def score_docs(
    nlp: Language,
    examples: Sequence[Example],
    docs: Sequence[Doc],
    *,
    name: str = "pipeline",
    labels: Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
    spans_key: str | None = None,
    seed_metric: bool | None = None,
    bertscore: bool = False,
    bertscore_model: str | Path | None = None,
    include_docs: bool = True,
) -> dict[str, Any]:
    """Score the docs `nlp` produced for the examples' texts (in order) against their gold spans:
    every figure of `evaluate_pipeline` except speed and memory."""
    examples = list(examples)
    labels = list(labels) if labels is not None else example_labels(examples)
    mapped = label_mapper(labels, label_map)

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
        "texts": text_level_counts(gold_spans, pred_spans),
        "spacy": spacy_scores(gold_docs, pred_docs),
        "overlap": overlap_scores(gold_spans, pred_spans, labels),
        "confusion": confusion_table(gold_spans, pred_all),
        "seed": None,
        "bertscore_f1": None,
        "medllm": llm_records(nlp, docs),
    }
    if any(e.get("negated") or e.get("hypothetical") for e in examples):
        result["unannotated"] = unannotated_mentions(examples, pred_all)
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


def unannotated_mentions(
    examples: Sequence[Example], predicted: Sequence[Sequence[CharSpan]]
) -> dict[str, Any]:
    """How a system treats what the gold leaves unannotated on purpose: mentions of effects that
    are negated ("denies rash") or hypothetical ("may cause nausea"), given per example as
    character ranges under "negated" / "hypothetical". A mention counts as labelled when a
    predicted span overlaps it; its labels are counted."""
    out: dict[str, Any] = {}
    for kind in ("negated", "hypothetical"):
        n = labelled = 0
        labels: Counter[str] = Counter()
        for example, spans in zip(examples, predicted, strict=True):
            for start, end in example.get(kind) or ():
                n += 1
                hits = [label for s, e, label in spans if s < end and start < e]
                labelled += bool(hits)
                labels.update(set(hits))
        out[kind] = {"n": n, "n_labelled": labelled, "labels": dict(labels.most_common())}
    return out


def text_level_counts(
    gold: Sequence[Sequence[CharSpan]], predicted: Sequence[Sequence[CharSpan]]
) -> dict[str, Any]:
    """Texts with and without gold entities, and what the system answered on each: the share of
    texts with a gold entity that got no entity at all (a model biased toward answering `[]`),
    and of texts without one that got some."""
    with_gold = [bool(g) for g in gold]
    answered = [bool(p) for p in predicted]
    n_gold = sum(with_gold)
    n_empty = len(with_gold) - n_gold
    missed = sum(g and not a for g, a in zip(with_gold, answered, strict=True))
    spurious = sum(a and not g for g, a in zip(with_gold, answered, strict=True))
    return {
        "n_with_gold": n_gold,
        "n_without_gold": n_empty,
        "n_with_gold_answered_empty": missed,
        "share_with_gold_answered_empty": missed / n_gold if n_gold else None,
        "n_without_gold_answered": spurious,
        "share_without_gold_answered": spurious / n_empty if n_empty else None,
    }


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


def load_pipeline(spec: str | Path) -> Language:
    """`spacy.load(spec)` (a path or an installed package), with medllm_ner registered."""
    import spacy

    from spacy_medllm.pipeline import factory as _factory  # noqa: F401 - registers the factory

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
    from spacy_medllm.corpora.registry import corpus_info, corpus_path, load_corpus

    if trained_on:
        check_no_cross_contamination(list(trained_on), f"{corpus}:{split}")
    info = corpus_info(corpus)
    examples = load_corpus(corpus, split, path, labels=labels, limit=limit)
    scored = list(labels) if labels is not None else list(info.default_labels)
    return evaluate_examples(
        pipelines,
        examples,
        output,
        source={
            "corpus": corpus,
            "split": split,
            "corpus_path": str(corpus_path(corpus, path)),
            "licence": info.licence,
        },
        labels=scored,
        label_map=label_map,
        trained_on=trained_on,
        limit=limit,
        stem=stem or f"{corpus}-{split}",
        plot=plot,
        **options,
    )


def evaluate_examples(
    pipelines: Sequence[tuple[str, str | Path | Language]],
    examples: Sequence[Example],
    output: str | Path | None = None,
    *,
    source: Mapping[str, Any],
    labels: Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
    trained_on: Sequence[str] = (),
    limit: int | None = None,
    stem: str | None = None,
    plot: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Score each (name, pipeline) on gold examples; `source` says where they come from (the
    report's "corpus" and "split" name the tables and the default file stem)."""
    names = [name for name, _ in pipelines]
    if len(set(names)) != len(names):
        raise ValueError(f"system names must be unique: {names}")
    scored = list(labels) if labels is not None else example_labels(examples)
    where = f"{source.get('corpus')}:{source.get('split')}"
    systems = []
    for name, spec in pipelines:
        nlp = load_pipeline(spec) if isinstance(spec, (str, Path)) else spec
        logger.info("evaluate: %s on %s (%d docs)", name, where, len(examples))
        result = evaluate_pipeline(
            nlp, examples, name=name, labels=scored, label_map=label_map, **options
        )
        result["source"] = str(spec) if isinstance(spec, (str, Path)) else type(spec).__name__
        result["pipeline"] = {"lang": nlp.lang, "pipe_names": list(nlp.pipe_names)}
        systems.append(result)
    report = {
        **source,
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
