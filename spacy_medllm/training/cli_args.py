"""TEMPORARY argparse"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spacy_medllm.core.examples import (
    Example,
    read_examples,
)
from spacy_medllm.core.prompts import PromptTemplate
from spacy_medllm.training.config import SCHEDULERS, FinetuneConfig
from spacy_medllm.training.examples import load_training_examples
from spacy_medllm.training.trainer import finetune

logger = logging.getLogger("spacy_medllm")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spacy_medllm.training.finetune",
        description="Fine-tune a LoRA adapter for medllm_ner. Data: .jsonl (text + entities with "
        "start/end/label), .spacy (DocBin) or .json (the seed's input/output records).",
    )
    parser.add_argument("--train", nargs="+", required=True, help="training data file(s)")
    parser.add_argument("--output", required=True, help="output folder (adapter/, checkpoints/)")
    parser.add_argument("--eval", nargs="*", default=None, help="evaluation data file(s)")
    parser.add_argument(
        "--exclude", nargs="*", default=None, help="drop training texts that occur in these files"
    )
    parser.add_argument("--config", help="a JSON file of FinetuneConfig settings")
    parser.add_argument("--base-model", help="packaged alias, local folder or hub id")
    parser.add_argument("--labels", help="comma-separated labels (default: those in the data)")
    parser.add_argument("--label-definitions", help="a JSON file {label: definition}")
    parser.add_argument("--instruction-file", help="a text file with the prompt's instruction")
    parser.add_argument("--lora-r", type=int)
    parser.add_argument("--lora-alpha", type=int)
    parser.add_argument("--lora-dropout", type=float)
    parser.add_argument("--target-modules", help="'all-linear' or comma-separated module names")
    parser.add_argument(
        "--lora-top-layers", type=int, help="put LoRA only in the top N decoder layers"
    )
    parser.add_argument(
        "--dora",
        action=argparse.BooleanOptionalAction,
        default=None,
        dest="use_dora",
        help="weight-decomposed LoRA (DoRA)",
    )
    parser.add_argument(
        "--rslora",
        action=argparse.BooleanOptionalAction,
        default=None,
        dest="use_rslora",
        help="rank-stabilised scaling, lora_alpha / sqrt(r)",
    )
    parser.add_argument("--learning-rate", "--lr", type=float, dest="learning_rate")
    parser.add_argument("--epochs", type=float, dest="num_train_epochs")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int, dest="per_device_train_batch_size")
    parser.add_argument("--grad-accum", type=int, dest="gradient_accumulation_steps")
    parser.add_argument("--warmup-ratio", type=float)
    parser.add_argument("--scheduler", choices=SCHEDULERS, dest="lr_scheduler_type")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--max-length", type=int)
    parser.add_argument(
        "--max-chunk-tokens",
        type=int,
        help="train on sentence-aligned pieces of at most N text tokens, as medllm_ner with "
        "max_chunk_tokens = N reads documents (saved as the pipeline's default); 0: whole texts",
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--save-steps", type=int)
    parser.add_argument("--logging-steps", type=int)
    parser.add_argument("--eval-steps", type=int)
    parser.add_argument("--num-threads", type=int)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--cache-dir")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None
    )
    parser.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--share-prefix", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--no-dedupe", action="store_true", help="keep repeated training texts")
    parser.add_argument("--no-resume", action="store_true", help="delete old checkpoints first")
    return parser.parse_args(argv)


_DIRECT = (
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "use_dora",
    "use_rslora",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "warmup_ratio",
    "lr_scheduler_type",
    "weight_decay",
    "max_length",
    "max_chunk_tokens",
    "seed",
    "save_steps",
    "logging_steps",
    "eval_steps",
    "num_threads",
    "device",
    "cache_dir",
    "bf16",
    "load_in_4bit",
    "gradient_checkpointing",
    "group_by_length",
    "share_prefix",
)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    settings: dict[str, Any] = {}
    if args.config:
        settings.update(json.loads(Path(args.config).read_text(encoding="utf8")))
    settings["output_dir"] = args.output
    if args.base_model:
        settings["base_model"] = args.base_model
    if args.labels:
        settings["labels"] = [label.strip() for label in args.labels.split(",") if label.strip()]
    if args.label_definitions:
        settings["label_definitions"] = json.loads(
            Path(args.label_definitions).read_text(encoding="utf8")
        )
    if args.instruction_file:
        template = PromptTemplate.from_dict(
            settings.get("prompt_template") or PromptTemplate().to_dict()
        )
        instruction = Path(args.instruction_file).read_text(encoding="utf8").strip()
        settings["prompt_template"] = {**template.to_dict(), "instruction": instruction}
    if args.target_modules:
        modules = args.target_modules
        settings["target_modules"] = (
            modules if modules == "all-linear" else [m.strip() for m in modules.split(",")]
        )
    if args.lora_top_layers:
        settings["lora_layers"] = list(range(-args.lora_top_layers, 0))
    for name in _DIRECT:
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if settings.get("max_chunk_tokens") == 0:
        settings["max_chunk_tokens"] = None  # whole texts
    return FinetuneConfig.from_dict(settings)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    args = _parse_args(argv)
    config = config_from_args(args)
    train = load_training_examples(args.train, args.exclude or (), dedupe=not args.no_dedupe)
    evaluation: list[Example] | None = None
    if args.eval:
        evaluation = [e for path in args.eval for e in read_examples(path)]
    adapter = finetune(config, train, evaluation, resume=not args.no_resume)
    print(adapter)
    return 0
