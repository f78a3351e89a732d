"""Choose `empty_answer_threshold` on held-out gold data.

A model fine-tuned on data with another share of empty texts than the data it reads answers `[]`
too often or too rarely. With `HFGenerator.empty_answer_threshold` the answer is `[]` exactly
when the model's probability of the empty answer is at least the threshold. Which threshold is
best depends on the model and the data, so it is measured on dev examples.

`calibrate_empty_threshold` needs two runs of the pipeline whatever the number of candidates:
one greedy run that records each piece's probability of the empty answer, and one run with every
empty answer vetoed, only on the pieces answered `[]` (recording too). At a threshold t a piece
is then empty when its probability is at least t, and otherwise keeps its greedy answer (or the
vetoed one where the greedy answer was `[]`): the docs of every candidate are composed from the
two runs and scored. The recorded probability is the larger of the answer's two chances to
become `[]` ("[]" at its first token, or "]" after a "[" alone), so a piece is empty at a threshold
exactly when the pipeline would answer it `[]`; a last run at the chosen threshold (`verify`)
scores it as the pipeline really runs. The chosen threshold can be written into the pipeline's
config.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spacy.language import Language
from spacy.tokens import Doc

from spacy_medllm.core.examples import Example
from spacy_medllm.evaluation.evaluate import (
    initialize_generators,
    make_doc_with_ents,
    score_docs,
)
from spacy_medllm.pipeline.component import get_record
from spacy_medllm.util.machine import machine_info

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS: tuple[float | None, ...] = (
    None,
    *(round(0.05 * k, 2) for k in range(1, 20)),
    0.97,
    0.99,
)


def vetoing_generators(nlp: Language) -> list[tuple[str, Any]]:
    """The (pipe name, generator) pairs of `nlp` whose generator has the veto."""
    found = [
        (name, pipe.generator)
        for name, pipe in nlp.pipeline
        if hasattr(getattr(pipe, "generator", None), "empty_answer_threshold")
    ]
    if not found:
        raise ValueError(
            "the pipeline has no component with a transformers generator "
            "(medllm_ner with medllm.HFGenerator.v1 or medllm.DefaultGenerator.v1): "
            "empty_answer_threshold is a setting of local decoding"
        )
    return found


def calibrate_empty_threshold(
    nlp: Language,
    examples: Sequence[Example],
    thresholds: Sequence[float | None] = DEFAULT_THRESHOLDS,
    *,
    labels: Sequence[str] | None = None,
    progress: bool = True,
    verify: bool = True,
) -> dict[str, Any]:
    """Score `nlp` on `examples` at each threshold (None: greedy); returns a report with one
    row per threshold and the best one ("best": highest strict micro F1; on a tie the earlier
    candidate in `thresholds` order). `verify`: run the pipeline once more at the best threshold
    and report that run's figures ("verified"). The pipeline's own settings are restored."""
    if not examples:
        raise ValueError("calibration needs at least one gold example")
    if not thresholds:
        raise ValueError("give at least one threshold")
    for threshold in thresholds:
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise ValueError(f"thresholds must be in (0, 1] or None, got {threshold}")
    generators = [g for _, g in vetoing_generators(nlp)]
    before = [(g.empty_answer_threshold, g.record_empty_probability) for g in generators]
    examples = list(examples)
    texts = [e["text"] for e in examples]
    start = time.perf_counter()
    try:
        initialize_generators(nlp)
        for generator in generators:
            generator.empty_answer_threshold = None
            generator.record_empty_probability = True
            generator.empty_probabilities.clear()
        plain = _run(nlp, texts, "greedy, recording", progress)
        for generator in generators:
            generator.empty_answer_threshold = 1.0
        # Still recording: a piece answered "[]" at its first token decides again after a "["
        # alone when "[]" is vetoed; the larger probability is kept (decoding_steps.empty_decision).
        rerun = [i for i, doc in enumerate(plain) if _answered_empty(nlp, doc)]
        again = _run(nlp, [texts[i] for i in rerun], "vetoed, recording", progress)
        vetoed = dict(zip(rerun, again, strict=True))
        probabilities: dict[str, float] = {}
        for generator in generators:
            probabilities.update(generator.empty_probabilities)
            generator.record_empty_probability = False
        rows = []
        for threshold in thresholds:
            docs = [
                _compose(nlp, doc, vetoed.get(i), probabilities, threshold)
                for i, doc in enumerate(plain)
            ]
            result = score_docs(nlp, examples, docs, labels=labels, include_docs=False)
            rows.append(_row(threshold, result))
            logger.info("calibrate: threshold %s: F1 %.3f", threshold, rows[-1]["f1"])
        best = max(range(len(rows)), key=lambda i: (rows[i]["f1"], -i))
        report: dict[str, Any] = {
            "n_docs": len(examples),
            "n_with_gold": rows[0]["texts"]["n_with_gold"],
            "n_rerun": len(rerun),
            "n_probabilities": len(probabilities),
            "components": [name for name, _ in vetoing_generators(nlp)],
            "rows": rows,
            "best": rows[best]["threshold"],
            "best_f1": rows[best]["f1"],
            "verified": None,
            "seconds": None,
            "machine": machine_info(),
        }
        if verify:
            for generator in generators:
                generator.empty_answer_threshold = report["best"]
            docs = _run(nlp, texts, f"threshold={report['best']}", progress)
            result = score_docs(nlp, examples, docs, labels=labels, include_docs=False)
            report["verified"] = _row(report["best"], result)
        report["seconds"] = time.perf_counter() - start
    finally:
        for generator, (threshold, recording) in zip(generators, before, strict=True):
            generator.empty_answer_threshold = threshold
            generator.record_empty_probability = recording
    return report


def _row(threshold: float | None, result: dict[str, Any]) -> dict[str, Any]:
    micro = result["strict"]["micro"]
    return {
        "threshold": threshold,
        "precision": micro["precision"],
        "recall": micro["recall"],
        "f1": micro["f1"],
        "tp": micro["tp"],
        "fp": micro["fp"],
        "fn": micro["fn"],
        "texts": result["texts"],
    }


def _compose(
    nlp: Language,
    plain: Doc,
    vetoed: Doc | None,
    probabilities: dict[str, float],
    threshold: float | None,
) -> Doc:
    """The doc the pipeline gives at `threshold`, piece by piece: no entities where the piece's
    probability of the empty answer is at least the threshold, else the greedy answer's (the
    vetoed run's where the greedy answer was `[]`)."""
    if threshold is None:
        return plain
    spans: list[tuple[int, int, str]] = []
    text = plain.text
    for name, _ in vetoing_generators(nlp):
        record = get_record(plain, name) or {}
        for chunk in record.get("chunks", ()):
            start, end = chunk["start"], chunk["end"]
            p_empty = probabilities.get(text[start:end])
            if p_empty is not None and p_empty >= threshold:
                continue
            source = vetoed if chunk.get("n_emitted", 0) == 0 and vetoed is not None else plain
            spans.extend(
                (e.start_char, e.end_char, e.label_)
                for e in source.ents
                if start <= e.start_char and e.end_char <= end
            )
    return make_doc_with_ents(nlp, text, spans)


