"""The settings of a fine-tuning run (`FinetuneConfig`) and their checks before weights load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from spacy_medllm.core.prompts import PromptTemplate

# "run": every answer token weighs the same over the run (the summed loss of a step divided by
# the run's mean answer tokens per step); "batch": by the step's own answer tokens (the
# transformers default, which gives short answers in a short-answer batch more weight).
LOSS_NORMALIZATIONS = ("run", "batch")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")


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
    num_train_epochs: None (the default) scales training to the data (`auto_epochs`: about 2,000
    records seen, 1 to 3 epochs); max_steps > 0 overrides it. max_empty_share: at most this share of
    the training records are texts (or pieces) without an entity; more are sampled away
    (deterministically, by a hash of the text and the seed), so that a corpus where most texts are
    empty does not teach the model to answer `[]`; None keeps every text. max_chunk_tokens: cut
    every training text into sentence-aligned pieces of at most this many text tokens, exactly as
    `medllm_ner` with the same `max_chunk_tokens` cuts a document at inference (`chunk_examples`),
    so that a model that will read abstracts piece by piece is trained on such pieces; a piece
    boundary never cuts a gold span. The value is saved with the prompt and becomes the pipeline's
    default when it is assembled (None: whole texts). Records longer than max_length tokens are
    dropped, never truncated. learning_rate: 1e-3 suits LoRA on a 135 M model with a few hundred
    records (one epoch on the seed e-mails: seed P 0.815 / R 0.787 at 1e-3, 0.715 / 0.707 at 2e-4);
    lower it for larger models. bf16: None means on where bfloat16 is native (a CUDA GPU that
    supports it, or a CPU with AMX or AVX512-BF16), off elsewhere. num_threads: torch CPU threads
    (0: torch's default). share_prefix: run the prompt head that all records of a batch share
    (system prompt, chat template) once per batch instead of once per record (`PaddingCollator`);
    same loss and gradients. Used on one process without gradient checkpointing or 4-bit weights.
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
    num_train_epochs: float | None = None
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_length: int = 1024
    max_chunk_tokens: int | None = None
    max_empty_share: float | None = 0.33
    loss_normalization: str = "run"
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
        config.num_train_epochs is None or config.num_train_epochs > 0,
        f"num_train_epochs must be positive (None: scaled to the data), got "
        f"{config.num_train_epochs}",
    )
    need(
        config.loss_normalization in LOSS_NORMALIZATIONS,
        f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, got "
        f"{config.loss_normalization!r}",
    )
    need(
        config.max_empty_share is None or 0.0 <= config.max_empty_share < 1.0,
        f"max_empty_share must be in [0, 1) or None (keep every text), got "
        f"{config.max_empty_share}",
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


# Records a run sees when num_train_epochs is None (`auto_epochs`), and the epochs it may take.
AUTO_RECORDS = 2000
AUTO_EPOCHS = (1.0, 3.0)


def auto_epochs(n_records: int, target: int = AUTO_RECORDS) -> float:
    """Epochs that show the model about `target` records: more passes over small data (3 over
    676 seed e-mails), one over large data; rounded to a tenth."""
    low, high = AUTO_EPOCHS
    if n_records <= 0:
        return low
    return round(min(high, max(low, target / n_records)), 1)
