"""Choose `empty_answer_threshold` on held-out gold data.

A model fine-tuned on data with many empty texts learns to answer `[]` more often than it
should. The generator's veto (`HFGenerator.empty_answer_threshold`) lets it answer `[]` only when
its probability of the empty list is at least the threshold. Which threshold is best depends on
the model and the data, so it is measured: `calibrate_empty_threshold` scores the pipeline on the
dev examples at each candidate: strict F1, precision, recall and how many gold texts were answered
empty. The veto only changes answers that would otherwise be `[]`, so after one full run without
it, each candidate reruns only the texts with a piece answered `[]`; the rest keep their docs.
The best candidate (ties: the earlier, milder one) can be written into the
pipeline, where it is part of `generator.json` and of the response-cache key.
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
from spacy_medllm.evaluation.evaluate import initialize_generators, score_docs
from spacy_medllm.pipeline.component import get_record
from spacy_medllm.util.machine import machine_info

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS: tuple[float | None, ...] = (None, 0.5, 0.7, 0.8, 0.9, 0.95)


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
) -> dict[str, Any]:
    """Score `nlp` on `examples` at each threshold (None: no veto); returns a report with one
    row per threshold and the best one ("best": highest strict micro F1; on a tie the earlier
    candidate in `thresholds` order, so list the milder settings first). The pipeline's
    thresholds are restored afterwards."""
    if not examples:
        raise ValueError("calibration needs at least one gold example")
    if not thresholds:
        raise ValueError("give at least one threshold")
    for threshold in thresholds:
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise ValueError(f"thresholds must be in (0, 1] or None, got {threshold}")
    generators = vetoing_generators(nlp)
    before = [g.empty_answer_threshold for _, g in generators]
    examples = list(examples)
    texts = [e["text"] for e in examples]
    rows = []
    plain: list[Doc] | None = None
    try:
        initialize_generators(nlp)
        for threshold in thresholds:
            for _, generator in generators:
                generator.empty_answer_threshold = threshold
            vetoed_before = sum(g.stats.get("empty_answers_vetoed", 0) for _, g in generators)
            start = time.perf_counter()
            if threshold is None or plain is None:
                docs = _run(nlp, texts, f"threshold={threshold}", progress)
            else:
                rerun = [i for i, doc in enumerate(plain) if _answered_empty(nlp, doc)]
                docs = list(plain)
                again = _run(nlp, [texts[i] for i in rerun], f"threshold={threshold}", progress)
                for i, doc in zip(rerun, again, strict=True):
                    docs[i] = doc
            seconds = time.perf_counter() - start
            if threshold is None and plain is None:
                plain = docs
            vetoed = sum(g.stats.get("empty_answers_vetoed", 0) for _, g in generators)
            result = score_docs(nlp, examples, docs, labels=labels, include_docs=False)
            micro = result["strict"]["micro"]
            rows.append(
                {
                    "threshold": threshold,
                    "precision": micro["precision"],
                    "recall": micro["recall"],
                    "f1": micro["f1"],
                    "tp": micro["tp"],
                    "fp": micro["fp"],
                    "fn": micro["fn"],
                    "texts": result["texts"],
                    "vetoed": vetoed - vetoed_before,
                    "seconds": seconds,
                }
            )
            logger.info("calibrate: threshold %s: F1 %.3f", threshold, micro["f1"])
    finally:
        for (_, generator), value in zip(generators, before, strict=True):
            generator.empty_answer_threshold = value
    best = max(range(len(rows)), key=lambda i: (rows[i]["f1"], -i))
    return {
        "n_docs": len(examples),
        "n_with_gold": rows[0]["texts"]["n_with_gold"],
        "components": [name for name, _ in generators],
        "rows": rows,
        "best": rows[best]["threshold"],
        "best_f1": rows[best]["f1"],
        "machine": machine_info(),
    }


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
        "| threshold | P | R | F1 | gold texts answered [] | vetoed |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        mark = " **best**" if row["threshold"] == report["best"] else ""
        missed = row["texts"]["n_with_gold_answered_empty"]
        lines.append(
            f"| {row['threshold']}{mark} | {row['precision']:.3f} | {row['recall']:.3f} | "
            f"{row['f1']:.3f} | {missed} | {row['vetoed']} |"
        )
    return "\n".join(lines) + "\n"


def write_calibration(report: dict[str, Any], output: str | Path) -> Path:
    """Write the report as JSON (and Markdown beside it); returns the JSON path."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(calibration_markdown(report), encoding="utf-8")
    return path
