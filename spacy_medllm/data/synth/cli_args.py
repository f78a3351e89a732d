"""TEMPORARY"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spacy_medllm.data.scrape import read_facts
from spacy_medllm.data.synth.llm import generate_with_llm, plan_llm_jobs
from spacy_medllm.data.synth.offline import compose_offline
from spacy_medllm.data.synth.records import KINDS, split_texts


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spacy_medllm.data.synth.offline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("offline", "llm"):
        p = sub.add_parser(name)
        p.add_argument("--facts", required=True, help="JSONL of DrugFacts (scrape's output).")
        p.add_argument("--output", required=True, help="JSONL to append the texts to.")
        p.add_argument("--n-en", type=int, default=600)
        p.add_argument("--n-et", type=int, default=400)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--kinds", default=",".join(KINDS))
        p.add_argument("--summary", help="JSON file for the run's summary.")
    split = sub.add_parser("split", help="split a texts JSONL in two by a hash of the ids")
    split.add_argument("--input", required=True)
    split.add_argument("--first", required=True, help="JSONL for the FRACTION side")
    split.add_argument("--second", required=True, help="JSONL for the rest")
    split.add_argument("--fraction", type=float, default=0.5)
    split.add_argument("--lang", default=None, help="only the texts of this language")
    llm = sub.choices["llm"]
    llm.add_argument("--model", default="smollm2-135m-instruct")
    llm.add_argument("--adapter", default=None)
    llm.add_argument("--base-url", default=None, help="An OpenAI-compatible server instead.")
    llm.add_argument("--api-key-env", default="OPENAI_API_KEY")
    llm.add_argument("--max-new-tokens", type=int, default=256)
    llm.add_argument("--temperature", type=float, default=0.7)
    llm.add_argument("--batch-size", type=int, default=8)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.command == "split":
        try:
            result = split_texts(
                args.input, args.first, args.second, fraction=args.fraction, lang=args.lang
            )
        except (OSError, ValueError) as error:
            raise SystemExit(f"synth split: {error}") from error
        print(json.dumps(result, ensure_ascii=False))
        return 0
    facts = read_facts(args.facts)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"Unknown text kinds {sorted(unknown)}; choose from {KINDS}")
    counts = {lang: n for lang, n in (("en", args.n_en), ("et", args.n_et)) if n > 0}
    if args.command == "offline":
        summary = compose_offline(facts, args.output, counts, seed=args.seed, kinds=kinds)
    else:
        if args.base_url:
            from spacy_medllm.generators.openai_compat import OpenAIGenerator

            generator: Any = OpenAIGenerator(
                model=args.model,
                base_url=args.base_url,
                api_key_env=args.api_key_env,
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
            )
        else:
            from spacy_medllm.generators.hf.generator import HFGenerator

            generator = HFGenerator(
                model=args.model,
                adapter=args.adapter,
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
            )
        jobs = plan_llm_jobs(facts, counts, seed=args.seed, kinds=kinds)
        summary = generate_with_llm(jobs, generator, args.output)
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print(json.dumps(summary, ensure_ascii=False)[:2000])
    short = [lang for lang, s in summary.get("langs", {}).items() if s.get("shortfall")]
    return 1 if short else 0
