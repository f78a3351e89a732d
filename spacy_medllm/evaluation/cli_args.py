"""TEMPORARY"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from spacy_medllm.evaluation.evaluate import evaluate_corpus
from spacy_medllm.evaluation.plots import plot_f1_vs_speed
from spacy_medllm.evaluation.tables import combine_results, markdown_report
from spacy_medllm.util.formatting import (
    name_value_pairs,
)


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
