"""The registered generator factories (`@misc`): the backend loads only when one is built.

spaCy resolves `medllm.HFGenerator.v1` and `medllm.OpenAIGenerator.v1` through these functions
(entry points in pyproject.toml), so building a pipeline imports neither the transformers nor the
OpenAI generator module until a generator is actually made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spacy.util import registry

from spacy_medllm.generators.base import DEFAULT_GENERATOR, HF_GENERATOR, OPENAI_GENERATOR

if TYPE_CHECKING:
    from spacy_medllm.generators.hf.generator import HFGenerator
    from spacy_medllm.generators.openai_compat import OpenAIGenerator


@registry.misc(HF_GENERATOR)
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
    sized_answers: bool = True,
    empty_answer_threshold: float | None = None,
) -> HFGenerator:
    """A generator backed by transformers (+ peft); the model loads on first use."""
    from spacy_medllm.generators.hf.generator import HFGenerator

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
        sized_answers=sized_answers,
        empty_answer_threshold=empty_answer_threshold,
    )


@registry.misc(OPENAI_GENERATOR)
def make_openai_generator(
    model: str,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    batch_size: int = 8,
    max_concurrency: int = 4,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    timeout: float = 60.0,
    max_retries: int = 3,
    max_prompt_tokens: int | None = None,
    response_format_json: bool = False,
    extra_body: dict[str, Any] | None = None,
    health_check: bool = False,
    constrained: str = "off",
    labels: list[str] | None = None,
    sized_answers: bool = False,
    deadline: float | None = 120.0,
) -> OpenAIGenerator:
    """A generator backed by an OpenAI-compatible server; the client is built on first use."""
    from spacy_medllm.generators.openai_compat import OpenAIGenerator

    return OpenAIGenerator(
        model=model,
        base_url=base_url,
        api_key_env=api_key_env,
        batch_size=batch_size,
        max_concurrency=max_concurrency,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        timeout=timeout,
        max_retries=max_retries,
        max_prompt_tokens=max_prompt_tokens,
        response_format_json=response_format_json,
        extra_body=extra_body,
        health_check=health_check,
        constrained=constrained,
        labels=labels,
        sized_answers=sized_answers,
        deadline=deadline,
    )


@registry.misc(DEFAULT_GENERATOR)
def make_default_generator(
    model: str = "smollm2-135m-instruct",
    adapter: str = "medllm-en",
    batch_size: int = 8,
    max_new_tokens: int = 256,
    constrained: str = "grounded",
    device: str = "auto",
    num_threads: int = 0,
    cache_dir: str | None = None,
) -> HFGenerator:
    """`medllm_ner`'s default generator: SmolLM2-135M-Instruct with the packaged English adapter
    "medllm-en" and grounded constrained decoding (every entity copied from the text), answers
    sized to the text. A registered function of its own, so that a config naming
    medllm.HFGenerator.v1 keeps that function's defaults (no adapter, no constraint)."""
    from spacy_medllm.generators.hf.generator import HFGenerator

    return HFGenerator(
        model=model,
        adapter=adapter,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        constrained=constrained,
        device=device,
        num_threads=num_threads,
        cache_dir=cache_dir,
    )
