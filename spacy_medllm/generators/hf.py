"""The Hugging Face generator: a transformers causal LM, an optional PEFT LoRA adapter, greedy.

Importing this module and building an `HFGenerator` imports neither torch, transformers nor peft:
they load on the first call or in `initialize()`, so building or loading a pipeline stays cheap.

The base model is given by reference (a packaged alias, a local folder or a hub id; see
`spacy_medllm.generators.packaged`). A pipeline saved with `to_disk` holds `generator.json` and, if there is one,
the adapter (safetensors only); never the base model's weights.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spacy.util import registry

from spacy_medllm.core.confidence import ScoredResponse
from spacy_medllm.generators.chat import render_prompt
from spacy_medllm.generators.packaged import cpu_supports_bf16, file_sha256, resolve_base_model

from .base import GenerationError, Prompt

logger = logging.getLogger("spacy_medllm")

CONFIG_FILE = "generator.json"
ADAPTER_DIR = "adapter"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Written by spacy_medllm.training.finetune next to the weights: copied along when present (provenance).
ADAPTER_EXTRA_FILES = ("prompt_template.json", "training_record.json")
FACTORY_NAME = "medllm.HFGenerator.v1"
DTYPES = ("auto", "float32", "bfloat16", "float16")
CONSTRAINED_MODES = (
    "off",
    "schema",
    "grounded",
)  # as spacy_medllm.generators.constrained.CONSTRAINED_MODES
QUANTIZE_MODES = ("none", "int8")
# End-of-turn markers of common chat templates; generation also stops at those the vocab has.
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")
# Tokenizers without a real limit report a huge model_max_length; ignore values above this.
_SANE_MAX_LENGTH = 10_000_000


def validate_quantization(load_in_4bit: bool, cuda_available: bool, device: str = "auto") -> None:
    """Raise a clear ValueError when 4-bit loading is asked for where it cannot work.

    4-bit loading (bitsandbytes NF4) runs on CUDA GPUs only. `HFGenerator` calls this in
    `initialize()`, before any weights are read: finding out whether CUDA is available means
    importing torch, which building a generator must not do.
    """
    if not load_in_4bit:
        return
    fix = (
        "Set load_in_4bit = false (config: [components.<name>.generator] load_in_4bit = false, or "
        "HFGenerator(load_in_4bit=False)) to load the model in full precision instead."
    )
    if device == "cpu" or device.startswith("mps"):
        raise ValueError(f"load_in_4bit = true needs a CUDA GPU but device = {device!r}. {fix}")
    if not cuda_available:
        raise ValueError(
            "load_in_4bit = true needs a CUDA GPU and the bitsandbytes package, and no CUDA device "
            f"is available on this machine. {fix}"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(
            f"load_in_4bit = true needs the bitsandbytes package (pip install bitsandbytes). {fix}"
        )


def validate_int8(quantize: str, device: str, load_in_4bit: bool, merged: bool) -> None:
    """Raise a clear ValueError where int8 weights cannot work (before any weights are read).

    merged: False when a LoRA adapter would stay unmerged (merge_adapter = false)."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if quantize == "none":
        return
    if device != "cpu":
        raise ValueError(
            f"quantize = 'int8' runs on the CPU only (torch's dynamic int8 Linear kernels), but "
            f"the device is {device!r}. On a GPU use dtype = 'bfloat16' or load_in_4bit = true."
        )
    if load_in_4bit:
        raise ValueError("quantize = 'int8' and load_in_4bit = true exclude each other.")
    if not merged:
        raise ValueError(
            "quantize = 'int8' needs merge_adapter = true: the LoRA weights are folded into the "
            "base model before its Linear layers are quantized."
        )


def quantize_int8(model: Any) -> Any:
    """The model with every nn.Linear replaced by torch's dynamic int8 Linear (weights stored in
    int8 per output channel, activations quantized per batch on the fly).

    CPU decoding streams every weight from memory at each step, so a quarter of the bytes makes
    a step cheaper (training/reports/decode.md: a batch-8 step 98 instead of 240 ms). torch
    2.13 marks `torch.ao.quantization.quantize_dynamic` as deprecated in favour of torchao, but
    torchao 0.18's int8 configs ran a SmolLM2-sized MLP at 1.2x (weight-only) and 0.1x (dynamic
    activations) of float32's speed in eager mode on the 2-core AMD machine, so the torch API is
    used and its warning silenced. Answers change, and for a model as small as SmolLM2-135M far
    too much (seed e-mails: F1 0.533 instead of 0.860, README "Constrained decoding"): measure
    F1 before relying on it.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def check_adapter_dir(adapter: str | Path) -> Path:
    """The adapter folder if it holds a PEFT adapter in safetensors; a clear error otherwise."""
    path = Path(adapter).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"The LoRA adapter folder {str(path)!r} does not exist. Give a folder with "
            f"{' and '.join(ADAPTER_FILES)}, or adapter = null for the base model alone."
        )
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"The LoRA adapter folder {str(path)!r} has no adapter_config.json."
        )
    if not (path / "adapter_model.safetensors").is_file():
        if any(path.glob("adapter_model*.bin")):
            raise ValueError(
                f"The LoRA adapter in {str(path)!r} is saved as a pickle (adapter_model.bin), "
                "which is not loaded for safety. Save it again with safe_serialization=True."
            )
        raise FileNotFoundError(
            f"The LoRA adapter folder {str(path)!r} has no adapter_model.safetensors."
        )
    return path


def encode_prompt_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt: exactly what inference feeds the model, and training must.

    Chat templates usually write the BOS themselves (SmolLM2's BOS is `<|im_start|>`); then the
    tokenizer must not add special tokens again. Texts without the BOS (the plain template) get the
    tokenizer's own special tokens, as the model saw in pretraining.
    """
    bos = getattr(tokenizer, "bos_token", None)
    add_special_tokens = not (bos and bos in text)
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def float32_output_head(model: Any) -> Any:
    """Prepare the model's output head to compute the logits in float32; call the returned
    function after the model is cast to a lower precision (None: the head is not a plain Linear,
    e.g. a LoRA layer left unmerged).

    Greedy answers part where two tokens are nearly tied, and bfloat16 logits (8 bits of mantissa)
    break such ties by rounding: on the seed test e-mails bfloat16 weights alone cost 0.007 F1
    unconstrained and 0.045 grounded, while a float32 head on bfloat16 layers gave float32's F1 (see
    the README's "Generation speed"). The head is untied from the input embeddings (those
    are cast), keeps its weights as they are now (float32 when loaded so) and casts its input.
    """
    import torch

    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return None
    weight = head.weight.detach().to(torch.float32).clone()
    bias = None if head.bias is None else head.bias.detach().to(torch.float32).clone()

    def install() -> None:
        head.weight = torch.nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            head.bias = torch.nn.Parameter(bias, requires_grad=False)
        head.register_forward_pre_hook(lambda module, args: (args[0].to(torch.float32), *args[1:]))

    return install


