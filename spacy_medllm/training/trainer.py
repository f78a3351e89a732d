"""LoRA fine-tuning of a causal LM for `medllm_ner` with transformers' Trainer.

`finetune(config, train_examples)` builds training records with the same prompt builder and prompt
tokenisation as inference (`spacy_medllm.training.records.build_records`), wraps the base model in a
PEFT LoRA adapter and trains it with `transformers.Trainer` (loss on the answer tokens only,
length-grouped batches padded per batch, warmup then cosine or linear decay, gradient accumulation,
checkpoints). It writes:

    <output>/checkpoints/checkpoint-N/   Trainer checkpoints (the last few; resumable)
    <output>/checkpoints/run.json        what the checkpoints were trained on (checked on resume)
    <output>/adapter/
        adapter_model.safetensors        the LoRA weights (safetensors only, no pickles)
        adapter_config.json              base_model_name_or_path = the reference you gave
        prompt_template.json             labels, definitions, template: what medllm_ner needs
        training_record.json             data sha256, settings, versions, time, tokens/s, loss

The base model is named by reference ("smollm2-135m-instruct", a folder or a hub id; see
`spacy_medllm.generators.packaged.resolve_base_model`) and never copied. `trust_remote_code` is
never set, and weights load from safetensors only.

Resuming: `finetune(..., resume=True)` (the default) continues from the last complete checkpoint
in `<output>/checkpoints` after an interruption, with the optimizer, scheduler, RNG state and data
order restored; `max_steps` or `num_train_epochs` may be raised to train further. `resume=False`
deletes the old checkpoints and starts again.

Command line (`spacy_medllm.cli.finetune`; `--help` lists every setting with its default):

    python -m spacy_medllm finetune --train corpus/seed_ae_emails/train.json \\
        --exclude corpus/seed_ae_emails/test.json --labels DRUG,ADVERSE_EVENT \\
        --output training/seed_lora --epochs 2 --num-threads 2

bf16 (mixed precision: fp32 weights, bfloat16 matrix products) is on by default where the hardware
computes in bfloat16 natively: CUDA GPUs that support it, and CPUs with AMX or AVX512-BF16 (there it
makes a LoRA step about 1.5 times as fast); `--no-bf16` turns it off. Three more speed choices
that leave the loss unchanged or nearly so: output logits are computed only from the first
answer token of a batch on (`logits_to_keep`; the prompt positions carry no loss); the prompt
head every record of a batch shares (system prompt and chat template, about 40% of a seed
e-mail record's tokens) runs once per batch and its key/value cache is repeated over the rows
(`share_prefix`, `--no-share-prefix` to turn it off; same loss and gradients); and lora_dropout
defaults to 0 (its random masks took about a third of a CPU step).

GPU: the same command runs on a CUDA GPU. `--load-in-4bit` gives QLoRA
(NF4 weights through bitsandbytes, `prepare_model_for_kbit_training`); it needs CUDA, and
`validate_config` refuses it with a clear message, before any weights load, on a machine without.
Several GPUs (data parallel), with the same options:

    accelerate launch -m spacy_medllm finetune --train data.jsonl --output out --bf16

Only the standard library and spaCy are imported at module level; torch, transformers and peft load
inside the functions.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from spacy_medllm.core.examples import (
    Example,
    example_labels,
    filter_labels,
)
from spacy_medllm.core.labels import LabelSet
from spacy_medllm.core.prompts import PromptBuilder
from spacy_medllm.training.checkpoints import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    RUN_FILE,
    adapter_is_up_to_date,
    base_model_identity,
    is_main_process,
    last_checkpoint,
    library_versions,
    recorded,
    run_identity,
    save_adapter,
)
from spacy_medllm.training.collate import (
    PaddingCollator,
    accepts_logits_to_keep,
    trainer_class,
)
from spacy_medllm.training.config import (
    FinetuneConfig,
    auto_epochs,
    resolve_bf16,
    validate_config,
)
from spacy_medllm.training.examples import cap_empty, chunk_examples, prepare_records
from spacy_medllm.training.records import (
    record_stats,
    records_sha256,
)
from spacy_medllm.util.formatting import fmt_mib
from spacy_medllm.util.machine import cpu_supports_bf16
from spacy_medllm.util.memory import PeakMemory
from spacy_medllm.util.progress import say

logger = logging.getLogger("spacy_medllm")


def _throughput_callback(verbose: bool) -> Any:
    """A TrainerCallback that measures non-padding tokens/s and reports them with the loss."""
    from transformers import TrainerCallback

    class ThroughputCallback(TrainerCallback):
        def __init__(self) -> None:
            self.history: list[dict[str, Any]] = []
            self.start_time = 0.0
            self.start_tokens = 0
            self.last_time = 0.0
            self.last_tokens = 0
            self.start_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_time = self.last_time = time.perf_counter()
            self.start_tokens = self.last_tokens = state.num_input_tokens_seen
            self.start_step = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs:
                return
            now, tokens = time.perf_counter(), state.num_input_tokens_seen
            elapsed = max(now - self.last_time, 1e-9)
            rate = (tokens - self.last_tokens) / elapsed
            session = max(now - self.start_time, 1e-9)
            mean_rate = (tokens - self.start_tokens) / session
            steps_done = state.global_step - self.start_step
            eta = (
                (state.max_steps - state.global_step) * session / steps_done if steps_done else 0.0
            )
            entry = {
                "step": state.global_step,
                "loss": float(logs["loss"]),
                "learning_rate": float(logs.get("learning_rate", 0.0)),
                "tokens_per_second": rate,
                "mean_tokens_per_second": mean_rate,
                "tokens_seen": tokens,
                "seconds": session,
            }
            self.history.append(entry)
            say(
                f"step {state.global_step}/{state.max_steps} loss {entry['loss']:.4f} "
                f"lr {entry['learning_rate']:.2e} {rate:,.0f} tokens/s (mean {mean_rate:,.0f}) "
                f"eta {eta / 60:.1f} min",
                verbose,
            )
            self.last_time, self.last_tokens = now, tokens

    return ThroughputCallback()


def _checkpointing_args(arguments_class: Any, enabled: bool) -> dict[str, Any]:
    """Activation (gradient) checkpointing settings under the name this transformers uses."""
    names = {f.name for f in fields(arguments_class)}
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    return {
        f"{prefix}_checkpointing": enabled,
        f"{prefix}_checkpointing_kwargs": {"use_reentrant": False} if enabled else None,
    }


def _version_dependent_args(arguments_class: Any, config: FinetuneConfig) -> dict[str, Any]:
    """Warmup and length grouping under the names this transformers uses."""
    names = {f.name for f in fields(arguments_class)}
    args: dict[str, Any] = {}
    if "warmup_ratio" in names:
        args["warmup_ratio"] = config.warmup_ratio
    else:  # transformers 5.x: a float below 1 is a ratio of the total steps
        args["warmup_steps"] = config.warmup_ratio
    if "train_sampling_strategy" in names:
        args["train_sampling_strategy"] = "group_by_length" if config.group_by_length else "random"
    else:
        args["group_by_length"] = config.group_by_length
    return args


def _expand_all_linear(model: Any) -> list[str]:
    """The names of the linear layers "all-linear" means (every nn.Linear but the output head)."""
    import torch

    output = model.get_output_embeddings()
    names = set()
    for name, module in model.named_modules():
        if module is output:
            continue
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ in (
            "Linear4bit",
            "Linear8bitLt",
        )
        if is_linear:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def _resolve_layers(layers: Sequence[int], n_layers: int) -> list[int]:
    resolved = sorted({i + n_layers if i < 0 else i for i in layers})
    bad = [i for i in resolved if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"lora_layers {list(layers)} are outside the model's {n_layers} layers")
    return resolved


def finetune(
    config: FinetuneConfig,
    train_examples: Sequence[Example],
    eval_examples: Sequence[Example] | None = None,
    resume: bool = True,
    callbacks: Sequence[Any] | None = None,
) -> Path:
    """Train a LoRA adapter on `train_examples` and return the adapter folder `<output>/adapter`.

    `callbacks`: extra transformers TrainerCallbacks. See the module docstring for the outputs.
    """
    import torch

    cuda = torch.cuda.is_available()
    bf16_supported = bool(cuda and torch.cuda.is_bf16_supported())
    cpu_bf16 = cpu_supports_bf16()
    validate_config(config, cuda, bf16_supported, cpu_bf16)
    use_cuda = cuda and config.device != "cpu"
    bf16 = resolve_bf16(config.bf16, use_cuda, bf16_supported, cpu_bf16)
    if not train_examples:
        raise ValueError("No training examples")
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)

    from spacy_medllm.generators.packaged import quiet_optional_kernels

    quiet_optional_kernels()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments, set_seed

    from spacy_medllm.generators.packaged import resolve_base_model

    start_time = time.time()
    output = Path(config.output_dir)
    checkpoints = output / CHECKPOINTS_DIR
    resolved = resolve_base_model(config.base_model, config.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=False)
    pad_token_id = tokenizer.pad_token_id
    if pad_token_id is None:
        pad_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0

    labels = list(config.labels) if config.labels else example_labels(train_examples)
    if not labels:
        raise ValueError("The training examples have no entities, and no labels were given")
    definitions = {k: v for k, v in config.label_definitions.items() if k in labels}
    label_set = LabelSet(labels, definitions)
    if label_set.undefined:
        logger.warning(
            "No definition for the label(s) %s: the prompt names them bare. Give each a line "
            'with --label-definitions FILE.json ({"%s": "what it means"}); the training '
            "record lists them under labels_without_definition.",
            ", ".join(label_set.undefined),
            label_set.undefined[0],
        )
    template = config.template()
    builder = PromptBuilder(label_set, template)
    train_examples, n_removed = filter_labels(train_examples, labels)
    if n_removed:
        logger.warning("Removed %d entities whose labels are not in %s", n_removed, labels)
    n_texts = len(train_examples)
    if config.max_chunk_tokens is not None:
        train_examples = chunk_examples(train_examples, builder, tokenizer, config.max_chunk_tokens)
        say(
            f"max_chunk_tokens = {config.max_chunk_tokens}: {n_texts} training texts cut into "
            f"{len(train_examples)} pieces",
            config.progress,
        )
    train_examples, empty_stats = cap_empty(train_examples, config.max_empty_share, config.seed)
    if empty_stats["n_empty_kept"] < empty_stats["n_empty"]:
        say(
            f"max_empty_share = {config.max_empty_share}: {empty_stats['n_empty_kept']} of "
            f"{empty_stats['n_empty']} texts without entities kept next to "
            f"{empty_stats['n_with_entities']} with entities",
            config.progress,
        )
    train_records, n_dropped = prepare_records(
        train_examples, builder, tokenizer, config.max_length, "training"
    )
    if not train_records:
        raise ValueError(f"No training record fits max_length = {config.max_length}")
    eval_records: list[dict[str, Any]] = []
    if eval_examples:
        eval_examples, _ = filter_labels(eval_examples, labels)
        if config.max_chunk_tokens is not None:
            eval_examples = chunk_examples(
                eval_examples, builder, tokenizer, config.max_chunk_tokens
            )
        eval_records, _ = prepare_records(
            eval_examples, builder, tokenizer, config.max_length, "evaluation"
        )
    data_sha256 = records_sha256(train_records)
    # Settings as they were used: labels inferred from the data are written down.
    epochs = config.num_train_epochs
    if epochs is None:
        epochs = auto_epochs(len(train_records))
        if config.max_steps <= 0:
            say(
                f"{epochs} epoch(s) over {len(train_records)} records (scaled to the data)",
                config.progress,
            )
    effective = FinetuneConfig.from_dict(
        {
            **config.to_dict(),
            "num_train_epochs": epochs,
            "labels": labels,
            "label_definitions": dict(label_set.definitions),
            "prompt_template": template.to_dict(),
            "bf16": bf16,
        }
    )

    # Checkpoints: resume if they belong to the same run, or start over.
    identity = run_identity(effective, data_sha256)
    adapter_dir = output / ADAPTER_DIR
    if resume and adapter_is_up_to_date(adapter_dir, effective, data_sha256):
        say(
            f"{adapter_dir} is up to date (same data, settings and length of training): "
            "nothing to do. Pass resume=False (--no-resume) to train again.",
            config.progress,
        )
        return adapter_dir
    run_file = checkpoints / RUN_FILE
    resume_from: Path | None = None
    if resume:
        resume_from = last_checkpoint(checkpoints)
        if resume_from is not None and run_file.is_file():
            previous = json.loads(run_file.read_text(encoding="utf8"))
            changed = sorted(k for k in identity if recorded(previous, k) != identity[k])
            if changed:
                raise ValueError(
                    f"The checkpoints in {checkpoints} were trained with other data or settings "
                    f"(changed: {', '.join(changed)}). Resume with the same ones, or pass "
                    "resume=False (--no-resume) to start again, or use another output folder."
                )
    elif checkpoints.exists() and is_main_process():
        logger.warning("resume=False: deleting the old checkpoints in %s", checkpoints)
        shutil.rmtree(checkpoints)

    # Model and adapter.
    set_seed(config.seed)
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}
    if config.load_in_4bit:
        from accelerate import PartialState
        from transformers import BitsAndBytesConfig

        compute_dtype = torch.bfloat16 if bf16 else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
        kwargs["dtype"] = compute_dtype
        kwargs["device_map"] = {"": PartialState().local_process_index}
    else:
        # On a GPU the frozen weights are stored in bf16; on a CPU they stay fp32 and bf16 is
        # autocast's compute type only (closer to fp32 inference).
        kwargs["dtype"] = torch.bfloat16 if bf16 and use_cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(resolved, **kwargs)
    model.config.use_cache = False
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    elif config.gradient_checkpointing:
        model.enable_input_require_grads()

    target_modules: str | list[str] = config.target_modules
    layers: list[int] | None = None
    if config.lora_layers is not None:
        text_config = model.config.get_text_config()
        layers = _resolve_layers(config.lora_layers, text_config.num_hidden_layers)
        if target_modules == "all-linear":
            target_modules = _expand_all_linear(model)
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target_modules,
        layers_to_transform=layers,
        use_dora=config.use_dora,
        use_rslora=config.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    trim_logits = accepts_logits_to_keep(model)
    # One process only: a distributed wrapper expects one forward pass per backward pass.
    share_prefix = (
        config.share_prefix
        and not config.gradient_checkpointing
        and not config.load_in_4bit
        and int(os.environ.get("WORLD_SIZE", "1")) == 1
    )
    model = get_peft_model(model, lora_config)
    trainable, total = model.get_nb_trainable_parameters()
    stats = record_stats(train_records)
    say(
        f"LoRA r={config.lora_r} on {target_modules} of {config.base_model}: {trainable:,} "
        f"trainable of {total:,} parameters; {len(train_records)} records, "
        f"{stats['mean_prompt_tokens']:.0f} prompt + {stats['mean_completion_tokens']:.0f} "
        f"answer tokens on average",
        config.progress,
    )

    args = TrainingArguments(
        output_dir=str(checkpoints),
        # Under DDP (accelerate launch): LoRA trains every parameter it has on every step, so
        # the search for unused ones would only cost an extra pass.
        ddp_find_unused_parameters=False,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=epochs,
        max_steps=config.max_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        weight_decay=config.weight_decay,
        optim=config.optim,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if eval_records and config.eval_steps else "no",
        eval_steps=config.eval_steps if eval_records else None,
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16,
        use_cpu=not use_cuda,
        **_checkpointing_args(TrainingArguments, config.gradient_checkpointing),
        **_version_dependent_args(TrainingArguments, config),
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=use_cuda,
        disable_tqdm=not config.progress,
        report_to="none",
    )
    throughput = _throughput_callback(config.progress)
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=[{"input_ids": r["input_ids"], "labels": r["labels"]} for r in train_records],
        eval_dataset=[{"input_ids": r["input_ids"], "labels": r["labels"]} for r in eval_records]
        or None,
        data_collator=PaddingCollator(
            pad_token_id,
            8 if use_cuda else None,
            trim_logits=trim_logits,
            share_prefix=share_prefix,
        ),
        callbacks=[throughput, *(callbacks or [])],
    )
    if config.loss_normalization == "run":
        # the mean answer tokens of a step: records per step times answer tokens per record
        per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
        trainer.answer_token_scale = per_step * stats["mean_completion_tokens"]
    if not config.progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    if trainer.is_world_process_zero():
        checkpoints.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf8")
    if resume_from is not None:
        say(f"Resuming from {resume_from}", config.progress)
    tokens_before = 0
    if resume_from is not None:
        state = json.loads((resume_from / "trainer_state.json").read_text(encoding="utf8"))
        tokens_before = int(state.get("num_input_tokens_seen", 0))
    train_start = time.perf_counter()
    with PeakMemory() as memory:  # the training loop's peak (the model is loaded already)
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.perf_counter() - train_start
    eval_loss = None
    if eval_records:
        eval_loss = float(trainer.evaluate()["eval_loss"])

    adapter_dir = output / ADAPTER_DIR
    if not trainer.is_world_process_zero():
        return adapter_dir
    session_tokens = trainer.state.num_input_tokens_seen - tokens_before
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    record = {
        "base_model": base_model_identity(config.base_model, resolved),
        "settings": effective.to_dict(),
        "effective": {
            "bf16": bf16,
            "device": "cuda" if use_cuda else "cpu",
            "torch_threads": torch.get_num_threads(),
            "target_modules": target_modules,
            "lora_layers": layers,
            "logits_only_for_answers": trim_logits,
            "shared_prefix": share_prefix,
            "answer_token_scale": trainer.answer_token_scale,
            "trainable_parameters": trainable,
            "total_parameters": total,
        },
        "data": {
            "sha256": data_sha256,
            "n_examples": n_texts,
            "n_pieces": len(train_examples),
            "n_records": len(train_records),
            "n_dropped_too_long": n_dropped,
            "n_entities_removed_other_labels": n_removed,
            "n_eval_records": len(eval_records),
            "empty": empty_stats,
            "labels_without_definition": label_set.undefined,
            **{k: v for k, v in stats.items() if k != "n_records"},
        },
        "training": {
            "global_step": trainer.state.global_step,
            "max_steps": trainer.state.max_steps,
            "epoch": trainer.state.epoch,
            "resumed_from": resume_from.name if resume_from else None,
            "train_tokens": trainer.state.num_input_tokens_seen,
            "session_tokens": session_tokens,
            "session_seconds": train_seconds,
            "tokens_per_second": session_tokens / train_seconds if train_seconds else None,
            "final_loss": losses[-1] if losses else None,
            "mean_session_loss": float(result.training_loss),
            "eval_loss": eval_loss,
            "log": throughput.history,
            "memory": memory.to_dict(),
        },
        "seed": config.seed,
        "versions": library_versions(),
        "wall_seconds": time.time() - start_time,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    save_adapter(
        model,
        adapter_dir,
        config.base_model,
        builder,
        label_set,
        template,
        record,
        max_chunk_tokens=config.max_chunk_tokens,
    )
    say(
        f"Saved the adapter to {adapter_dir} (step {trainer.state.global_step}, loss "
        f"{record['training']['final_loss']}, {record['training']['tokens_per_second'] or 0:,.0f} "
        f"tokens/s, peak RSS {fmt_mib(memory.peak_rss_mib)} MiB)",
        config.progress,
    )
    return adapter_dir
