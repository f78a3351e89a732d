"""The Hugging Face generator: a transformers causal LM, an optional PEFT LoRA adapter, greedy.

Importing this module and building an `HFGenerator` imports neither torch, transformers nor peft:
they load on the first call or in `initialize()`, so building or loading a pipeline stays cheap.

The base model is given by reference (a packaged alias, a local folder or a hub id; see
`spacy_medllm.generators.packaged`). A pipeline saved with `to_disk` holds `generator.json` and, if
there is one, the adapter (safetensors only); never the base model's weights.

Over 600 lines: one class, whose docstring documents each of its nineteen settings; loading,
decoding loops and constrained decoding live in the sibling modules.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spacy_medllm.core.adapter_settings import PROMPT_TEMPLATE_FILE, load_prompt_settings
from spacy_medllm.core.confidence import ScoredResponse
from spacy_medllm.generators.base import (
    ANSWER_BASE_TOKENS,
    ANSWER_TOKENS_PER_TEXT_TOKEN,
    HF_GENERATOR,
    GenerationError,
    Prompt,
)
from spacy_medllm.generators.chat import render_prompt
from spacy_medllm.generators.hf.automaton import CONSTRAINED_MODES, answer_automata
from spacy_medllm.generators.hf.decoding import (
    PrefixCache,
    answer_tokens,
    decode_with_drafts,
    scored_response,
)
from spacy_medllm.generators.hf.loading import (
    ADAPTER_DIR,
    ADAPTER_EXTRA_FILES,
    ADAPTER_FILES,
    DTYPES,
    cache_keyword,
    check_adapter_dir,
    encode_prompt_text,
    find_stop_ids,
    load_causal_lm,
    model_context_length,
    validate_int8,
    validate_quantization,
)
from spacy_medllm.generators.packaged import file_sha256, resolve_adapter, resolve_base_model
from spacy_medllm.util.machine import cpu_supports_bf16

logger = logging.getLogger("spacy_medllm")


CONFIG_FILE = "generator.json"

FACTORY_NAME = HF_GENERATOR


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
    empty_answer_threshold: None (greedy), or answer `[]` exactly when the model's probability of
        the empty answer is at least this: lower answers `[]` more often, higher less often (a
        correction for a model whose training data had another share of empty texts than the
        data it reads; `calibrate` picks it on dev data).
    sized_answers: limit each answer to 24 + 3 tokens per token of its document (and never more
        than max_new_tokens), so that a short text cannot run on to max_new_tokens (`row_limits`).
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
        sized_answers: bool = True,
        empty_answer_threshold: float | None = None,
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
        self.sized_answers = bool(sized_answers)
        if empty_answer_threshold is not None and not 0.0 < empty_answer_threshold <= 1.0:
            raise ValueError(
                f"empty_answer_threshold must be in (0, 1] or None, got {empty_answer_threshold}"
            )
        self.empty_answer_threshold = empty_answer_threshold
        # `calibrate`: with record_empty_probability, each prompt's probability of the empty
        # answer at its first step, by prompt text.
        self.record_empty_probability = False
        self.empty_probabilities: dict[str, float] = {}
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
        self._prefixes = PrefixCache(self.encode_prompt)
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
        adapter = self.adapter_dir() if self.adapter else None
        if self.num_threads > 0:
            torch.set_num_threads(self.num_threads)
        device, dtype = self._effective_device_and_dtype(torch)
        validate_int8(self.quantize, device, self.load_in_4bit, self.merge_adapter or not adapter)
        tokenizer = self._ensure_tokenizer()

        model = load_causal_lm(
            self.resolved_model(),
            adapter,
            device=device,
            dtype=dtype,
            load_in_4bit=self.load_in_4bit,
            merge_adapter=self.merge_adapter,
            float32_head=self._float32_head(str(dtype).replace("torch.", "")),
            quantize=self.quantize,
            torch_compile=self.torch_compile,
        )
        self._model = model
        self._torch_device = device
        self._stop_ids = find_stop_ids(tokenizer, model)
        self._loaded_state = self._state()

    # -- prompts ---------------------------------------------------------------------------------

    def render(self, prompt: Prompt) -> str:
        """The text the model sees for `prompt` (through
        `spacy_medllm.generators.chat.render_prompt`)."""
        return render_prompt(self.tokenizer, prompt)

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """The exact token ids fed to the model for `prompt`; fine-tuning must use the same."""
        return encode_prompt_text(self.tokenizer, self.render(prompt))

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return len(self.encode_prompt(prompt))

    def context_length(self) -> int:
        """The context: max_position_embeddings, capped by a sane tokenizer model_max_length."""
        return model_context_length(self._config, self._ensure_tokenizer(), self.model)

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
        """The vocabulary trie of `spacy_medllm.generators.constrained`, built once per loaded
        tokenizer."""
        if self._token_constraint is None:
            from spacy_medllm.generators.hf.vocabulary import TokenConstraint

            self.initialize()
            self._token_constraint = TokenConstraint(self._tokenizer, self._stop_ids)
        return self._token_constraint

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
        automata = (
            answer_automata(prompts, self.labels, self.constrained)
            if self.constrained != "off"
            else None
        )
        drafting = self.uses_drafts
        constraint = (
            self.token_constraint()
            if automata
            or self.stop_at_json_end
            or drafting
            or self.empty_answer_threshold is not None
            or self.record_empty_probability
            else None
        )
        draft_automata = automata
        if drafting and automata is None:
            # Unconstrained: an automaton only proposes the schema's forced tokens while the
            # answer follows the schema (the model's own choices decide; none without labels).
            from spacy_medllm.generators.hf.automaton import AnswerAutomaton

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
        stops = {*self._stop_ids, pad_id}
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
                extra[cache_keyword(model)] = self._prefixes.cache_for(
                    model, self._torch_device, encoded[batch[0]][:shared], len(batch)
                )
                self.stats["prefix_cached_tokens"] += shared * len(batch)
            if drafting:
                rows = decode_with_drafts(
                    self,
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
                from spacy_medllm.generators.hf.decoding_steps import TokenLogprobRecorder

                recorder = TokenLogprobRecorder()
                processors.append(recorder)  # first: it must see the model's own logits
            if automata is not None:
                from spacy_medllm.generators.hf.decoding_steps import JsonAnswerLogitsProcessor

                processors.append(
                    JsonAnswerLogitsProcessor(
                        constraint,
                        [automata[i] for i in batch],
                        width,
                        self.row_limits([prompts[i] for i in batch]),
                    )
                )
            elif self.stop_at_json_end:
                from spacy_medllm.generators.hf.decoding_steps import JsonEndStopping

                stopping.append(JsonEndStopping(constraint.token_bytes, len(batch), width))
            if self.empty_answer_threshold is not None or self.record_empty_probability:
                from spacy_medllm.generators.hf.decoding import prompt_key
                from spacy_medllm.generators.hf.decoding_steps import EmptyAnswerDecision

                processors.append(
                    EmptyAnswerDecision(
                        constraint,
                        width,
                        self.empty_answer_threshold,
                        self,
                        self.empty_probabilities if self.record_empty_probability else None,
                        [prompt_key(prompts[i]) for i in batch],
                    )
                )
            limits = self.row_limits([prompts[i] for i in batch])
            generation_config.max_new_tokens = max(limits)
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
                new_tokens = answer_tokens(output.sequences[row, width:].tolist(), stops)
                new_tokens = new_tokens[: limits[row]]
                scores = None if logprobs is None else logprobs[row, : len(new_tokens)].tolist()
                results[i] = self._response(new_tokens, scores)
        return [r if r is not None else ScoredResponse(text="") for r in results]

    # An answer lists the document's entities as JSON: about a dozen tokens of syntax per entity
    # around the copied words; three answer tokens per document token leaves room for an entity
    # in every second token. Short texts then cannot run on to max_new_tokens.
    ANSWER_BASE_TOKENS = ANSWER_BASE_TOKENS
    ANSWER_TOKENS_PER_TEXT_TOKEN = ANSWER_TOKENS_PER_TEXT_TOKEN

    def row_limits(self, prompts: Sequence[Prompt]) -> list[int]:
        """Each prompt's answer limit: max_new_tokens, or with `sized_answers` less for a short
        document (the prompt's last user message): 24 + 3 tokens per document token."""
        if not self.sized_answers:
            return [self.max_new_tokens] * len(prompts)
        limits = []
        for prompt in prompts:
            document = prompt[-1].get("content", "") if prompt else ""
            n = len(encode_prompt_text(self._ensure_tokenizer(), document)) if document else 0
            sized = self.ANSWER_BASE_TOKENS + self.ANSWER_TOKENS_PER_TEXT_TOKEN * n
            limits.append(max(2, min(self.max_new_tokens, sized)))
        return limits

    def _batch_prefix(self, prompts: Sequence[Prompt], encoded: Sequence[list[int]]) -> int:
        """How many leading tokens of the batch the prefix cache serves (0: none)."""
        # Not with 4-bit weights: that path runs on CUDA only and has not been checked here.
        if not self.prefix_cache or self.load_in_4bit:
            return 0
        return self._prefixes.batch_prefix(prompts, encoded)

    def _response(self, tokens: list[int], scores: list[float] | None) -> ScoredResponse:
        """One row's answer tokens as a response (scored when `scores` are given); counted."""
        self.stats["generated_tokens"] += len(tokens)
        if scores is None:
            return ScoredResponse(text=self._tokenizer.decode(tokens, skip_special_tokens=True))
        return scored_response(self._tokenizer, tokens, scores)

    # -- identity and serialisation --------------------------------------------------------------

    def adapter_dir(self) -> Path:
        """The adapter's folder (a packaged adapter's alias resolved), checked."""
        return check_adapter_dir(resolve_adapter(self.adapter or ""))

    def trained_settings(self) -> dict[str, Any] | None:
        """The prompt settings the adapter was trained with (labels, their definitions, the
        template, the piece size), or None without an adapter or without saved settings."""
        if not self.adapter:
            return None
        folder = resolve_adapter(self.adapter)
        if not (folder / PROMPT_TEMPLATE_FILE).is_file():
            return None
        return load_prompt_settings(folder)

    def adapter_sha256(self) -> str | None:
        """sha256 of the adapter's adapter_model.safetensors, or None without an adapter."""
        if not self.adapter:
            return None
        return file_sha256(self.adapter_dir() / "adapter_model.safetensors")

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
            # Answers sized to the document: part of the key (caches written before were not).
            **({"answer_limit": "sized to the text"} if self.sized_answers else {}),
            **(
                {"empty_answer_threshold": self.empty_answer_threshold}
                if self.empty_answer_threshold is not None
                else {}
            ),
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
            "sized_answers": self.sized_answers,
            "empty_answer_threshold": self.empty_answer_threshold,
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
            source = self.adapter_dir()
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
        record = resolve_adapter(self.adapter) / "training_record.json"
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
