"""TEMPORARY"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from spacy_medllm.corpora.docs import convert_corpus
from spacy_medllm.corpora.registry import CORPORA, corpus_stats


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spacy_medllm.corpora.corpora",
        description="Read the public medical NER corpora: list, stats, convert to .spacy/.jsonl.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the registered corpora")
    for command in ("stats", "convert"):
        p = sub.add_parser(command)
        p.add_argument("name", choices=sorted(CORPORA))
        p.add_argument("--path", type=Path, default=None, help="the corpus folder (or file)")
        p.add_argument("--labels", default=None, help="comma-separated labels to keep")
        if command == "convert":
            p.add_argument("--output", type=Path, required=True)
            p.add_argument("--lang", default=None, help="spacy.blank language for the DocBins")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "list":
        for name, info in CORPORA.items():
            sys.stdout.write(f"{name}: splits {', '.join(info.splits)}; labels {info.labels}\n")
        return 0
    labels = args.labels.split(",") if args.labels else None
    if args.command == "stats":
        stats = corpus_stats(args.name, args.path, labels=labels)
    else:
        stats = convert_corpus(args.name, args.output, args.path, labels=labels, lang=args.lang)
    sys.stdout.write(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return 0
