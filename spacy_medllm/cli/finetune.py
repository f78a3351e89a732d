"""`finetune`: LoRA fine-tuning of a causal LM for `medllm_ner` (see `spacy_medllm.training`).

Every setting left out keeps the value of `--config` (a JSON file of `FinetuneConfig` settings)
or else `FinetuneConfig`'s default, which `--help` shows. Under `accelerate launch -m spacy_medllm
finetune ...` the same command trains data-parallel on several processes or GPUs.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import typer

from spacy_medllm.cli._app import app, csv
from spacy_medllm.training.config import SCHEDULERS, FinetuneConfig


def _default(name: str) -> str:
    """`FinetuneConfig`'s default of a setting, for --help."""
    field = next(f for f in fields(FinetuneConfig) if f.name == name)
    value = FinetuneConfig().__dict__[field.name]
    return f"[default: {value}]"


def _opt(name: str, text: str, *flags: str) -> Any:
    return typer.Option(None, *flags, help=f"{text} {_default(name)}", show_default=False)


@app.command(no_args_is_help=True)
def finetune(
    train: list[Path] = typer.Option(
        ...,
        help="Training data (repeat for several files): .jsonl (text + entities with "
        "start/end/label), .spacy (DocBin) or .json (the seed's input/output records).",
    ),
    output: Path = typer.Option(..., help="Output folder (adapter/, checkpoints/)."),
    eval: list[Path] | None = typer.Option(None, help="Evaluation data (repeat)."),
    exclude: list[Path] | None = typer.Option(
        None, help="Drop training texts that also occur in these files (repeat)."
    ),
    config: Path | None = typer.Option(None, help="A JSON file of FinetuneConfig settings."),
    base_model: str | None = _opt("base_model", "Packaged alias, local folder or hub id."),
    labels: str | None = typer.Option(
        None, help="Comma-separated labels [default: those in the data]."
    ),
    label_definitions: Path | None = typer.Option(
        None, help='A JSON file {"LABEL": "definition"}: each label\'s line in the prompt.'
    ),
    instruction_file: Path | None = typer.Option(
        None, help="A text file with the prompt's instruction (default: the package's)."
    ),
    lora_r: int | None = _opt("lora_r", "LoRA rank."),
    lora_alpha: int | None = _opt("lora_alpha", "LoRA alpha."),
    lora_dropout: float | None = _opt("lora_dropout", "LoRA dropout."),
    target_modules: str | None = _opt(
        "target_modules", "'all-linear' or comma-separated module names."
    ),
    lora_top_layers: int | None = typer.Option(
        None, help="Put LoRA only in the top N decoder layers [default: all layers]."
    ),
    dora: bool | None = typer.Option(
        None, "--dora/--no-dora", help=f"Weight-decomposed LoRA (DoRA). {_default('use_dora')}"
    ),
    rslora: bool | None = typer.Option(
        None,
        "--rslora/--no-rslora",
        help=f"Rank-stabilised scaling, lora_alpha / sqrt(r). {_default('use_rslora')}",
    ),
    learning_rate: float | None = _opt(
        "learning_rate", "Peak learning rate.", "--lr", "--learning-rate"
    ),
    epochs: float | None = typer.Option(
        None,
        help="Epochs (fractions allowed) [default: scaled to the data: about 2,000 records seen, "
        "1 to 3 epochs].",
        show_default=False,
    ),
    max_empty_share: str | None = _opt(
        "max_empty_share",
        "At most this share of the training texts (or pieces) without an entity, the rest sampled "
        "away; 'none' keeps them all.",
    ),
    loss_normalization: str | None = _opt(
        "loss_normalization",
        "'run': every answer token weighs alike over the run; 'batch': per step (transformers').",
    ),
    max_steps: int | None = _opt("max_steps", "Optimizer steps; > 0 overrides --epochs."),
    batch_size: int | None = _opt("per_device_train_batch_size", "Records per device and step."),
    grad_accum: int | None = _opt("gradient_accumulation_steps", "Gradient accumulation steps."),
    warmup_ratio: float | None = _opt("warmup_ratio", "Share of the steps spent warming up."),
    scheduler: str | None = _opt(
        "lr_scheduler_type", f"Learning-rate schedule: {', '.join(SCHEDULERS)}."
    ),
    weight_decay: float | None = _opt("weight_decay", "AdamW weight decay."),
    max_length: int | None = _opt(
        "max_length", "Longest record in tokens; longer records are dropped, never cut."
    ),
    max_chunk_tokens: int | None = typer.Option(
        None,
        help="Train on sentence-aligned pieces of at most N text tokens, as medllm_ner with "
        "max_chunk_tokens = N reads documents (saved as the pipeline's default); 0: whole texts "
        "[default: whole texts].",
        show_default=False,
    ),
    seed: int | None = _opt("seed", "Random seed."),
    save_steps: int | None = _opt("save_steps", "Steps between checkpoints."),
    logging_steps: int | None = _opt("logging_steps", "Steps between log lines."),
    eval_steps: int | None = _opt("eval_steps", "Steps between evaluations (with --eval)."),
    num_threads: int | None = _opt("num_threads", "torch CPU threads (0: torch's default)."),
    device: str | None = _opt("device", "'auto' (CUDA if available), 'cpu' or 'cuda'."),
    cache_dir: str | None = _opt("cache_dir", "Where packaged models are converted to."),
    bf16: bool | None = typer.Option(
        None,
        "--bf16/--no-bf16",
        help="bfloat16 mixed precision [default: on where the hardware computes it natively].",
    ),
    load_in_4bit: bool | None = typer.Option(
        None,
        "--load-in-4bit/--no-load-in-4bit",
        help=f"QLoRA (CUDA only). {_default('load_in_4bit')}",
    ),
    gradient_checkpointing: bool | None = typer.Option(
        None,
        "--gradient-checkpointing/--no-gradient-checkpointing",
        help=f"Recompute activations: less memory, slower. {_default('gradient_checkpointing')}",
    ),
    group_by_length: bool | None = typer.Option(
        None,
        "--group-by-length/--no-group-by-length",
        help=f"Batch records of similar length. {_default('group_by_length')}",
    ),
    share_prefix: bool | None = typer.Option(
        None,
        "--share-prefix/--no-share-prefix",
        help=f"Run the prompt head a batch shares once. {_default('share_prefix')}",
    ),
    no_dedupe: bool = typer.Option(False, "--no-dedupe", help="Keep repeated training texts."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Delete old checkpoints first."),
    show_config: bool = typer.Option(
        False, "--show-config", help="Print the resolved settings as JSON and stop (no training)."
    ),
) -> None:
    """Fine-tune a LoRA adapter for medllm_ner; prints the adapter folder."""
    from spacy_medllm.core.examples import read_examples
    from spacy_medllm.core.prompts import PromptTemplate
    from spacy_medllm.training.examples import load_training_examples
    from spacy_medllm.training.trainer import finetune as run_finetune

    settings: dict[str, Any] = {}
    if config:
        settings.update(json.loads(Path(config).read_text(encoding="utf8")))
    settings["output_dir"] = str(output)
    if base_model:
        settings["base_model"] = base_model
    if labels:
        settings["labels"] = csv(labels)
    if label_definitions:
        settings["label_definitions"] = json.loads(label_definitions.read_text(encoding="utf8"))
    if instruction_file:
        template = PromptTemplate.from_dict(
            settings.get("prompt_template") or PromptTemplate().to_dict()
        )
        instruction = instruction_file.read_text(encoding="utf8").strip()
        settings["prompt_template"] = {**template.to_dict(), "instruction": instruction}
    if target_modules:
        settings["target_modules"] = (
            target_modules if target_modules == "all-linear" else csv(target_modules)
        )
    if lora_top_layers:
        settings["lora_layers"] = list(range(-lora_top_layers, 0))
    direct = {
        "lora_r": lora_r,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "use_dora": dora,
        "use_rslora": rslora,
        "learning_rate": learning_rate,
        "num_train_epochs": epochs,
        "max_steps": max_steps,
        "loss_normalization": loss_normalization,
        "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": grad_accum,
        "warmup_ratio": warmup_ratio,
        "lr_scheduler_type": scheduler,
        "weight_decay": weight_decay,
        "max_length": max_length,
        "max_chunk_tokens": max_chunk_tokens,
        "seed": seed,
        "save_steps": save_steps,
        "logging_steps": logging_steps,
        "eval_steps": eval_steps,
        "num_threads": num_threads,
        "device": device,
        "cache_dir": cache_dir,
        "bf16": bf16,
        "load_in_4bit": load_in_4bit,
        "gradient_checkpointing": gradient_checkpointing,
        "group_by_length": group_by_length,
        "share_prefix": share_prefix,
    }
    settings.update({name: value for name, value in direct.items() if value is not None})
    if max_empty_share is not None:
        try:
            share = None if max_empty_share.lower() == "none" else float(max_empty_share)
        except ValueError:
            raise typer.BadParameter(
                f"--max-empty-share takes a share in [0, 1) or 'none', got {max_empty_share!r}"
            ) from None
        settings["max_empty_share"] = share
    if settings.get("max_chunk_tokens") == 0:
        settings["max_chunk_tokens"] = None  # whole texts
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise typer.BadParameter(f"--scheduler must be one of {', '.join(SCHEDULERS)}")
    finetune_config = FinetuneConfig.from_dict(settings)
    if show_config:
        typer.echo(json.dumps(finetune_config.to_dict(), indent=2, ensure_ascii=False))
        return
    examples = load_training_examples(
        [str(path) for path in train], [str(p) for p in exclude or ()], dedupe=not no_dedupe
    )
    evaluation = [e for path in eval or () for e in read_examples(path)] or None
    adapter = run_finetune(finetune_config, examples, evaluation, resume=not no_resume)
    typer.echo(str(adapter))


@app.command("package-adapter", no_args_is_help=True)
def package_adapter(
    adapter: Path = typer.Argument(..., help="A fine-tuning run's folder or its adapter/ folder."),
    output: Path = typer.Option(..., help="The folder to write the shippable adapter to."),
    dtype: str = typer.Option("bfloat16", help="Weights dtype: bfloat16, float16 or float32."),
) -> None:
    """Copy an adapter for shipping: smaller weights, prompt settings, record, SHA256SUMS."""
    from spacy_medllm.training.export import package_adapter as run_package

    result = run_package(adapter, output, dtype=dtype)
    typer.echo(json.dumps(result, indent=2))
