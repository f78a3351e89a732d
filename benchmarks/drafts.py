"""Benchmark draft tokens in medllm_ner's decoding: documents/s, decoding steps, drafts proposed
and kept, and whether the answers are those of one token per step.

One pipeline (one model load) per corpus; its generator's `jump_forward` / `draft_tokens` are
switched between settings, each timed over the same documents after a warm-up document. The
baseline setting ("none": transformers' `generate`, one token per step) gives the reference
answers; every other setting's answers are compared with them document by document.

    nice -n 19 .venv/bin/python -m benchmarks.drafts --adapter training/ade_lora/adapter \\
        --corpora ade-corpus-v2 --limit 16 --output training/reports/experiments/drafts/ade

Writes OUTPUT.json and OUTPUT.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.speed import WARM_UP_TEXT, adapter_settings
from spacy_medllm.corpora.registry import load_corpus
from spacy_medllm.pipeline.assemble import build_pipeline
from spacy_medllm.util.formatting import fmt_rate, markdown_table
from spacy_medllm.util.machine import machine_info

REPO = Path(__file__).resolve().parents[1]

# name: (jump_forward, draft_tokens)
SETTINGS = {
    "none": (False, 0),
    "forced": (True, 0),
    "forced + document 4": (True, 4),
    "forced + document 8": (True, 8),
}


def run(args: argparse.Namespace) -> dict:
    labels = list(adapter_settings(args.adapter)["labels"])
    report = {
        "adapter": args.adapter,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "constrained": args.constrained,
        "machine": machine_info(),
        "corpora": {},
    }
    for corpus in args.corpora:
        examples = load_corpus(corpus, "test", None, labels=labels, limit=args.limit)
        texts = [example["text"] for example in examples]
        nlp = build_pipeline(
            adapter=args.adapter,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            constrained=args.constrained,
        )
        generator = nlp.get_pipe("medllm_ner").generator
        generator.initialize()
        reference = None
        rows = {}
        for name in args.settings:
            generator.jump_forward, generator.draft_tokens = SETTINGS[name]
            nlp(WARM_UP_TEXT)
            before = dict(generator.stats)
            start = time.perf_counter()
            docs = list(nlp.pipe(texts))
            seconds = time.perf_counter() - start
            stats = {key: generator.stats[key] - before[key] for key in before}
            answers = [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in docs]
            if reference is None:
                reference = answers
            rows[name] = {
                "jump_forward": generator.jump_forward,
                "draft_tokens": generator.draft_tokens,
                "seconds": seconds,
                "docs_per_s": len(texts) / seconds,
                "answer_tokens": stats["generated_tokens"],
                "decode_steps": stats["decode_steps"],
                "drafts_proposed": stats["draft_tokens"],
                "drafts_kept": stats["accepted_draft_tokens"],
                "prompt_seconds": stats["prompt_seconds"],
                "step_seconds": stats["step_seconds"],
                "step_tokens": stats["step_tokens"],
                "same_entities_as_none": sum(
                    a == b for a, b in zip(answers, reference, strict=True)
                ),
                "n_docs": len(texts),
            }
            print(f"{corpus} {name}: {rows[name]}", flush=True)
        report["corpora"][corpus] = rows
    return report


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "# Draft tokens in medllm_ner's decoding",
        "",
        f"Adapter `{report['adapter']}`, constrained = {report['constrained']!r}, batch size "
        f"{report['batch_size']}, max_new_tokens {report['max_new_tokens']}, the first "
        f"{report['limit']} test documents. Machine: {machine.get('cpus_available')} CPU(s), "
        f"torch {machine.get('torch')} with {machine.get('torch_threads')} thread(s).",
        "",
    ]
    header = [
        "corpus",
        "setting",
        "docs/s",
        "x none",
        "decode steps",
        "answer tokens",
        "drafts proposed",
        "drafts kept",
        "tokens fed to steps",
        "prompt / step seconds",
        "docs with the same entities as none",
    ]
    table = []
    for corpus, rows in report["corpora"].items():
        base = rows.get("none")
        for name, r in rows.items():
            table.append(
                [
                    corpus,
                    name,
                    fmt_rate(r["docs_per_s"]),
                    f"{r['docs_per_s'] / base['docs_per_s']:.2f}" if base else "",
                    str(r["decode_steps"]),
                    str(r["answer_tokens"]),
                    str(r["drafts_proposed"]),
                    str(r["drafts_kept"]),
                    str(r["step_tokens"]) if r["drafts_proposed"] or r["jump_forward"] else "",
                    f"{r['prompt_seconds']:.1f} / {r['step_seconds']:.1f}"
                    if r["step_tokens"]
                    else "",
                    f"{r['same_entities_as_none']}/{r['n_docs']}",
                ]
            )
    lines += [
        markdown_table(header, table),
        "",
        "none: transformers' `generate`, one token per step. forced: the tokens the schema forces "
        "(`jump_forward`). document N: up to N tokens of the document's continuation of the "
        "entity being written (`draft_tokens`). A draft is kept only where it is the model's own "
        "greedy choice. Timings: wall time of `nlp.pipe`, model loaded and a warm-up document "
        "run first. tokens fed to steps: rows x width of the decoding steps' inputs (padding "
        "included); prompt / step seconds: forward passes reading the prompts and decoding "
        "(draft loop only; `generate` does not report them).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--corpora", nargs="+", default=["seed-ae-emails", "ade-corpus-v2"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--constrained", default="off", choices=["off", "schema", "grounded"])
    parser.add_argument("--output", default="training/reports/experiments/drafts/drafts")
    args = parser.parse_args(argv)
    if args.settings[0] != "none":
        args.settings = ["none", *[s for s in args.settings if s != "none"]]
    report = run(args)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    out.with_suffix(".md").write_text(markdown(report), encoding="utf8")
    print(out.with_suffix(".md").read_text(encoding="utf8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
