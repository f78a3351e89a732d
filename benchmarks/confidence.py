"""What does medllm_ner's per-entity confidence say about its errors, and what does a
`confidence_threshold` buy?

Runs a saved pipeline with `confidence = true` on a test split and scores each span it makes
(`span._.medllm_confidence`, the mean log-probability of the entity's answer tokens) against the
gold spans (exact characters and label, as spaCy's scorer). Reports:

- how well the score separates right from wrong spans (ROC AUC; 0.5 is chance);
- strict P / R / F1 when spans below a threshold are dropped, for thresholds that drop the
  least confident 0, 5, 10, 20 and 30% of the spans (and the F1-best threshold, chosen on the test
  set itself, so optimistic);
- the scores of the strings the model wrote that are not in the text (`not_in_text`, never spans):
  are invented strings less confident than correct ones?
- with `--seed-json` (the seed e-mails' test.json), the seed project's set-based P / R on every
  string the model wrote, at the same thresholds (issue 3's metric, which counts the gold's
  paraphrases that are not in the text).

    .venv/bin/python -m benchmarks.confidence --seed-json corpus/seed_ae_emails/test.json
    .venv/bin/python -m benchmarks.confidence --pipeline training/ade_pipeline \
        --corpus ade-corpus-v2 --output training/reports/experiments/confidence_ade

Writes <output>/confidence.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import spacy
from sklearn.metrics import roc_auc_score

import spacy_medllm  # noqa: F401 (registers the component)
from benchmarks.seed_benchmark import load_seed_json
from spacy_medllm.core.records import NOT_IN_TEXT
from spacy_medllm.corpora.docs import gold_doc
from spacy_medllm.corpora.registry import load_corpus
from spacy_medllm.evaluation.seed_metric import seed_answer_strings, set_scores
from spacy_medllm.pipeline.component import CONFIDENCE_ATTR
from spacy_medllm.util.formatting import fmt_score
from spacy_medllm.util.machine import machine_info

REPO = Path(__file__).resolve().parents[1]

DROP_SHARES = (0.0, 0.05, 0.1, 0.2, 0.3)


def prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def collect(docs, gold_docs, component: str = "medllm_ner") -> dict[str, Any]:
    """Each predicted span's (confidence, correct), the gold count, and the confidences of the
    entities rejected as not in the text."""
    spans: list[tuple[float | None, bool]] = []
    invented: list[float] = []
    emitted: list[list[tuple[str, float | None]]] = []
    n_gold = 0
    for doc, gold in zip(docs, gold_docs, strict=True):
        gold_keys = {(e.start_char, e.end_char, e.label_) for e in gold.ents}
        n_gold += len(gold_keys)
        for span in doc.ents:
            key = (span.start_char, span.end_char, span.label_)
            spans.append((span._.get(CONFIDENCE_ATTR), key in gold_keys))
        record = doc._.medllm.get(component, {})
        entries = [c for chunk in record.get("chunks", []) for c in chunk.get("confidence", [])]
        emitted.append([(c["text"], c["confidence"]) for c in entries])
        scored = {
            (c["text"], c["label"]): c["confidence"] for c in entries if c["confidence"] is not None
        }
        for rejected in record.get("rejected", []):
            value = scored.get((rejected["text"], rejected["label"]))
            if rejected["reason"] == NOT_IN_TEXT and value is not None:
                invented.append(value)
    return {"spans": spans, "n_gold": n_gold, "invented": invented, "emitted": emitted}


def scores_at(
    spans: Sequence[tuple[float | None, bool]], n_gold: int, threshold: float | None
) -> dict[str, Any]:
    """Strict scores of the spans kept by `confidence_threshold = threshold` (None keeps all;
    spans without a score are always kept)."""
    kept = [ok for c, ok in spans if threshold is None or c is None or c >= threshold]
    return {
        "threshold": threshold,
        "n_kept": len(kept),
        "tp": sum(kept),
        **prf(sum(kept), len(kept), n_gold),
    }


def threshold_rows(spans: Sequence[tuple[float | None, bool]], n_gold: int) -> list[dict]:
    """Strict scores when the least confident share of the spans is dropped."""
    scored = sorted(c for c, _ in spans if c is not None)
    rows = []
    for share in DROP_SHARES:
        cut = round(share * len(scored))
        threshold = scored[cut] if share and cut < len(scored) else None
        rows.append({"drop_share": share, **scores_at(spans, n_gold, threshold)})
    return rows


def best_threshold(spans: Sequence[tuple[float | None, bool]], n_gold: int) -> dict[str, Any]:
    """The threshold with the highest strict F1 on these very spans (optimistic); the first of
    equals, so no threshold where one would not help."""
    candidates = sorted({c for c, _ in spans if c is not None})
    rows = [scores_at(spans, n_gold, t) for t in [None, *candidates]]
    return max(rows, key=lambda row: row["f1"])


def add_seed_scores(
    rows: list[dict[str, Any]],
    emitted: Sequence[Sequence[tuple[str, float | None]]],
    seed_gold: Sequence[set[str]],
) -> None:
    """The seed metric on every emitted string (scored or not) at each row's threshold."""
    for row in rows:
        t = row["threshold"]
        predicted = [
            {text for text, c in doc if t is None or c is None or c >= t} for doc in emitted
        ]
        row["seed"] = set_scores(seed_gold, predicted).to_dict()