def _run(nlp: Language, texts: list[str], desc: str, progress: bool) -> list[Doc]:
    from tqdm import tqdm

    return list(tqdm(nlp.pipe(texts), total=len(texts), desc=desc, disable=not progress))


def _answered_empty(nlp: Language, doc: Doc) -> bool:
    """Whether a medllm_ner component answered `[]` for a piece of `doc` (what a veto changes)."""
    for name, _ in vetoing_generators(nlp):
        record = get_record(doc, name) or {}
        if any(chunk.get("n_emitted", 0) == 0 for chunk in record.get("chunks", ())):
            return True
    return False


def apply_threshold(nlp: Language, threshold: float | None) -> None:
    """Set the threshold on every vetoing generator of `nlp` and in its config (config.cfg is
    what `spacy.load` builds the generator from, so `nlp.to_disk` keeps it)."""
    for name, generator in vetoing_generators(nlp):
        generator.empty_answer_threshold = threshold
        nlp.config["components"][name]["generator"]["empty_answer_threshold"] = threshold


def calibration_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table, the best row marked."""
    lines = [
        f"Empty-answer threshold on {report['n_docs']} texts "
        f"({report['n_with_gold']} with a gold entity); best: {report['best']}",
        "",
        "| threshold | P | R | F1 | gold texts answered [] | other texts answered |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        mark = " **best**" if row["threshold"] == report["best"] else ""
        texts = row["texts"]
        lines.append(
            f"| {row['threshold']}{mark} | {row['precision']:.3f} | {row['recall']:.3f} | "
            f"{row['f1']:.3f} | {texts['n_with_gold_answered_empty']} | "
            f"{texts['n_without_gold_answered']} |"
        )
    verified = report.get("verified")
    if verified:
        lines += [
            "",
            f"Run at {verified['threshold']}: P {verified['precision']:.3f}, R "
            f"{verified['recall']:.3f}, F1 {verified['f1']:.3f} (the table composes the rows "
            "from a greedy run and a vetoed one; this is the pipeline run at the threshold).",
        ]
    return "\n".join(lines) + "\n"


def write_calibration(report: dict[str, Any], output: str | Path) -> Path:
    """Write the report as JSON (and Markdown beside it); returns the JSON path."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(calibration_markdown(report), encoding="utf-8")
    return path
