"""LoRA fine-tuning of a causal LM for `medllm_ner` with transformers' Trainer.

`finetune(config, train_examples)` builds training records with the same prompt builder and prompt
tokenisation as inference (`spacy_medllm.training.data.build_records`), wraps the base model in a
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
`spacy_medllm.generators.packaged.resolve_base_model`) and never copied. `trust_remote_code` is never set, and
weights load from safetensors only.

Resuming: `finetune(..., resume=True)` (the default) continues from the last complete checkpoint
in `<output>/checkpoints` after an interruption, with the optimizer, scheduler, RNG state and data
order restored; `max_steps` or `num_train_epochs` may be raised to train further. `resume=False`
deletes the old checkpoints and starts again.

Command line (a typer CLI wraps the same function):

    python -m spacy_medllm.training.finetune --train corpus/seed_ae_emails/train.json \
        --exclude corpus/seed_ae_emails/test.json --labels DRUG,ADVERSE_EVENT \
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

    accelerate launch -m spacy_medllm.training.finetune --train data.jsonl --output out --bf16

Only the standard library and spaCy are imported at module level; torch, transformers and peft load
inside the functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from spacy_medllm.core.labels import LabelSet
from spacy_medllm.core.prompts import PromptBuilder, PromptTemplate
from spacy_medllm.generators.hf.decoding import common_prefix_length
from spacy_medllm.generators.hf.loading import cache_keyword, forward_parameters
from spacy_medllm.generators.packaged import cpu_supports_bf16
from spacy_medllm.training.data import (
    IGNORE_INDEX,
    Example,
    build_records,
    deduplicate,
    encode_prompt,
    example_labels,
    filter_labels,
    read_examples,
    record_stats,
    records_sha256,
    remove_shared,
    split_example,
)
from spacy_medllm.util.formatting import fmt_mib
from spacy_medllm.util.memory import PeakMemory

logger = logging.getLogger("spacy_medllm")

CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
RUN_FILE = "run.json"
PROMPT_TEMPLATE_FILE = "prompt_template.json"
TRAINING_RECORD_FILE = "training_record.json"
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
# Settings that must not change when a run resumes from its checkpoints (the data too).
_RUN_KEYS = (
    "base_model",
    "labels",
    "label_definitions",
    "prompt_template",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "lora_layers",
    "use_dora",
    "use_rslora",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "warmup_ratio",
    "lr_scheduler_type",
    "weight_decay",
    "max_length",
    "seed",
    "load_in_4bit",
    "optim",
)


@dataclass
class FinetuneConfig:
    """Settings of one LoRA fine-tuning run. Defaults suit SmolLM2-135M on 2 CPU cores.

    labels: None means the labels found in the training data. prompt_template: a
    `PromptTemplate.to_dict()` dict (None: the default template). lora_layers: train LoRA only in
    these decoder layers (negative indices count from the top; None: all layers); backpropagation
    then stops at the lowest adapted layer, which makes steps cheaper (but the adapter learns more
    slowly per step). lora_dropout: 0 by default (dropout masks are costly on a CPU; set 0.05-0.1
    for long runs on small data). use_dora: weight-decomposed LoRA (DoRA, peft's `use_dora`): each
    adapted weight's magnitude is learned apart from its direction; slower steps, and merged like
    plain LoRA at inference. use_rslora: scale the update by lora_alpha / sqrt(r) instead of
    lora_alpha / r (rank-stabilised LoRA; keeps large ranks from learning faster than small ones).
    max_steps > 0 overrides
    num_train_epochs. max_chunk_tokens: cut every training text into sentence-aligned pieces of at
    most this many text tokens, exactly as `medllm_ner` with the same `max_chunk_tokens` cuts a
    document at inference (`chunk_examples`), so that a model that will read abstracts piece by
    piece is trained on such pieces; a piece boundary never cuts a gold span. The value is saved
    with the prompt and becomes the pipeline's default when it is assembled (None: whole texts).
    Records longer than max_length tokens are dropped, never truncated.
    learning_rate: 1e-3 suits LoRA on a 135 M model with a few hundred records (one epoch on the
    seed e-mails: seed P 0.815 / R 0.787 at 1e-3, 0.715 / 0.707 at 2e-4); lower it for larger
    models.
    bf16: None means on where bfloat16 is native (a CUDA GPU that supports it, or a CPU with AMX or
    AVX512-BF16), off elsewhere. num_threads: torch CPU threads (0: torch's default).
    share_prefix: run the prompt head that all records of a batch share (system prompt, chat
    template) once per batch instead of once per record (`PaddingCollator`); same loss and
    gradients. Used on one process without gradient checkpointing or 4-bit weights.
    device: "auto" (CUDA if available) or "cpu".
    """

    base_model: str = "smollm2-135m-instruct"
    output_dir: str = "training/lora"
    labels: list[str] | None = None
    label_definitions: dict[str, str] = field(default_factory=dict)
    prompt_template: dict[str, Any] | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    lora_layers: list[int] | None = None
    use_dora: bool = False
    use_rslora: bool = False
    learning_rate: float = 1e-3
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_length: int = 1024
    max_chunk_tokens: int | None = None
    seed: int = 42
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 10
    eval_steps: int | None = None
    num_threads: int = 0
    bf16: bool | None = None
    load_in_4bit: bool = False
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    share_prefix: bool = True
    optim: str = "adamw_torch"
    device: str = "auto"
    cache_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.prompt_template, PromptTemplate):
            self.prompt_template = self.prompt_template.to_dict()
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)

    def template(self) -> PromptTemplate:
        if self.prompt_template is None:
            return PromptTemplate()
        return PromptTemplate.from_dict(self.prompt_template)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown fine-tuning settings: {sorted(unknown)}")
        return cls(**dict(data))


def validate_config(
    config: FinetuneConfig,
    cuda_available: bool,
    bf16_supported: bool | None = None,
    cpu_bf16_supported: bool = False,
) -> None:
    """Raise ValueError with a clear message for settings that cannot work on this machine.

    Called by `finetune` before any weights load. `bf16_supported` (None: same as
    `cuda_available`) tells whether the CUDA device computes in bfloat16; `cpu_bf16_supported`
    whether the CPU does (AMX or AVX512-BF16; see `cpu_supports_bf16`).
    """
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    need(
        bool(config.base_model), "base_model is empty: give a packaged alias, a folder or a hub id"
    )
    need(config.labels is None or len(config.labels) > 0, "labels is an empty list")
    need(config.lora_r >= 1, f"lora_r must be at least 1, got {config.lora_r}")
    need(config.lora_alpha > 0, f"lora_alpha must be positive, got {config.lora_alpha}")
    need(
        0.0 <= config.lora_dropout < 1.0,
        f"lora_dropout must be in [0, 1), got {config.lora_dropout}",
    )
    need(
        bool(config.target_modules),
        "target_modules is empty: use 'all-linear' or a list of module names",
    )
    need(config.learning_rate > 0, f"learning_rate must be positive, got {config.learning_rate}")
    need(
        config.max_steps > 0 or config.num_train_epochs > 0,
        "set max_steps > 0 or num_train_epochs > 0",
    )
    for name in (
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "save_steps",
        "save_total_limit",
        "logging_steps",
    ):
        need(getattr(config, name) >= 1, f"{name} must be at least 1, got {getattr(config, name)}")
    need(config.eval_steps is None or config.eval_steps >= 1, "eval_steps must be at least 1")
    need(
        0.0 <= config.warmup_ratio < 1.0,
        f"warmup_ratio must be in [0, 1), got {config.warmup_ratio}",
    )
    need(
        config.lr_scheduler_type in SCHEDULERS,
        f"lr_scheduler_type must be one of {SCHEDULERS}, got {config.lr_scheduler_type!r}",
    )
    need(config.weight_decay >= 0, f"weight_decay must be >= 0, got {config.weight_decay}")
    need(config.max_length >= 8, f"max_length must be at least 8, got {config.max_length}")
    if config.max_chunk_tokens is not None:
        need(
            isinstance(config.max_chunk_tokens, int)
            and not isinstance(config.max_chunk_tokens, bool)
            and config.max_chunk_tokens >= 1,
            f"max_chunk_tokens must be a whole number >= 1 (or None), got "
            f"{config.max_chunk_tokens!r}",
        )
    need(config.num_threads >= 0, f"num_threads must be >= 0, got {config.num_threads}")
    need(config.device in ("auto", "cpu", "cuda"), "device must be 'auto', 'cpu' or 'cuda'")
    if config.lora_layers is not None:
        need(
            len(config.lora_layers) > 0 and all(isinstance(i, int) for i in config.lora_layers),
            "lora_layers must be a non-empty list of layer indices (or None for all layers)",
        )
    use_cuda = cuda_available and config.device != "cpu"
    if config.device == "cuda" and not cuda_available:
        problems.append("device = 'cuda' but no CUDA GPU is available on this machine")
    if config.load_in_4bit:
        fix = (
            "Set load_in_4bit = false (--no-load-in-4bit) to train the full-precision model "
            "with LoRA."
        )
        if not use_cuda:
            problems.append(
                "load_in_4bit (QLoRA) needs a CUDA GPU and bitsandbytes, and "
                + (
                    "device = 'cpu' was asked for."
                    if config.device == "cpu"
                    else "no CUDA GPU is available on this machine."
                )
                + f" {fix}"
            )
        else:
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                problems.append(f"load_in_4bit needs the bitsandbytes package. {fix}")
    if config.bf16:
        supported = cuda_available if bf16_supported is None else bf16_supported
        if not use_cuda and not cpu_bf16_supported:
            problems.append(
                "bf16 = true needs a CUDA GPU with bfloat16 support or a CPU with native "
                "bfloat16 (AMX or AVX512-BF16); this run is on a CPU without it. Set bf16 = false "
                "(or leave it unset: it turns on by itself where bfloat16 is native)."
            )
        elif use_cuda and not supported:
            problems.append(
                "bf16 = true but this CUDA GPU does not support bfloat16 (it needs compute "
                "capability 8.0 or newer). Set bf16 = false."
            )
    if problems:
        raise ValueError("Invalid fine-tuning settings:\n- " + "\n- ".join(problems))


def resolve_bf16(setting: bool | None, use_cuda: bool, cuda_bf16: bool, cpu_bf16: bool) -> bool:
    """The bf16 choice: the setting if given, else whether the device computes bf16 natively."""
    if setting is not None:
        return bool(setting)
    return cuda_bf16 if use_cuda else cpu_bf16


# -- batching --------------------------------------------------------------------------------------


class PaddingCollator:
    """Pads a batch of records to its longest one (right padding): pad ids, mask 0, labels -100.

    trim_logits: also pass `logits_to_keep` so that the model computes output logits only for
    the positions that can carry a loss (from the earliest answer token of the batch on), and cut
    the labels to match. The loss is the same; the prompt positions' vocabulary projection and
    softmax (most of the sequence, 49k-wide for SmolLM2) are skipped.

    share_prefix: when every record of the batch starts with the same tokens (the system prompt and
    the chat template up to the user's text: about 40% of a seed e-mail record), at least
    MIN_SHARED_PREFIX of them and all before the first answer token, cut them off into
    `prefix_input_ids` (1 x P). `input_ids` and `labels` then hold the rest of each row, while
    `attention_mask` still covers prefix + rest, so token counts are unchanged. The Trainer runs the
    prefix once, repeats its key/value cache over the rows, and runs the rest on top
    (`_trainer_class`); the loss and the gradients are those of the full batch, for a fraction of
    the prompt's compute.
    """

    MIN_SHARED_PREFIX = 16

    def __init__(
        self,
        pad_token_id: int,
        pad_to_multiple_of: int | None = None,
        trim_logits: bool = False,
        share_prefix: bool = False,
    ) -> None:
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.trim_logits = trim_logits
        self.share_prefix = share_prefix

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            step = self.pad_to_multiple_of
            width = (width + step - 1) // step * step
        input_ids, attention_mask, labels = [], [], []
        first_answer = width
        for feature in features:
            ids = list(feature["input_ids"])
            pad = width - len(ids)
            input_ids.append(ids + [self.pad_token_id] * pad)
            attention_mask.append([1] * len(ids) + [0] * pad)
            row = list(feature["labels"])
            labels.append(row + [IGNORE_INDEX] * pad)
            first_answer = min(
                first_answer, next((i for i, x in enumerate(row) if x != IGNORE_INDEX), width)
            )
        batch = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
        shared = self._shared_length(features, first_answer) if self.share_prefix else 0
        if shared:
            batch["prefix_input_ids"] = batch["input_ids"][:1, :shared]
            batch["input_ids"] = batch["input_ids"][:, shared:]
            batch["labels"] = batch["labels"][:, shared:]
            width -= shared
            first_answer -= shared
        if self.trim_logits:
            # Logits at position t predict token t + 1: keep them from the position before the
            # first answer token. The loss shifts labels by one within what is kept.
            keep = max(1, width - max(first_answer - 1, 0))
            batch["labels"] = batch["labels"][:, width - keep :]
            batch["logits_to_keep"] = keep
        return batch

    def _shared_length(self, features: Sequence[Mapping[str, Any]], first_answer: int) -> int:
        """Leading tokens all rows share, ending before the position whose logits predict the
        first answer token (its label, and every later one, stays with the rows); 0 if fewer
        than MIN_SHARED_PREFIX or a single row."""
        if len(features) < 2:
            return 0
        first = list(features[0]["input_ids"])
        # Every row keeps at least one token of its own.
        shared = min(first_answer - 1, min(len(f["input_ids"]) for f in features) - 1)
        for feature in features[1:]:
            shared = common_prefix_length(first[:shared], feature["input_ids"])
        return shared if shared >= self.MIN_SHARED_PREFIX else 0


def prefix_cache_inputs(model: Any, prefix_ids: Any, rows: int) -> dict[str, Any]:
    """Run the batch's shared prefix (1 x P) once, with gradients, and return the keyword that
    hands its key/value cache, repeated over `rows` rows, to the forward pass of the rest.

    The repeat is a differentiable copy, so backpropagation sums the rows' gradients into the one
    prefix pass: the loss and the gradients equal those of running every row in full. Positions
    continue from P (right padding: every row's own tokens start right after the prefix).
    """
    keyword = cache_keyword(model)
    extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    output = model(input_ids=prefix_ids, use_cache=True, **extra)
    cache = getattr(output, "cache", None) or output.past_key_values
    if rows > 1:
        cache.batch_repeat_interleave(rows)
    return {keyword: cache, "use_cache": True}


def _accepts_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in forward_parameters(model)


def completion_loss(
    model: Any, records: Sequence[Mapping[str, Any]], pad_token_id: int, batch_size: int = 8
) -> float:
    """Mean cross-entropy per answer token of `records` under `model` (no gradients)."""
    import torch

    collate = PaddingCollator(pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            batch = collate(records[start : start + batch_size])
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            ).logits.float()
            labels = batch["labels"][:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += float(loss)
            count += int((labels != IGNORE_INDEX).sum())
    if was_training:
        model.train()
    return total / count if count else float("nan")


# -- progress --------------------------------------------------------------------------------------


def _say(message: str, enabled: bool = True) -> None:
    if not enabled:
        return
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info(message)
    else:
        print(f"[spacy-medllm] {message}", file=sys.stderr, flush=True)


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
            _say(
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


def _is_main_process() -> bool:
    """Rank 0 of a distributed launch (accelerate/torchrun set RANK), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def _trainer_class() -> Any:
    """transformers' Trainer, with length grouping that is reproducible across a resume.

    Trainer's own LengthGroupedSampler draws its order from the global RNG, so after a resume
    that crosses an epoch boundary the batches differ from an uninterrupted run. Here each
    epoch's order is drawn from a generator seeded with data_seed + epoch (the Trainer calls
    set_epoch), as accelerate's seedable sampler does for plain random order; every process of a
    distributed run also gets the same order.
    """
    import torch
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
            super().__init__(batch_size, lengths=lengths)
            self.seed = seed
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
            return iter(indices)

    class MedLLMTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            prefix = inputs.pop("prefix_input_ids", None)
            if prefix is not None:
                inputs = {**inputs, **prefix_cache_inputs(model, prefix, len(inputs["input_ids"]))}
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            strategy = getattr(self.args, "train_sampling_strategy", None)
            grouped = (
                strategy == "group_by_length"
                if strategy is not None
                else getattr(self.args, "group_by_length", False)
            )
            if not grouped or dataset is None:
                return super()._get_train_sampler(train_dataset)
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                [len(item["input_ids"]) for item in dataset],
                seed,
            )

    return MedLLMTrainer


# -- checkpoints -----------------------------------------------------------------------------------


def last_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (its trainer_state.json is written last), or None.

    Incomplete checkpoints (a save interrupted half-way) are deleted.
    """
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for path in folder.glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    for _, path in sorted(found, reverse=True):
        if (path / "trainer_state.json").is_file():
            return path
        if _is_main_process():
            logger.warning("Deleting the incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


def adapter_is_up_to_date(adapter_dir: Path, config: FinetuneConfig, data_sha256: str) -> bool:
    """True when `adapter_dir` holds a finished run with these data and settings.

    A finished run is one whose training record says it reached its last step; the settings
    compared are those that define the run (`_RUN_KEYS`) and its length (epochs, max_steps).
    """
    record_file = adapter_dir / TRAINING_RECORD_FILE
    if not (record_file.is_file() and (adapter_dir / "adapter_model.safetensors").is_file()):
        return False
    try:
        record = json.loads(record_file.read_text(encoding="utf8"))
        previous = record["settings"]
        training = record["training"]
        same_data = record["data"]["sha256"] == data_sha256
    except (KeyError, TypeError, ValueError):
        return False
    wanted = config.to_dict()
    keys = (*_RUN_KEYS, "num_train_epochs", "max_steps")
    same_settings = all(_recorded(previous, key) == wanted[key] for key in keys)
    finished = training.get("global_step") is not None and training.get("global_step") >= (
        training.get("max_steps") or 0
    )
    return same_data and same_settings and finished


def _recorded(settings: Mapping[str, Any], key: str) -> Any:
    """A setting as a run recorded it; a setting added after the run was recorded counts as its
    default (so a new option does not make every earlier run stale)."""
    if key in settings:
        return settings[key]
    default = next((f.default for f in fields(FinetuneConfig) if f.name == key), None)
    return None if default is MISSING else default


def _run_identity(config: FinetuneConfig, data_sha256: str) -> dict[str, Any]:
    settings = config.to_dict()
    return {"data_sha256": data_sha256, **{key: settings[key] for key in _RUN_KEYS}}


# -- environment -----------------------------------------------------------------------------------


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in (
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "safetensors",
        "tokenizers",
        "datasets",
        "bitsandbytes",
        "spacy",
        "spacy-medllm",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    if versions["spacy-medllm"] is None:
        from spacy_medllm.about import __version__

        versions["spacy-medllm"] = __version__
    return versions


def _base_model_identity(reference: str, resolved: str) -> dict[str, Any]:
    """What the base model was: the reference, and for a local folder its name and source file."""
    folder = Path(resolved)
    info: dict[str, Any] = {"reference": reference}
    if folder.is_dir():
        info["folder_name"] = folder.name
        source = folder / "medllm_source.json"
        if source.is_file():
            info["source"] = json.loads(source.read_text(encoding="utf8"))
    else:
        info["hub_id"] = resolved
    return info


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


def load_prompt_settings(adapter_dir: str | Path) -> dict[str, Any]:
    """The labels, label definitions and PromptTemplate an adapter was trained with.

    Returns {"labels": [...], "label_definitions": {...}, "template": PromptTemplate,
    "max_chunk_tokens": int | None}: what medllm_ner needs to prompt the model exactly as it was
    trained (max_chunk_tokens: the size of the pieces it was trained on; None: whole texts).
    """
    data = json.loads((Path(adapter_dir) / PROMPT_TEMPLATE_FILE).read_text(encoding="utf8"))
    return {
        "labels": list(data["labels"]),
        "label_definitions": dict(data.get("label_definitions", {})),
        "template": PromptTemplate.from_dict(data["template"]),
        "max_chunk_tokens": data.get("max_chunk_tokens"),
    }


# -- training --------------------------------------------------------------------------------------


def chunk_examples(
    examples: Sequence[Example], builder: PromptBuilder, tokenizer: Any, max_chunk_tokens: int
) -> list[Example]:
    """The examples cut into the pieces `medllm_ner` prompts with `max_chunk_tokens` set.

    The plan is the component's: the same budget (`chunking.piece_budget`: the prompt head plus
    `max_chunk_tokens`; the context is left to max_length here), prompt tokens counted with the
    same rendering and tokenisation, and `chunking.plan_chunks` packing sentences (found by the
    punctuation rule, as in a blank pipeline) into pieces that fit. Pieces that would cut a gold
    span are joined (`split_example`). Texts that fit stay whole.
    """
    import spacy

    from spacy_medllm.core.chunking import piece_budget, plan_chunks
    from spacy_medllm.generators.chat import render_prompt

    make_doc = spacy.blank("xx").make_doc

    def count_tokens(text: str) -> int:
        return len(encode_prompt(tokenizer, render_prompt(tokenizer, builder.messages(text))))

    budget = piece_budget(count_tokens, max_chunk_tokens)
    pieces: list[Example] = []
    for example in examples:
        ranges = plan_chunks(make_doc(example["text"]), budget=budget, count_tokens=count_tokens)
        pieces.extend(split_example(example, ranges))
    return pieces


def _prepare_records(
    examples: Sequence[Example], builder: PromptBuilder, tokenizer: Any, max_length: int, what: str
) -> tuple[list[dict[str, Any]], int]:
    records = build_records(examples, builder, tokenizer)
    kept = [r for r in records if len(r["input_ids"]) <= max_length]
    dropped = len(records) - len(kept)
    if dropped:
        logger.warning(
            "Dropped %d of %d %s records longer than max_length = %d tokens (they are never "
            "truncated: a cut answer would teach the model to stop mid-JSON).",
            dropped,
            len(records),
            what,
            max_length,
        )
    return kept, dropped


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
    template = config.template()
    builder = PromptBuilder(label_set, template)
    train_examples, n_removed = filter_labels(train_examples, labels)
    if n_removed:
        logger.warning("Removed %d entities whose labels are not in %s", n_removed, labels)
    n_texts = len(train_examples)
    if config.max_chunk_tokens is not None:
        train_examples = chunk_examples(train_examples, builder, tokenizer, config.max_chunk_tokens)
        _say(
            f"max_chunk_tokens = {config.max_chunk_tokens}: {n_texts} training texts cut into "
            f"{len(train_examples)} pieces",
            config.progress,
        )
    train_records, n_dropped = _prepare_records(
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
        eval_records, _ = _prepare_records(
            eval_examples, builder, tokenizer, config.max_length, "evaluation"
        )
    data_sha256 = records_sha256(train_records)
    # Settings as they were used: labels inferred from the data are written down.
    effective = FinetuneConfig.from_dict(
        {
            **config.to_dict(),
            "labels": labels,
            "label_definitions": dict(label_set.definitions),
            "prompt_template": template.to_dict(),
            "bf16": bf16,
        }
    )

    # Checkpoints: resume if they belong to the same run, or start over.
    identity = _run_identity(effective, data_sha256)
    adapter_dir = output / ADAPTER_DIR
    if resume and adapter_is_up_to_date(adapter_dir, effective, data_sha256):
        _say(
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
            changed = sorted(k for k in identity if _recorded(previous, k) != identity[k])
            if changed:
                raise ValueError(
                    f"The checkpoints in {checkpoints} were trained with other data or settings "
                    f"(changed: {', '.join(changed)}). Resume with the same ones, or pass "
                    "resume=False (--no-resume) to start again, or use another output folder."
                )
    elif checkpoints.exists() and _is_main_process():
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
    trim_logits = _accepts_logits_to_keep(model)
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
    _say(
        f"LoRA r={config.lora_r} on {target_modules} of {config.base_model}: {trainable:,} "
        f"trainable of {total:,} parameters; {len(train_records)} records, "
        f"{stats['mean_prompt_tokens']:.0f} prompt + {stats['mean_completion_tokens']:.0f} "
        f"answer tokens on average",
        config.progress,
    )

    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
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
    trainer = _trainer_class()(
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
    if not config.progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    if trainer.is_world_process_zero():
        checkpoints.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf8")
    if resume_from is not None:
        _say(f"Resuming from {resume_from}", config.progress)
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
        "base_model": _base_model_identity(config.base_model, resolved),
        "settings": effective.to_dict(),
        "effective": {
            "bf16": bf16,
            "device": "cuda" if use_cuda else "cpu",
            "torch_threads": torch.get_num_threads(),
            "target_modules": target_modules,
            "lora_layers": layers,
            "logits_only_for_answers": trim_logits,
            "shared_prefix": share_prefix,
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
    _save_adapter(
        model,
        adapter_dir,
        config.base_model,
        builder,
        label_set,
        template,
        record,
        max_chunk_tokens=config.max_chunk_tokens,
    )
    _say(
        f"Saved the adapter to {adapter_dir} (step {trainer.state.global_step}, loss "
        f"{record['training']['final_loss']}, {record['training']['tokens_per_second'] or 0:,.0f} "
        f"tokens/s, peak RSS {fmt_mib(memory.peak_rss_mib)} MiB)",
        config.progress,
    )
    return adapter_dir


def _save_adapter(
    model: Any,
    adapter_dir: Path,
    base_model: str,
    builder: PromptBuilder,
    label_set: LabelSet,
    template: PromptTemplate,
    record: Mapping[str, Any],
    max_chunk_tokens: int | None = None,
) -> None:
    """Write the adapter folder next to its final place, then swap it in."""
    tmp = adapter_dir.with_name(f".{adapter_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
    # Name the base model by the reference the user gave, not by a cache path. (Set only in the
    # saved file: peft looks the name up as a folder or a hub repo when it saves.)
    config_file = tmp / "adapter_config.json"
    adapter_config = json.loads(config_file.read_text(encoding="utf8"))
    adapter_config["base_model_name_or_path"] = base_model
    config_file.write_text(
        json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf8"
    )
    # peft's model card names the base model by its cache path and is boilerplate otherwise.
    (tmp / "README.md").unlink(missing_ok=True)
    prompt = {
        "labels": list(label_set.labels),
        "label_definitions": dict(label_set.definitions),
        "template": template.to_dict(),
        "prompt_fingerprint": builder.fingerprint,
        "max_chunk_tokens": max_chunk_tokens,
    }
    (tmp / PROMPT_TEMPLATE_FILE).write_text(
        json.dumps(prompt, indent=2, ensure_ascii=False) + "\n", encoding="utf8"
    )
    (tmp / TRAINING_RECORD_FILE).write_text(
        json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf8"
    )
    pickles = [p.name for p in tmp.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if pickles:
        raise RuntimeError(f"Refusing to publish an adapter with pickle files: {pickles}")
    if adapter_dir.exists():
        old = adapter_dir.with_name(f".{adapter_dir.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.rename(adapter_dir, old)
        os.rename(tmp, adapter_dir)
        shutil.rmtree(old)
    else:
        os.rename(tmp, adapter_dir)


# -- command line ----------------------------------------------------------------------------------


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


def load_training_examples(
    paths: Sequence[str | Path],
    exclude: Sequence[str | Path] = (),
    dedupe: bool = True,
) -> list[Example]:
    """Read and join training files; drop repeated texts and texts that occur in `exclude`."""
    examples: list[Example] = []
    for path in paths:
        examples.extend(read_examples(path))
    n_read = len(examples)
    if dedupe:
        examples = deduplicate(examples)
    excluded: list[Example] = []
    for path in exclude:
        excluded.extend(read_examples(path))
    if excluded:
        examples = remove_shared(examples, excluded)
    _say(
        f"{n_read} training examples read, {n_read - len(examples)} removed as repeats or "
        f"texts of {', '.join(map(str, exclude)) or 'excluded files'}: {len(examples)} left"
    )
    return examples


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


if __name__ == "__main__":
    raise SystemExit(main())