def summarise(
    collected: dict[str, Any], seed_gold: Sequence[set[str]] | None = None
) -> dict[str, Any]:
    spans, n_gold, invented = collected["spans"], collected["n_gold"], collected["invented"]
    right = [c for c, ok in spans if ok and c is not None]
    wrong = [c for c, ok in spans if not ok and c is not None]
    auc = None
    if right and wrong:
        auc = roc_auc_score([1] * len(right) + [0] * len(wrong), right + wrong)
    median = statistics.median
    rows = threshold_rows(spans, n_gold)
    if seed_gold is not None:
        add_seed_scores(rows, collected["emitted"], seed_gold)
    return {
        "n_gold": n_gold,
        "n_spans": len(spans),
        "n_unscored": sum(c is None for c, _ in spans),
        "roc_auc": auc,
        "median_confidence": {
            "correct_spans": median(right) if right else None,
            "wrong_spans": median(wrong) if wrong else None,
            "not_in_text": median(invented) if invented else None,
        },
        "n_not_in_text_scored": len(invented),
        "invented_below_median_correct": (
            sum(v < median(right) for v in invented) / len(invented) if invented and right else None
        ),
        "by_drop_share": rows,
        "best_on_test": best_threshold(spans, n_gold),
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    med = s["median_confidence"]
    lines = [
        f"# Per-entity confidence of medllm_ner on {report['corpus']} (test)",
        "",
        f"Pipeline `{report['pipeline']}`, {report['n_docs']} documents, {s['n_spans']} spans "
        f"({s['n_unscored']} without a score), {s['n_gold']} gold spans; "
        f"{report['machine']['cpus_available']} CPU(s), {report['seconds']:.0f} s.",
        "",
        f"- ROC AUC of the confidence for right against wrong spans: {fmt_score(s['roc_auc'])}.",
        f"- Median confidence: right spans {fmt_score(med['correct_spans'])}, wrong spans "
        f"{fmt_score(med['wrong_spans'])}, strings not in the text (never spans; "
        f"{s['n_not_in_text_scored']}) {fmt_score(med['not_in_text'])}"
        + (
            f"; {s['invented_below_median_correct']:.0%} of those score below the median right "
            "span."
            if s["invented_below_median_correct"] is not None
            else "."
        ),
        "",
    ]
    seed = "seed" in s["by_drop_share"][0]
    lines += [
        "| spans dropped | threshold | spans kept | P | R | F1 |"
        + (" Seed P / R / F1 | Seed TP/FP/FN |" if seed else ""),
        "|---|---|---|---|---|---|" + ("---|---|" if seed else ""),
    ]
    for row in s["by_drop_share"]:
        threshold = "none" if row["threshold"] is None else f"{row['threshold']:.3f}"
        line = (
            f"| least confident {row['drop_share']:.0%} | {threshold} | {row['n_kept']} | "
            f"{fmt_score(row['precision'])} | {fmt_score(row['recall'])} | {fmt_score(row['f1'])} |"
        )
        if seed:
            r = row["seed"]
            prf_text = " / ".join(fmt_score(r[k]) for k in ("precision", "recall", "f1"))
            line += f" {prf_text} | {r['tp']}/{r['fp']}/{r['fn']} |"
        lines.append(line)
    best = s["best_on_test"]
    threshold = "none" if best["threshold"] is None else f"{best['threshold']:.3f}"
    lines += [
        f"| F1-best, chosen on this test set | {threshold} | {best['n_kept']} | "
        f"{fmt_score(best['precision'])} | {fmt_score(best['recall'])} | {fmt_score(best['f1'])} |"
        + (" | |" if seed else ""),
        "",
        "Scores: exact character spans and label against the gold (spaCy's definition). A span's "
        "confidence is the mean log-probability of its answer tokens (0 = certain). A threshold "
        "is `confidence_threshold` of medllm_ner: entities below it become `low_confidence` "
        "rejections."
        + (
            " Seed: the seed project's set-based metric (exact, case-sensitive) on every string "
            "the model wrote, in the text or not, against the gold answers' strings."
            if seed
            else ""
        ),
        "",
        f"Reproduce: `{report['command']}`",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spans = [tuple(x) for x in report["spans"]]
    n_gold = report["summary"]["n_gold"]
    rows = [scores_at(spans, n_gold, t) for t in sorted({c for c, _ in spans if c is not None})]
    xs = [1 - row["n_kept"] / len(spans) for row in rows]
    ps = [row["precision"] for row in rows]
    rs = [row["recall"] for row in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(xs, ps, label="precision")
    ax.plot(xs, rs, label="recall")
    ax.set_xlabel("share of spans dropped by confidence_threshold (least confident first)")
    ax.set_xlim(0, 0.5)
    ax.set_ylabel("strict score")
    ax.set_title(f"medllm_ner on {report['corpus']} (test)")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default="training/seed_pipeline")
    parser.add_argument("--corpus", default="seed-ae-emails", help="a corpus name of load_corpus")
    parser.add_argument("--corpus-path", default=None)
    parser.add_argument("--limit", type=int, default=None, help="the first N test documents")
    parser.add_argument(
        "--seed-json",
        default=None,
        help="the seed e-mails' test.json: add the seed metric (records matched by their text)",
    )
    parser.add_argument("--output", default="training/reports/experiments/confidence_seed")
    args = parser.parse_args(argv)

    nlp = spacy.load(args.pipeline, config={"components": {"medllm_ner": {"confidence": True}}})
    labels = list(nlp.get_pipe("medllm_ner").labels)
    corpus_path = args.corpus_path
    if corpus_path is None and args.corpus == "seed-ae-emails":
        corpus_path = str(REPO / "corpus/seed_ae_emails")
    examples = load_corpus(args.corpus, "test", corpus_path, labels=labels, limit=args.limit)
    start = time.perf_counter()
    docs = list(nlp.pipe(e["text"] for e in examples))
    seconds = time.perf_counter() - start
    gold = [gold_doc(nlp.make_doc, e) for e in examples]
    collected = collect(docs, gold)
    seed_gold = None
    if args.seed_json:
        answers = {r["input"]: r["output"] for r in load_seed_json(args.seed_json)}
        missing = [e.get("id", i) for i, e in enumerate(examples) if e["text"] not in answers]
        if missing:
            raise SystemExit(f"{args.seed_json} has no record for test documents {missing[:5]}")
        seed_gold = [seed_answer_strings(answers[e["text"]]) or set() for e in examples]
    report = {
        "corpus": args.corpus,
        "pipeline": args.pipeline,
        "n_docs": len(examples),
        "seconds": seconds,
        "labels": labels,
        "machine": machine_info(),
        "command": ".venv/bin/python -m benchmarks.confidence "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "summary": summarise(collected, seed_gold),
        "spans": collected["spans"],
        "not_in_text": collected["invented"],
    }
    if seed_gold is not None:
        # the strings the model wrote, per e-mail (MIT data): to recombine runs on the seed metric
        report["emitted"] = collected["emitted"]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "confidence.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf8")
    (out / "confidence.md").write_text(markdown(report), encoding="utf8")
    plot(report, out / "confidence.png")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
