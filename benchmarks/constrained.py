"""Benchmark generation settings of medllm_ner on a test split (the seed e-mails by default, or
`--corpus ade-corpus-v2`): stopping at the end of the JSON answer, and constrained decoding
("off" / "schema" / "grounded").

For each setting: strict F1 (spaCy's exact-span scorer), parseable answers, emitted entities found
in the text, answer tokens kept, decoding steps run, documents/s. Writes
training/reports/constrained.json and .md.

    nice -n 19 .venv/bin/python -m benchmarks.constrained --limit 15      # a few minutes
    nice -n 19 .venv/bin/python -m benchmarks.constrained                 # all 59 e-mails

`--settings` runs some of the settings; results of earlier calls with the same setup are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from spacy_medllm.core.records import NOT_IN_TEXT
from spacy_medllm.corpora.docs import gold_doc
from spacy_medllm.corpora.registry import load_corpus
from spacy_medllm.evaluation.metrics import spacy_scores
from spacy_medllm.pipeline.assemble import build_pipeline
from spacy_medllm.util.formatting import fmt_pct, fmt_rate, fmt_score
from spacy_medllm.util.machine import machine_info

REPO = Path(__file__).resolve().parents[1]

# name: (constrained, stop_at_json_end, merge_adapter, prefix_cache, dtype, float32_logits)
SETTINGS = {
    "off, LoRA not merged": ("off", True, False, True, "auto", True),
    "off, no prefix cache": ("off", True, True, False, "auto", True),
    "off, no early stop": ("off", False, True, True, "auto", True),
    "off, float32": ("off", True, True, True, "float32", True),
    "off": ("off", True, True, True, "auto", True),
    "schema": ("schema", True, True, True, "auto", True),
    "grounded": ("grounded", True, True, True, "auto", True),
    "grounded, float32": ("grounded", True, True, True, "float32", True),
    # bfloat16 logits (float32_logits = false): what the float32 output head is for
    "off, bfloat16 logits": ("off", True, True, True, "auto", False),
    "grounded, bfloat16 logits": ("grounded", True, True, True, "auto", False),
}


def run_setting(
    nlp,
    examples,
    constrained: str,
    stop: bool,
    merge: bool = True,
    prefix: bool = True,
    dtype: str = "auto",
    float32_logits: bool = True,
) -> dict:
    component = nlp.get_pipe("medllm_ner")
    generator = component.generator
    generator.constrained = constrained
    generator.stop_at_json_end = stop
    generator.prefix_cache = prefix
    loaded_as = (generator.merge_adapter, generator.dtype, generator.float32_logits)
    if loaded_as != (merge, dtype, float32_logits):
        generator.merge_adapter, generator.dtype = merge, dtype
        generator.float32_logits = float32_logits
        generator._reset()  # the adapter is merged (or not) and cast when the model loads
    generator.initialize()
    if constrained != "off":
        generator.token_constraint()  # the vocabulary trie is built once, outside the clock
    stats_before = dict(generator.stats)
    start = time.perf_counter()
    docs = list(nlp.pipe([e["text"] for e in examples]))
    seconds = time.perf_counter() - start
    stats = {k: generator.stats[k] - stats_before[k] for k in stats_before}
    described = generator.describe()
    gold = [gold_doc(nlp.make_doc, e) for e in examples]
    scores = spacy_scores(gold, docs)
    chunks = parse_errors = emitted = not_in_text = 0
    for doc in docs:
        record = doc._.medllm["medllm_ner"]
        chunks += len(record["chunks"])
        parse_errors += len(record["parse_errors"])
        emitted += record["n_emitted"]
        not_in_text += sum(r["reason"] == NOT_IN_TEXT for r in record["rejected"])
    return {
        "constrained": constrained,
        "stop_at_json_end": stop,
        "merge_adapter": merge,
        "dtype": described["dtype"],
        "logits": described.get("logits", described["dtype"]),
        "f1": scores["ents_f"],
        "precision": scores["ents_p"],
        "recall": scores["ents_r"],
        "parseable": 1 - parse_errors / chunks if chunks else None,
        "emitted": emitted,
        "in_text": 1 - not_in_text / emitted if emitted else None,
        "answer_tokens": stats["generated_tokens"],
        "decode_steps": stats["decode_steps"],
        "seconds": seconds,
        "docs_per_s": len(docs) / seconds,
    }


def dtype_cell(result: dict) -> str:
    """The weights' dtype, and the logits' where they are not float32."""
    dtype = result.get("dtype", "float32")
    logits = result.get("logits", "float32" if dtype == "float32" else None)
    return dtype if logits in (None, "float32") else f"{dtype}, {logits} logits"


def markdown(report: dict) -> str:
    lines = [
        f"# Constrained decoding and early stopping on {report.get('corpus', 'seed-ae-emails')} "
        "(test)",
        "",
        f"{report['n_docs']} documents, model {report['model']} + adapter {report['adapter']}, "
        f"batch size {report['batch_size']}, max_new_tokens {report['max_new_tokens']}, "
        f"{report['machine']['cpus_available']} CPU(s), torch threads "
        f"{report['machine']['torch_threads']}.",
        "",
        "| setting | dtype | F1 | P | R | parseable | entities in text | answer tokens "
        "| decode steps | docs/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["settings"].items():
        lines.append(
            f"| {name} | {dtype_cell(r)} | {fmt_score(r['f1'])} | "
            f"{fmt_score(r['precision'])} | {fmt_score(r['recall'])} | "
            f"{fmt_pct(r['parseable'])} | {fmt_pct(r['in_text'])} "
            f"({r['emitted']}) | {r['answer_tokens']} | {r['decode_steps']} | "
            f"{fmt_rate(r['docs_per_s'])} |"
        )
    lines += [
        "",
        "F1/P/R: exact character spans (spaCy scorer). parseable: answers with a readable JSON "
        "answer. entities in text: emitted entities found in the document (of how many). "
        "answer tokens: tokens kept in the responses; decode steps: rounds of next-token choices "
        "summed over batches (fewer than answer tokens with draft tokens). dtype: the weights' "
        '("auto" is bfloat16 on a CPU with native bfloat16, with the logits computed in float32 '
        "by a float32 output head unless the row says otherwise; runs before it was recorded: "
        "float32).",
        "",
        f"Reproduce: `{report['command']}`",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", default=str(REPO / "training/seed_lora/adapter"))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--corpus", default="seed-ae-emails", help="a corpus name of load_corpus")
    parser.add_argument(
        "--corpus-path", default=None, help="its folder (default: the corpus's own location)"
    )
    parser.add_argument("--limit", type=int, default=None, help="the first N test e-mails")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--output", default=str(REPO / "training/reports/constrained"))
    args = parser.parse_args(argv)

    nlp = build_pipeline(
        model=args.model,
        adapter=args.adapter,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    labels = list(nlp.get_pipe("medllm_ner").labels)
    corpus_path = args.corpus_path
    if corpus_path is None and args.corpus == "seed-ae-emails":
        corpus_path = str(REPO / "corpus/seed_ae_emails")
    examples = load_corpus(args.corpus, "test", corpus_path, labels=labels)
    examples = examples[: args.limit] if args.limit else examples
    report = {
        "n_docs": len(examples),
        "corpus": args.corpus,
        "model": args.model,
        "adapter": Path(args.adapter).name,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "labels": labels,
        "machine": machine_info(),
        "command": "nice -n 19 .venv/bin/python -m benchmarks.constrained "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {},
    }
    out = Path(args.output)
    # Settings can be run one call at a time: results of the same run setup are kept.
    same_setup = ("n_docs", "corpus", "model", "adapter", "batch_size", "max_new_tokens", "labels")
    if out.with_suffix(".json").is_file():
        earlier = json.loads(out.with_suffix(".json").read_text(encoding="utf8"))
        if all(earlier.get(k) == report[k] for k in same_setup):
            report["settings"] = {
                k: v for k, v in earlier.get("settings", {}).items() if k not in args.settings
            }
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in tqdm(args.settings, desc="settings"):
        constrained, stop, merge, prefix, dtype, float32_logits = SETTINGS[name]
        report["settings"][name] = run_setting(
            nlp, examples, constrained, stop, merge, prefix, dtype, float32_logits
        )
        print(name, json.dumps(report["settings"][name]), flush=True)
        # Written after each setting, so an interrupted run keeps what it measured.
        report["settings"] = {k: report["settings"][k] for k in SETTINGS if k in report["settings"]}
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
        out.with_suffix(".md").write_text(markdown(report), encoding="utf8")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