class HFGenerator:
    """Greedy generation with a transformers causal LM and an optional PEFT LoRA adapter.

    model: a packaged alias ("smollm2-135m-instruct"), a local folder or a hub id.
    adapter: a folder with adapter_config.json + adapter_model.safetensors, or None.
    device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N".
    dtype: "auto" (bfloat16 on CUDA and on a CPU that computes it natively, AMX or AVX512-BF16,
        as fine-tuning does; float32 on other CPUs and with quantize = "int8"), "float32",
        "bfloat16", "float16".
    load_in_4bit: NF4 4-bit weights via bitsandbytes; CUDA only (checked in `initialize()`).
    num_threads: if > 0, torch.set_num_threads(num_threads) when the model loads (process-wide);
        0 leaves torch's default (OMP_NUM_THREADS, else all cores).
    cache_dir: where packaged models are converted to (default: $SPACY_MEDLLM_CACHE, else
        $XDG_CACHE_HOME/spacy_medllm, else ~/.cache/spacy_medllm).
    constrained: "off"; "schema" (every answer is the trained JSON list of {"text", "label"} with
        configured labels only); "grounded" (schema, and each entity text is copied from the
        document: the last user message of the prompt). See `spacy_medllm.generators.constrained`.
    labels: the labels constrained answers may use; `medllm_ner` sets them (`set_labels`).
    stop_at_json_end: a row whose response starts with `[` stops as soon as that list closes,
        instead of generating text that would be thrown away (other responses run as before).
    merge_adapter: merge the LoRA weights into the base model after loading (same answers up to
        float rounding, faster; not with load_in_4bit).
    torch_compile: wrap the model's forward in torch.compile (worth it on GPU for long runs; the
        first batches are slow while it compiles).
    quantize: "none", or "int8" (experimental): after the adapter is merged, every Linear layer
        gets int8 weights (torch's dynamic quantization; CPU only). Cheaper CPU decoding steps,
        different answers (SmolLM2-135M loses most of its recall); see `quantize_int8`.
    prefix_cache: compute the key/value cache of the prompt head every prompt shares (system
        message and few-shot examples) once, and start each batch from a copy of it; only the
        document's tokens are then read per row. Same greedy answers (up to float rounding);
        on CPU it saves about half of the prompt reading for an e-mail and most of it for a
        sentence.

    jump_forward: the tokens the schema forces next (`"text": "` after `{`, `, "label": "` after
        an entity's closing quote, the rest of a label once its start is unique) go into the same
        forward pass as the model's next token, as drafts (needs the labels; unconstrained, only
        while the answer follows the schema).
    draft_tokens: up to this many draft tokens copied from the document while the model writes
        an entity text (the document's continuation of the entity so far, as in prompt-lookup
        decoding); 0: none. Drafts of either kind count only where they are the token the model
        would have picked (its greedy choice, constrained or not), so answers are those of one
        token per step (up to float rounding), in fewer steps; see `_decode_with_drafts`. With
        both off, `generate` decodes.
    float32_logits: with lower-precision weights (bfloat16, float16), compute the logits with a
        float32 copy of the output head (`float32_output_head`; untied from the embeddings): greedy
        answers then part from float32's far less often. False saves the head's extra memory
        (about 670 MB for Gemma-3's 262k-token vocabulary, 110 MB for SmolLM2).

    Decoding is greedy with the KV cache on; batches are sorted by prompt length and padded after
    the shared prompt head (left-padded without a prefix cache); dtype "auto" means bfloat16 on
    CUDA and on CPUs with native bfloat16 (there about 1.5-2 times as fast as float32 for a
    batch; see the README's "Generation speed").
    """

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        adapter: str | None = None,
        batch_size: int = 8,
        max_new_tokens: int = 256,
        device: str = "auto",
        dtype: str = "auto",
        load_in_4bit: bool = False,
        num_threads: int = 0,
        cache_dir: str | None = None,
        constrained: str = "off",
        labels: Sequence[str] | None = None,
        stop_at_json_end: bool = True,
        torch_compile: bool = False,
        merge_adapter: bool = True,
        prefix_cache: bool = True,
        quantize: str = "none",
        jump_forward: bool = True,
        draft_tokens: int = 4,
        float32_logits: bool = True,
    ) -> None:
        if not model:
            raise ValueError("HFGenerator needs a model: a packaged alias, a folder or a hub id.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if not (device in ("auto", "cpu", "cuda", "mps") or device.startswith("cuda:")):
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
            )
        if load_in_4bit and device in ("cpu", "mps"):
            validate_quantization(load_in_4bit, cuda_available=False, device=device)
        if constrained not in CONSTRAINED_MODES:
            raise ValueError(f"constrained must be one of {CONSTRAINED_MODES}, got {constrained!r}")
        # "auto" is checked again in initialize(), once it is known to mean the CPU.
        on_cpu = "cpu" if device == "auto" else device
        validate_int8(quantize, on_cpu, load_in_4bit, merge_adapter or not adapter)
        if quantize == "int8" and dtype not in ("auto", "float32"):
            raise ValueError(f"quantize = 'int8' starts from float32 weights, not dtype {dtype!r}")
        if draft_tokens < 0:
            raise ValueError(f"draft_tokens must be 0 or more, got {draft_tokens}")
        if constrained != "off" and max_new_tokens < 2:
            raise ValueError("constrained decoding needs max_new_tokens >= 2 (the answer `[]`)")
        self.model = str(model)
        self.adapter = str(adapter) if adapter else None
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        self.dtype = dtype
        self.load_in_4bit = bool(load_in_4bit)
        self.num_threads = int(num_threads)
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.constrained = constrained
        self.labels: list[str] = list(labels or [])
        self.stop_at_json_end = bool(stop_at_json_end)
        self.torch_compile = bool(torch_compile)
        self.merge_adapter = bool(merge_adapter)
        self.prefix_cache = bool(prefix_cache)
        self.quantize = quantize
        self.jump_forward = bool(jump_forward)
        self.draft_tokens = int(draft_tokens)
        self.float32_logits = bool(float32_logits)
        # Running totals for benchmarks: answer tokens kept, decoding steps run, batches, and
        # prompt tokens read from the shared-prefix cache instead of being run through the model.
        self.stats = {
            "generated_tokens": 0,
            "decode_steps": 0,
            "batches": 0,
            "prefix_cached_tokens": 0,
            "draft_tokens": 0,
            "accepted_draft_tokens": 0,
            # Wall time of the draft loop's forward passes: reading prompts, decoding steps.
            "prompt_seconds": 0.0,
            "step_seconds": 0.0,
            "step_tokens": 0,  # tokens fed to decoding steps, padding included
        }
        self._reset()

    def set_labels(self, labels: Sequence[str]) -> None:
        """The labels constrained answers may use (`medllm_ner` calls this with its label set)."""
        self.labels = list(labels)

    # -- loading ---------------------------------------------------------------------------------

    def _reset(self) -> None:
        """Forget the loaded model and tokenizer; the next use loads them again."""
        self._resolved: str | None = None
        self._tokenizer: Any = None
        self._config: Any = None
        self._model: Any = None
        self._torch_device: str | None = None
        self._stop_ids: list[int] = []
        self._token_constraint: Any = None
        self._prefix_ids: dict[str, list[int]] = {}
        self._prefix_kv: dict[tuple[int, ...], Any] = {}
        self._loaded_state: tuple[str, str | None, str | None] | None = None

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def resolved_model(self) -> str:
        """The folder (or hub id) the base model loads from; a packaged model is converted once."""
        if self._resolved is None:
            self._resolved = resolve_base_model(self.model, self.cache_dir)
        return self._resolved

    def _state(self) -> tuple[str, str | None, str | None]:
        return (self.model, self.adapter, self.adapter_sha256())

    def _ensure_tokenizer(self) -> Any:
        """Tokenizer and config only: enough to render, count and budget prompts without weights."""
        if self._tokenizer is None:
            from transformers import AutoConfig, AutoTokenizer

            base = self.resolved_model()
            tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=False)
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._config = AutoConfig.from_pretrained(base, trust_remote_code=False)
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def tokenizer(self) -> Any:
        return self._ensure_tokenizer()

    def _effective_device_and_dtype(self, torch: Any) -> tuple[str, Any]:
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.dtype == "auto":
            native_bf16 = device.startswith("cuda") or (
                device == "cpu" and self.quantize == "none" and cpu_supports_bf16()
            )
            dtype = torch.bfloat16 if native_bf16 else torch.float32
        else:
            dtype = getattr(torch, self.dtype)
        return device, dtype

    def initialize(self) -> None:
        """Load tokenizer, model and adapter now (a no-op when they are loaded).

        Checks come before any weights are read: 4-bit needs CUDA (see `validate_quantization`), the
        adapter folder must exist and hold safetensors, the base model must be found.
        """
        if self._model is not None:
            return
        import torch

        validate_quantization(self.load_in_4bit, torch.cuda.is_available(), self.device)
        adapter = check_adapter_dir(self.adapter) if self.adapter else None
        if self.num_threads > 0:
            torch.set_num_threads(self.num_threads)
        device, dtype = self._effective_device_and_dtype(torch)
        validate_int8(self.quantize, device, self.load_in_4bit, self.merge_adapter or not adapter)
        tokenizer = self._ensure_tokenizer()

        from transformers import AutoModelForCausalLM

        # On the CPU the weights load in float32 and are cast once the adapter is merged: merging
        # into bfloat16 weights would round the small LoRA product away, and the output head
        # keeps the float32 values (see `float32_output_head`).
        cast_after_load = not self.load_in_4bit and device == "cpu" and dtype != torch.float32
        kwargs: dict[str, Any] = {
            "dtype": torch.float32 if cast_after_load else dtype,
            "use_safetensors": True,
            "trust_remote_code": False,
        }
        if self.load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
            kwargs["device_map"] = {"": torch.device(device)}
        model = AutoModelForCausalLM.from_pretrained(self.resolved_model(), **kwargs)
        if not self.load_in_4bit:
            model = model.to(device)
        if adapter is not None:
            from spacy_medllm.generators.packaged import quiet_optional_kernels

            quiet_optional_kernels()
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
            if self.merge_adapter and not self.load_in_4bit:
                # Folding the LoRA product into the weights once saves two small matmuls per
                # adapted layer and token (about a quarter of CPU decoding time for SmolLM2).
                model = model.merge_and_unload()
        install_head = None
        if self._float32_head(str(dtype).replace("torch.", "")):
            install_head = float32_output_head(model)
        if cast_after_load:
            model = model.to(dtype)
        if install_head is not None:
            install_head()
        model.eval()
        if self.quantize == "int8":
            model = quantize_int8(model)
        if self.torch_compile:
            model.forward = torch.compile(model.forward, dynamic=True)
        self._model = model
        self._torch_device = device
        self._stop_ids = self._find_stop_ids(tokenizer, model)
        self._loaded_state = self._state()

    @staticmethod
    def _find_stop_ids(tokenizer: Any, model: Any) -> list[int]:
        ids = set()
        for source in (
            getattr(model.generation_config, "eos_token_id", None),
            tokenizer.eos_token_id,
        ):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        vocab = tokenizer.get_vocab()
        ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
        return sorted(ids)

    # -- prompts ---------------------------------------------------------------------------------

    def render(self, prompt: Prompt) -> str:
        """The text the model sees for `prompt` (through `spacy_medllm.generators.chat.render_prompt`)."""
        return render_prompt(self.tokenizer, prompt)

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """The exact token ids fed to the model for `prompt`; fine-tuning must use the same."""
        return encode_prompt_text(self.tokenizer, self.render(prompt))

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return len(self.encode_prompt(prompt))

    def context_length(self) -> int:
        """The context: max_position_embeddings, capped by a sane tokenizer model_max_length."""
        tokenizer = self._ensure_tokenizer()
        config = self._config
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        context = None
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                context = value
                break
        limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit <= _SANE_MAX_LENGTH:
            context = min(context, limit) if context else limit
        if context is None:
            raise GenerationError(f"Cannot tell the context length of {self.model!r}.")
        return context

    def prompt_token_budget(self) -> int | None:
        context = self.context_length()
        budget = context - self.max_new_tokens
        if budget <= 0:
            raise ValueError(
                f"max_new_tokens = {self.max_new_tokens} leaves no room for a prompt in the "
                f"{context}-token context of {self.model!r}; lower max_new_tokens."
            )
        return budget

    # -- generation ------------------------------------------------------------------------------

    def __call__(self, prompts: Sequence[Prompt]) -> list[str]:
        return [scored.text for scored in self._generate(prompts, with_scores=False)]

    def generate_scored(self, prompts: Sequence[Prompt]) -> list[ScoredResponse]:
        """Responses with each answer token's log-probability and the characters it wrote.

        The log-probabilities are the model's own (log-softmax of its logits, before constrained
        decoding masks anything), so a token the constraint forced on an unwilling model scores low.
        """
        return self._generate(prompts, with_scores=True)

    def token_constraint(self) -> Any:
        """The vocabulary trie of `spacy_medllm.generators.constrained`, built once per loaded tokenizer."""
        if self._token_constraint is None:
            from spacy_medllm.generators.constrained import TokenConstraint

            self.initialize()
            self._token_constraint = TokenConstraint(self._tokenizer, self._stop_ids)
        return self._token_constraint

    def _automata(self, prompts: Sequence[Prompt]) -> list[Any]:
        from spacy_medllm.generators.constrained import AnswerAutomaton

        if not self.labels:
            raise GenerationError(
                f"constrained = {self.constrained!r} needs the labels answers may use: "
                "HFGenerator(labels=[...]) or generator.set_labels([...]) (medllm_ner does this)."
            )
        automata = []
        for i, prompt in enumerate(prompts):
            document = None
            if self.constrained == "grounded":
                if not prompt or prompt[-1].get("role") != "user":
                    raise GenerationError(
                        f'constrained = "grounded": prompt {i} does not end with a user message '
                        "holding the document"
                    )
                document = prompt[-1]["content"]
            automata.append(AnswerAutomaton(self.labels, document))
        return automata

    def _generate(self, prompts: Sequence[Prompt], with_scores: bool) -> list[ScoredResponse]:
        if not prompts:
            return []
        self.initialize()
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        tokenizer, model = self._tokenizer, self._model
        encoded = [self.encode_prompt(prompt) for prompt in prompts]
        budget = self.prompt_token_budget()
        for i, ids in enumerate(encoded):
            if len(ids) > budget:
                raise GenerationError(
                    f"Prompt {i} has {len(ids)} tokens; with max_new_tokens = "
                    f"{self.max_new_tokens} only {budget} fit the context of {self.model!r}. "
                    'Split long texts (medllm_ner\'s long_documents = "split") or lower '
                    "max_new_tokens."
                )
        automata = self._automata(prompts) if self.constrained != "off" else None
        drafting = self.uses_drafts
        constraint = (
            self.token_constraint() if automata or self.stop_at_json_end or drafting else None
        )
        draft_automata = automata
        if drafting and automata is None:
            # Unconstrained: an automaton only proposes the schema's forced tokens while the
            # answer follows the schema (the model's own choices decide; none without labels).
            from spacy_medllm.generators.constrained import AnswerAutomaton

            draft_automata = [
                AnswerAutomaton(self.labels) if self.labels else None for _ in prompts
            ]
        pad_id = tokenizer.pad_token_id
        generation_config = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=pad_id,
            eos_token_id=self._stop_ids or None,
            return_dict_in_generate=True,
        )
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[ScoredResponse | None] = [None] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(encoded[i]) for i in batch)
            shared = self._batch_prefix([prompts[i] for i in batch], [encoded[i] for i in batch])
            # Padding goes after the shared head (left padding when there is none): every row's
            # tokens stay contiguous, and generate counts positions from the attention mask.
            input_ids = [
                encoded[i][:shared] + [pad_id] * (width - len(encoded[i])) + encoded[i][shared:]
                for i in batch
            ]
            mask = [
                [1] * shared + [0] * (width - len(encoded[i])) + [1] * (len(encoded[i]) - shared)
                for i in batch
            ]
            extra: dict[str, Any] = {}
            if shared:
                extra[self._cache_argument()] = self._prefix_cache_for(
                    encoded[batch[0]][:shared], len(batch)
                )
                self.stats["prefix_cached_tokens"] += shared * len(batch)
            if drafting:
                rows = self._decode_with_drafts(
                    [prompts[i] for i in batch],
                    input_ids,
                    mask,
                    shared,
                    extra,
                    constraint,
                    [draft_automata[i] for i in batch],
                    with_scores,
                )
                for (tokens, scores), i in zip(rows, batch, strict=True):
                    results[i] = self._response(tokens, scores)
                self.stats["batches"] += 1
                continue
            processors = LogitsProcessorList()
            stopping = StoppingCriteriaList()
            recorder = None
            if with_scores:
                from spacy_medllm.generators.constrained import TokenLogprobRecorder

                recorder = TokenLogprobRecorder()
                processors.append(recorder)  # first: it must see the model's own logits
            if automata is not None:
                from spacy_medllm.generators.constrained import JsonAnswerLogitsProcessor

                processors.append(
                    JsonAnswerLogitsProcessor(
                        constraint, [automata[i] for i in batch], width, self.max_new_tokens
                    )
                )
            elif self.stop_at_json_end:
                from spacy_medllm.generators.constrained import JsonEndStopping

                stopping.append(JsonEndStopping(constraint.token_bytes, len(batch), width))
            with torch.inference_mode():
                output = model.generate(
                    input_ids=torch.tensor(input_ids, device=self._torch_device),
                    attention_mask=torch.tensor(mask, device=self._torch_device),
                    generation_config=generation_config,
                    logits_processor=processors,
                    stopping_criteria=stopping,
                    **extra,
                )
                logprobs = recorder.logprobs(output.sequences) if recorder is not None else None
            self.stats["decode_steps"] += output.sequences.shape[1] - width
            self.stats["batches"] += 1
            for row, i in enumerate(batch):
                new_tokens = self._answer_tokens(output.sequences[row, width:].tolist())
                scores = None if logprobs is None else logprobs[row, : len(new_tokens)].tolist()
                results[i] = self._response(new_tokens, scores)
        return [r if r is not None else ScoredResponse(text="") for r in results]

    def _response(self, tokens: list[int], scores: list[float] | None) -> ScoredResponse:
        """One row's answer tokens as a response (scored when `scores` are given); counted."""
        self.stats["generated_tokens"] += len(tokens)
        if scores is None:
            return ScoredResponse(text=self._tokenizer.decode(tokens, skip_special_tokens=True))
        return self._scored(tokens, scores)

    def _decode_with_drafts(
        self,
        prompts: Sequence[Prompt],
        input_ids: list[list[int]],
        mask: list[list[int]],
        shared: int,
        extra: dict[str, Any],
        constraint: Any,
        automata: Sequence[Any],
        with_scores: bool,
    ) -> list[tuple[list[int], list[float] | None]]:
        """Greedy decoding of one batch (constrained or not), several tokens per forward pass where
        they can be guessed; each row's answer tokens (stop tokens excluded) and, with
        `with_scores`, their log-probabilities.

        Each step picks every unfinished row's best (allowed) token from the model's logits, then
        feeds it together with draft tokens: the tokens the schema forces next (`jump_forward`)
        or, inside an entity text, the document's continuation of what the entity says so far
        (`draft_tokens`). One forward pass reads them all; a draft counts only if it is the
        token the row would have picked at its position (the (constrained) argmax there), so the
        answers are those of one token per step, in fewer steps. Rows feed different numbers of
        tokens and keep different numbers of them: the step's input is right-padded, and the
        padding and rejected drafts stay in the key/value cache, masked out by the attention
        mask, while every row's positions count only its kept tokens. A row ends when its answer
        closes (constrained, no end-of-turn step is needed: the automaton allows nothing else;
        unconstrained, at an end-of-turn token or, with stop_at_json_end, when its JSON list
        closes) or at `max_new_tokens`.
        """
        import torch

        from spacy_medllm.generators.constrained import DocumentDrafts, JsonScanner

        model, device = self._model, self._torch_device
        pad_id = self._tokenizer.pad_token_id
        cache_arg = self._cache_argument()
        attention = torch.tensor(mask, device=device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        kwargs: dict[str, Any] = {cache_arg: extra.get(cache_arg)} if shared else {}
        clock = time.perf_counter()
        with torch.inference_mode():
            output = model(
                input_ids=torch.tensor(input_ids, device=device)[:, shared:],
                attention_mask=attention,
                position_ids=positions[:, shared:],
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
        self.stats["prompt_seconds"] += time.perf_counter() - clock
        cache = getattr(output, "cache", None) or output.past_key_values
        logits = output.logits[:, -1, :]
        rows = len(input_ids)
        table = constraint.token_bytes
        drafters = [
            DocumentDrafts(constraint, prompt[-1]["content"], self.draft_tokens)
            if self.draft_tokens > 0
            and prompt
            and prompt[-1].get("role") == "user"
            and isinstance(prompt[-1].get("content"), str)
            else None
            for prompt in prompts
        ]
        seen = [sum(row) for row in mask]  # kept tokens of each row so far: its next position
        constrained = self.constrained != "off"
        # Unconstrained rows follow the schema's automaton as far as the answer stays in it (a
        # None state: it left the schema, or there are no labels), and stop at the end of
        # their JSON list like `generate` with stop_at_json_end.
        states = [automaton.start() if automaton else None for automaton in automata]
        scanners = [JsonScanner() if self.stop_at_json_end else None for _ in range(rows)]
        tokens: list[list[int]] = [[] for _ in range(rows)]
        answers = [bytearray() for _ in range(rows)]
        scores: list[list[float]] = [[] for _ in range(rows)]
        active = [True] * rows
        # As in `_answer_tokens`: an answer ends at a stop token or (unconstrained) a padding one.
        stop_ids = set(constraint.stop_ids) | ({pad_id} if pad_id is not None else set())
        limit = self.max_new_tokens

        def choose(row: int, row_logits: Any) -> int | None:
            if not constrained:
                return int(row_logits.argmax())
            allowed = constraint.allowed_ids(automata[row], states[row], limit - len(tokens[row]))
            if allowed.numel() == 0:  # cannot happen: a closing path always fits
                return None
            allowed = allowed.to(device)
            return int(allowed[row_logits[allowed].argmax()])

        def keep(row: int, token_id: int, row_logits: Any) -> None:
            data = table[token_id] or b""
            if states[row] is not None:
                states[row] = constraint.advance(automata[row], states[row], token_id)
            tokens[row].append(token_id)
            answers[row] += data
            if with_scores:
                scores[row].append(float(torch.log_softmax(row_logits.float(), -1)[token_id]))
            done = states[row] is not None and automata[row].is_done(states[row])
            if scanners[row] is not None and scanners[row].feed(data):
                done = True
            if done or len(tokens[row]) >= limit:
                active[row] = False

        live = list(range(rows))  # the rows still decoding: row k of the tensors is live[k]
        while True:
            # One decoding step per round of model choices (as generate counts one per new token).
            self.stats["decode_steps"] += 1
            feeds: dict[int, list[int]] = {}
            for k, row in enumerate(live):
                if not active[row]:
                    continue
                pick = choose(row, logits[k])
                if pick is None or pick in stop_ids:
                    active[row] = False
                    continue
                keep(row, pick, logits[k])
                if not active[row]:
                    continue
                left = limit - len(tokens[row])
                drafts = (
                    constraint.forced_tokens(automata[row], states[row], left)
                    if self.jump_forward and states[row] is not None
                    else []
                )
                if not drafts and drafters[row] is not None:
                    drafts = drafters[row].draft(bytes(answers[row]), left)
                feeds[row] = [pick, *drafts]
                self.stats["draft_tokens"] += len(drafts)
            if not feeds:
                break
            if len(feeds) < len(live):
                # Finished rows leave the batch (generate would keep computing them).
                index = [k for k, row in enumerate(live) if row in feeds]
                selected = torch.tensor(index, device=device)
                cache.batch_select_indices(selected)
                attention = attention[selected]
                live = [live[k] for k in index]
            width = max(len(feed) for feed in feeds.values())
            step_ids = [feeds[row] + [pad_id] * (width - len(feeds[row])) for row in live]
            step_mask = torch.tensor(
                [[1] * len(feeds[row]) + [0] * (width - len(feeds[row])) for row in live],
                device=device,
            )
            step_positions = [
                [seen[row] + min(k, len(feeds[row]) - 1) for k in range(width)] for row in live
            ]
            attention = torch.cat([attention, step_mask], dim=1)
            clock = time.perf_counter()
            with torch.inference_mode():
                output = model(
                    input_ids=torch.tensor(step_ids, device=device),
                    attention_mask=attention,
                    position_ids=torch.tensor(step_positions, device=device),
                    use_cache=True,
                    logits_to_keep=0 if width > 1 else 1,
                    **{cache_arg: cache},
                )
            self.stats["step_seconds"] += time.perf_counter() - clock
            self.stats["step_tokens"] += len(live) * width
            cache = getattr(output, "cache", None) or output.past_key_values
            step_logits = output.logits
            ends = []
            for k, row in enumerate(live):
                feed = feeds[row]
                kept = 1
                for j in range(1, len(feed)):
                    # A draft counts if it is what the row would have picked after the kept ones.
                    if not active[row] or choose(row, step_logits[k, j - 1]) != feed[j]:
                        break
                    keep(row, feed[j], step_logits[k, j - 1])
                    kept += 1
                self.stats["accepted_draft_tokens"] += kept - 1
                step_mask[k, kept:] = 0  # rejected drafts: never attended to again
                seen[row] += kept
                ends.append(kept - 1)
            attention[:, -width:] = step_mask
            logits = step_logits[torch.arange(len(live), device=device), torch.tensor(ends)]
            if not any(active[row] for row in live):
                break
        return [(tokens[row], scores[row] if with_scores else None) for row in range(rows)]

    # Shorter shared heads are not worth a cache: the copy costs more than reading them.
    MIN_PREFIX_TOKENS = 16
    MAX_CACHED_PREFIXES = 4

    def _shared_head(self, prompt: Prompt) -> list[int]:
        """The token ids every prompt with `prompt`'s messages before the last one starts with.

        Found by encoding those messages with two different one-letter documents and keeping the
        common start, so it holds for any chat template (including one that adds a default
        system message) and never assumes where a tokenizer merges across the boundary.
        """
        head = list(prompt[:-1])
        role = prompt[-1].get("role", "user") if prompt else "user"
        key = json.dumps([head, role], ensure_ascii=False, sort_keys=True)
        if key not in self._prefix_ids:
            first = self.encode_prompt([*head, {"role": role, "content": "a"}])
            second = self.encode_prompt([*head, {"role": role, "content": "b"}])
            self._prefix_ids[key] = first[: common_prefix_length(first, second)]
        return self._prefix_ids[key]

    def _batch_prefix(self, prompts: Sequence[Prompt], encoded: Sequence[list[int]]) -> int:
        """How many leading tokens all rows of a batch share and the prefix cache can serve (0:
        none). Each row keeps at least one token of its own for the model to read."""
        # Not with 4-bit weights: that path runs on CUDA only and has not been checked here.
        if not self.prefix_cache or not prompts or self.load_in_4bit:
            return 0
        head = self._shared_head(prompts[0])
        shared = min(common_prefix_length(head, ids) for ids in encoded)
        shared = min(shared, min(len(ids) for ids in encoded) - 1)
        return shared if shared >= self.MIN_PREFIX_TOKENS else 0

    def _cache_argument(self) -> str:
        """The keyword a key/value cache goes to `generate` by."""
        return cache_keyword(self._model)

    def _prefix_cache_for(self, prefix: list[int], rows: int) -> Any:
        """A fresh key/value cache of `prefix` for `rows` rows (the prefix runs once per model)."""
        import copy

        import torch

        # The weights' in-place version counters are part of the key: a model changed in place
        # (further training, new weights loaded into it) never reuses a stale cache.
        weights = sum(param._version for param in self._model.parameters())
        key = (weights, *prefix)
        stored = self._prefix_kv.pop(key, None)
        if stored is None:
            with torch.inference_mode():
                output = self._model(
                    input_ids=torch.tensor([prefix], device=self._torch_device),
                    use_cache=True,
                    logits_to_keep=1,
                )
            # transformers 5 calls it `cache` (`past_key_values` before).
            stored = getattr(output, "cache", None) or output.past_key_values
        self._prefix_kv[key] = stored  # most recently used last
        while len(self._prefix_kv) > self.MAX_CACHED_PREFIXES:
            self._prefix_kv.pop(next(iter(self._prefix_kv)))
        with torch.inference_mode():
            cache = copy.deepcopy(stored)
            if rows > 1:
                cache.batch_repeat_interleave(rows)
        return cache

    def _answer_tokens(self, tokens: list[int]) -> list[int]:
        """The generated tokens up to the first stop or padding token (rows that finished early)."""
        stops = {*self._stop_ids, self._tokenizer.pad_token_id}
        for k, token in enumerate(tokens):
            if token in stops:
                return tokens[:k]
        return tokens

    def _scored(self, tokens: list[int], logprobs: list[float]) -> ScoredResponse:
        """The decoded text with each token's characters: prefixes decoded one token longer each."""
        tokenizer = self._tokenizer
        prefixes = tokenizer.batch_decode(
            [tokens[: k + 1] for k in range(len(tokens))], skip_special_tokens=True
        )
        text = prefixes[-1] if prefixes else ""
        offsets = []
        previous = 0
        for prefix in prefixes:
            # A token ending inside a UTF-8 character decodes to a replacement character that the
            # next prefix replaces: it owns no characters of its own.
            end = len(prefix) if text.startswith(prefix) else previous
            offsets.append((previous, max(previous, end)))
            previous = max(previous, end)
        return ScoredResponse(text=text, logprobs=logprobs, offsets=offsets, token_ids=tokens)

    # -- identity and serialisation --------------------------------------------------------------

    def adapter_sha256(self) -> str | None:
        """sha256 of the adapter's adapter_model.safetensors, or None without an adapter."""
        if not self.adapter:
            return None
        return file_sha256(check_adapter_dir(self.adapter) / "adapter_model.safetensors")

    def describe(self) -> dict[str, Any]:
        import torch

        if self._model is not None:
            dtype = str(self._model.dtype).replace("torch.", "")
        else:
            dtype = str(self._effective_device_and_dtype(torch)[1]).replace("torch.", "")
        resolved = self.resolved_model()
        folder = Path(resolved)
        return {
            "backend": "transformers",
            "model": self.model,
            "model_folder": folder.name if folder.is_dir() else resolved,
            "adapter_sha256": self.adapter_sha256(),
            "max_new_tokens": self.max_new_tokens,
            "dtype": dtype,
            "load_in_4bit": self.load_in_4bit,
            "decoding": "greedy",
            "constrained": self.constrained,
            "labels": self.labels if self.constrained != "off" else None,
            "stop_at_json_end": self.stop_at_json_end,
            # Only when set, so response caches written before the option existed stay valid.
            **({"quantize": self.quantize} if self.quantize != "none" else {}),
            # Lower-precision weights compute the logits in float32 (`float32_output_head`).
            **({"logits": "float32"} if self._float32_head(dtype) else {}),
        }

    def _float32_head(self, dtype: str) -> bool:
        """Whether weights of `dtype` get the float32 output head (`float32_output_head`)."""
        return self.float32_logits and not self.load_in_4bit and dtype != "float32"

    @property
    def uses_drafts(self) -> bool:
        """Whether answers come from the draft-and-check loop (`_decode_with_drafts`) rather than
        `generate`: the same answers, so not part of `describe()` (the response cache key)."""
        return (self.jump_forward and bool(self.labels)) or self.draft_tokens > 0

    def config(self) -> dict[str, Any]:
        """The factory's arguments as saved in generator.json (the adapter as a relative folder)."""
        return {
            "@misc": FACTORY_NAME,
            "model": self.model,
            "adapter": ADAPTER_DIR if self.adapter else None,
            "batch_size": self.batch_size,
            "max_new_tokens": self.max_new_tokens,
            "device": self.device,
            "dtype": self.dtype,
            "load_in_4bit": self.load_in_4bit,
            "num_threads": self.num_threads,
            "constrained": self.constrained,
            "labels": self.labels or None,
            "stop_at_json_end": self.stop_at_json_end,
            "torch_compile": self.torch_compile,
            "merge_adapter": self.merge_adapter,
            "prefix_cache": self.prefix_cache,
            "quantize": self.quantize,
            "jump_forward": self.jump_forward,
            "draft_tokens": self.draft_tokens,
            "float32_logits": self.float32_logits,
        }

    def to_disk(self, path: Path) -> None:
        """Write generator.json and copy the adapter (safetensors) into `path/adapter`.

        The base model is saved by reference (the name as given); cache_dir, a machine's setting, is
        not saved.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = self.config()
        state["adapter_sha256"] = self.adapter_sha256()
        target = path / ADAPTER_DIR
        if self.adapter:
            source = check_adapter_dir(self.adapter)
            if not (target.exists() and source.resolve() == target.resolve()):
                if target.exists():
                    shutil.rmtree(target)
                target.mkdir(parents=True)
                for name in ADAPTER_FILES:
                    shutil.copyfile(source / name, target / name)
                for name in ADAPTER_EXTRA_FILES:
                    if (source / name).is_file():
                        shutil.copyfile(source / name, target / name)
        elif target.exists():
            shutil.rmtree(target)
        (path / CONFIG_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf8")

    def training_record(self) -> dict[str, Any] | None:
        """The adapter's training record (data hash, settings, time, tokens/s), if it has one."""
        if not self.adapter:
            return None
        record = Path(self.adapter) / "training_record.json"
        if not record.is_file():
            return None
        return json.loads(record.read_text(encoding="utf8"))

    def from_disk(self, path: Path) -> None:
        """Restore what `to_disk` saved: the base model reference, max_new_tokens and the adapter.

        Nothing is loaded here. The machine's settings (batch_size, device, dtype, load_in_4bit,
        num_threads, cache_dir) stay as this object was built. If a model is already loaded and
        the base model or adapter changed, it is loaded again.
        """
        path = Path(path)
        state = json.loads((path / CONFIG_FILE).read_text(encoding="utf8"))
        if state.get("model") and state["model"] != self.model:
            logger.info("generator.json sets model %r (was %r)", state["model"], self.model)
        was_loaded = self._model is not None
        old_model = self.model
        self.model = state.get("model") or self.model
        self.max_new_tokens = int(state.get("max_new_tokens", self.max_new_tokens))
        self.adapter = str(path / ADAPTER_DIR) if (path / ADAPTER_DIR).is_dir() else None
        if self.model != old_model:
            self._reset()
        elif was_loaded and self._state() != self._loaded_state:
            self._reset()
        if was_loaded and self._model is None:
            self.initialize()

    def __repr__(self) -> str:
        return (
            f"HFGenerator(model={self.model!r}, adapter={self.adapter!r}, "
            f"batch_size={self.batch_size}, max_new_tokens={self.max_new_tokens})"
        )


def cache_keyword(model: Any) -> str:
    """The keyword a key/value cache goes to the model by: `cache` since transformers renamed
    `past_key_values`."""
    return "cache" if "cache" in forward_parameters(model) else "past_key_values"


def forward_parameters(model: Any) -> Any:
    """The parameters of the underlying transformers model's forward (through a distributed
    wrapper's `.module` and a peft model, whose own forward takes **kwargs)."""
    import inspect

    base = getattr(model, "module", model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return inspect.signature(type(base).forward).parameters


def common_prefix_length(first: Sequence[int], second: Sequence[int]) -> int:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


@registry.misc(FACTORY_NAME)
def make_hf_generator(
    model: str = "smollm2-135m-instruct",
    adapter: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    device: str = "auto",
    dtype: str = "auto",
    load_in_4bit: bool = False,
    num_threads: int = 0,
    cache_dir: str | None = None,
    constrained: str = "off",
    labels: list[str] | None = None,
    stop_at_json_end: bool = True,
    torch_compile: bool = False,
    merge_adapter: bool = True,
    prefix_cache: bool = True,
    quantize: str = "none",
    jump_forward: bool = True,
    draft_tokens: int = 4,
    float32_logits: bool = True,
) -> HFGenerator:
    """A generator backed by transformers (+ peft); the model loads on first use."""
    return HFGenerator(
        model=model,
        adapter=adapter,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        device=device,
        dtype=dtype,
        load_in_4bit=load_in_4bit,
        num_threads=num_threads,
        cache_dir=cache_dir,
        constrained=constrained,
        labels=labels,
        stop_at_json_end=stop_at_json_end,
        torch_compile=torch_compile,
        merge_adapter=merge_adapter,
        prefix_cache=prefix_cache,
        quantize=quantize,
        jump_forward=jump_forward,
        draft_tokens=draft_tokens,
        float32_logits=float32_logits,
    )
