"""OpenAIGenerator against a real OpenAI-compatible server and a scripted one.

Tests marked `slow` talk to llama-cpp-python's server running the packaged SmolLM2-135M-Instruct
GGUF (the session fixture `llama_server` from tests/conftest_openai.py; skipped with the reason
when llama-cpp-python is not installed). The others use `FakeOpenAIServer` (tests/servers.py), a
standard-library server whose behaviour is scripted (delays, failures, key checks), or no server
at all; all of them go through the real openai client and HTTP.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from spacy.util import registry

from spacy_medllm.core.labels import LabelSet
from spacy_medllm.core.prompts import PromptBuilder
from spacy_medllm.generators.base import GenerationError, Generator
from spacy_medllm.generators.openai_compat import LOCAL_PLACEHOLDER_KEY, OpenAIGenerator
from spacy_medllm.generators.registry import make_openai_generator
from spacy_medllm.generators.urls import is_local_url, redact_url
from tests.servers import LLAMA_SERVER_MODEL, FakeOpenAIServer, free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-medllm-test-7f3a9c2e51d84b06-SECRET"
KEY_ENV = "MEDLLM_TEST_OPENAI_KEY"


def corpus_prompts(n: int) -> list[list[dict]]:
    """Real prompts: the component's messages for the first `n` seed e-mails."""
    records = json.loads((ROOT / "corpus/seed_ae_emails/train.json").read_text(encoding="utf8"))
    builder = PromptBuilder(LabelSet(["DRUG", "ADVERSE_EVENT"]))
    return [builder.messages(record["input"]) for record in records[:n]]


def user_prompts(texts: list[str]) -> list[list[dict]]:
    return [[{"role": "user", "content": text}] for text in texts]


def assert_no_secret(generator: OpenAIGenerator, tmp_path: Path, *texts: str) -> None:
    generator.to_disk(tmp_path / "saved")
    saved = "".join(p.read_text(encoding="utf8") for p in (tmp_path / "saved").iterdir())
    for where, text in [
        ("describe()", json.dumps(generator.describe())),
        ("to_disk", saved),
        ("repr", repr(generator)),
        ("str", str(generator)),
        *(("message", t) for t in texts),
    ]:
        assert SECRET not in text, f"the key leaked into {where}"
        assert SECRET[3:20] not in text, f"part of the key leaked into {where}"


# -- without a server ------------------------------------------------------------------------------


def test_import_and_construction_do_not_import_openai():
    code = (
        "import sys\n"
        "from spacy_medllm.generators.registry import make_openai_generator\n"
        "from spacy.util import registry\n"
        "g = registry.misc.get('medllm.OpenAIGenerator.v1')(model='m', base_url='http://127.0.0.1:9/v1')\n"
        "g.describe(); g.count_prompt_tokens([{'role': 'user', 'content': 'hi'}]); repr(g)\n"
        "g.prompt_token_budget()\n"
        "assert 'openai' not in sys.modules, 'openai was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_factory_is_registered_and_implements_the_protocol():
    config = {
        "g": {
            "@misc": "medllm.OpenAIGenerator.v1",
            "model": "m",
            "base_url": "http://localhost:8000/v1",
        }
    }
    generator = registry.resolve(config)["g"]
    assert isinstance(generator, OpenAIGenerator)
    assert isinstance(generator, Generator)
    assert generator.describe()["base_url"] == "http://localhost:8000/v1"
    assert generator.prompt_token_budget() is None
    assert make_openai_generator(model="m", max_prompt_tokens=1500).prompt_token_budget() == 1500


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model": ""}, "needs a model"),
        ({"model": "m", "base_url": "127.0.0.1:8000/v1"}, "http"),
        ({"model": "m", "api_key_env": SECRET}, "NAME of an environment variable"),
        ({"model": "m", "max_concurrency": 0}, "max_concurrency"),
        ({"model": "m", "max_new_tokens": 0}, "max_new_tokens"),
        ({"model": "m", "timeout": 0}, "timeout"),
        ({"model": "m", "max_retries": -1}, "max_retries"),
        ({"model": "m", "extra_body": {"x": object()}}, "JSON"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        OpenAIGenerator(**kwargs)
    assert SECRET not in str(info.value)


def test_urls_are_shown_without_credentials():
    assert (
        redact_url("http://user:pw@127.0.0.1:8000/v1?key=abc#x") == "http://***@127.0.0.1:8000/v1"
    )
    assert redact_url("https://api.example.com/v1") == "https://api.example.com/v1"
    generator = OpenAIGenerator(model="m", base_url="http://user:pw@[::1]:8000/v1/")
    assert generator.describe()["base_url"] == "http://***@[::1]:8000/v1"
    assert "pw" not in repr(generator)
    assert all(
        is_local_url(u) for u in ("http://localhost:1", "http://127.0.0.2", "http://[::1]:8")
    )
    assert not any(is_local_url(u) for u in ("https://api.openai.com/v1", "http://10.0.0.1:80"))


def test_missing_key_for_a_remote_server_names_the_variable(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    generator = OpenAIGenerator(
        model="m", base_url="https://llm.example.com/v1", api_key_env=KEY_ENV
    )
    with pytest.raises(GenerationError, match=KEY_ENV) as info:
        generator.initialize()
    assert "https://llm.example.com/v1" in str(info.value)
    # OpenAI's own API (base_url = None) needs a key too.
    with pytest.raises(GenerationError, match=KEY_ENV):
        OpenAIGenerator(model="m", api_key_env=KEY_ENV)([[{"role": "user", "content": "x"}]])


def test_unreachable_server_fails_fast_naming_url_and_model():
    port = free_port()  # nothing listens on it
    generator = OpenAIGenerator(
        model="tiny-model", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=2.0
    )
    start = time.monotonic()
    with pytest.raises(GenerationError) as info:
        generator(user_prompts(["a", "b", "c"]))
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert f"http://127.0.0.1:{port}/v1" in message and "'tiny-model'" in message
    assert "APIConnectionError" in message
    # The health check reports the same, already in initialize().
    checked = OpenAIGenerator(
        model="tiny-model", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=2.0,
        health_check=True,
    )  # fmt: skip
    with pytest.raises(GenerationError, match=f"127.0.0.1:{port}"):
        checked.initialize()


def test_save_and_load_round_trip(tmp_path):
    generator = OpenAIGenerator(
        model="served-model", base_url="http://127.0.0.1:8000/v1", max_new_tokens=77,
        temperature=0.5, max_prompt_tokens=900, response_format_json=True,
        extra_body={"seed": 1, "top_k": 1}, max_concurrency=2,
    )  # fmt: skip
    generator.to_disk(tmp_path)
    saved = json.loads((tmp_path / "generator.json").read_text())
    assert saved["@misc"] == "medllm.OpenAIGenerator.v1"
    assert saved["api_key_env"] == "OPENAI_API_KEY"
    restored = OpenAIGenerator(model="other", base_url="http://127.0.0.1:9999/v1")
    restored.from_disk(tmp_path)
    assert restored.describe() == {**generator.describe(), "base_url": "http://127.0.0.1:9999/v1"}
    assert restored.prompt_token_budget() == 900
    assert restored.max_concurrency == 4  # a deployment setting: kept as built
    # The saved settings build the same generator through the registry.
    rebuilt = registry.resolve({"g": saved})["g"]
    assert rebuilt.describe() == generator.describe()


def test_count_prompt_tokens_grows_with_the_prompt():
    generator = OpenAIGenerator(model="m", base_url="http://127.0.0.1:8000/v1")
    short = [{"role": "user", "content": "Aspirin gave me a headache."}]
    longer = [{"role": "system", "content": "Extract entities."}, *short]
    digits = [{"role": "user", "content": "1234567890" * 3}]
    assert 0 < generator.count_prompt_tokens(short) < generator.count_prompt_tokens(longer)
    assert generator.count_prompt_tokens(digits) >= 30


# -- against a scripted server ---------------------------------------------------------------------


def test_bounded_concurrency_keeps_prompt_order():
    # Later prompts are answered sooner, so answers arrive out of order.
    texts = [f"prompt {i}" for i in range(9)]
    with FakeOpenAIServer(delay=lambda text: 0.05 * (10 - int(text.split()[-1]))) as fake:
        generator = OpenAIGenerator(model="m", base_url=fake.base_url, max_concurrency=3)
        start = time.monotonic()
        responses = generator(user_prompts(texts))
        elapsed = time.monotonic() - start
    assert responses == texts
    assert fake.max_in_flight == 3
    assert elapsed < 0.05 * sum(range(2, 11))  # concurrent, not one after the other
    assert [r["max_tokens"] for r in fake.requests] == [256] * 9
    assert all(r["temperature"] == 0.0 and r["model"] == "m" for r in fake.requests)


def test_local_server_gets_a_placeholder_key_and_request_options(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with FakeOpenAIServer() as fake:
        generator = OpenAIGenerator(
            model="m", base_url=fake.base_url, api_key_env=KEY_ENV, max_new_tokens=12,
            response_format_json=True, extra_body={"top_k": 1},
        )  # fmt: skip
        assert generator(user_prompts(["x"])) == ["x"]
    assert fake.authorizations == [f"Bearer {LOCAL_PLACEHOLDER_KEY}"]
    request = fake.requests[0]
    assert request["response_format"] == {"type": "json_object"}
    assert request["top_k"] == 1 and request["max_tokens"] == 12
    assert generator.last_usage == [
        {"finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1}
    ]


def test_server_errors_use_the_clients_retries():
    with FakeOpenAIServer(fail_first=2, fail_status=503) as fake:
        generator = OpenAIGenerator(
            model="m", base_url=fake.base_url, max_retries=2, max_concurrency=1
        )
        assert generator(user_prompts(["ok"])) == ["ok"]
        assert len(fake.requests) == 3
    with FakeOpenAIServer(fail_first=10, fail_status=500) as fake:
        generator = OpenAIGenerator(model="m", base_url=fake.base_url, max_retries=1)
        with pytest.raises(GenerationError, match="500") as info:
            generator(user_prompts(["a", "b"]))
    assert fake.base_url in str(info.value) and "after 1 retries" in str(info.value)


def test_the_key_never_leaks_even_when_the_server_echoes_it(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer(require_key="the-right-key") as fake:
        generator = OpenAIGenerator(
            model="m", base_url=fake.base_url, api_key_env=KEY_ENV, max_retries=0
        )
        with pytest.raises(GenerationError, match="401") as info:
            generator(user_prompts(["x"]))
    assert fake.authorizations == [f"Bearer {SECRET}"]  # the key was sent...
    message = str(info.value)
    assert KEY_ENV in message  # ...the error says where it came from...
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert_no_secret(generator, tmp_path, message, caplog.text)  # ...and shows it nowhere


# -- against the real llama.cpp server -------------------------------------------------------------

# Short questions with different first words: llama-cpp-python's server reuses the KV cache of the
# common prefix with the previous request, and with different first words that prefix (the
# template's default system prompt) has the same length for every request, whatever came before.
QUESTIONS = [
    "Name the capital of France.",
    "Which fruit is yellow?",
    "Add 2 and 2.",
    "Translate hello into Spanish.",
    "Describe the color of the sky.",
    "Tell me an animal that barks.",
]
MAX_NEW = 8


def settle(base_url: str) -> None:
    """One unrelated request, so the next prompt is never the one the server just answered.

    The server evaluates an exact repeat of its previous prompt from the cache except for the last
    token, a different numerical path that can change even a greedy answer.
    """
    OpenAIGenerator(model=LLAMA_SERVER_MODEL, base_url=base_url, max_new_tokens=1)(
        user_prompts(["Okay."])
    )


@pytest.fixture(scope="module")
def real_run(llama_server):
    """The questions, sent twice with concurrency 3: the answers, their usage and the generator."""
    generator = OpenAIGenerator(
        model=LLAMA_SERVER_MODEL, base_url=llama_server, max_concurrency=3,
        max_new_tokens=MAX_NEW, timeout=60, max_retries=0, health_check=True,
    )  # fmt: skip
    generator.initialize()
    prompts = user_prompts(QUESTIONS)
    settle(llama_server)
    first = generator(prompts)
    usage = list(generator.last_usage)
    settle(llama_server)
    second = generator(prompts)
    return {"generator": generator, "prompts": prompts, "first": first, "usage": usage,
            "second": second}  # fmt: skip


@pytest.mark.slow
def test_real_server_answers_in_prompt_order(real_run):
    generator, prompts, first = real_run["generator"], real_run["prompts"], real_run["first"]
    assert len(first) == len(QUESTIONS) and all(isinstance(r, str) and r.strip() for r in first)
    assert len(set(first)) >= 4, f"too few different answers to show the order: {first}"
    # Each prompt alone, one at a time, gets the answer it got at its index in the batch.
    settle(generator.base_url)
    one_by_one = OpenAIGenerator(
        model=LLAMA_SERVER_MODEL, base_url=generator.base_url, max_new_tokens=MAX_NEW
    )
    alone = [one_by_one([prompt])[0] for prompt in prompts]
    assert alone == first


@pytest.mark.slow
def test_real_server_is_deterministic_at_temperature_zero(real_run):
    assert real_run["second"] == real_run["first"]


@pytest.mark.slow
def test_real_server_respects_max_new_tokens(llama_server, real_run):
    assert all(1 <= u["completion_tokens"] <= MAX_NEW for u in real_run["usage"])
    generator = OpenAIGenerator(model=LLAMA_SERVER_MODEL, base_url=llama_server, max_new_tokens=5)
    responses = generator(
        user_prompts(["Write a long story about a nurse.", "Explain in detail how vaccines work."])
    )
    for response, usage in zip(responses, generator.last_usage, strict=True):
        assert 1 <= usage["completion_tokens"] <= 5 and usage["finish_reason"] == "length"
        assert 0 < len(response) <= 5 * 16  # five tokens of text, not a story


@pytest.mark.slow
def test_count_prompt_tokens_is_an_upper_estimate_of_the_real_count(llama_server, real_run):
    # The component's real prompts (long system prompt, e-mails with digits), dense clinical
    # abbreviations and numbers (the hardest case for the estimate) and the questions.
    generator = OpenAIGenerator(
        model=LLAMA_SERVER_MODEL, base_url=llama_server, max_new_tokens=1, max_concurrency=3
    )
    prompts = corpus_prompts(1) + user_prompts(
        [
            "SpO2 92%, HR 118 bpm, BP 85/50 mmHg, T 39.2°C, Na+ 131 mmol/L, K+ 5.9 mmol/L",
            "pt c/o SOB, CP x3d, N/V/D. Hx: HTN, DM2, CKD3, COPD, CHF (EF 35%), AFib (INR 2.4)",
        ]
    )
    generator(prompts)
    pairs = [(p, u["prompt_tokens"]) for p, u in zip(prompts, generator.last_usage, strict=True)]
    pairs += [
        (p, u["prompt_tokens"]) for p, u in zip(real_run["prompts"], real_run["usage"], strict=True)
    ]
    for prompt, real in pairs:
        estimate = generator.count_prompt_tokens(prompt)
        assert real <= estimate <= 2 * real, (real, estimate, prompt[-1]["content"][:40])


@pytest.mark.slow
def test_real_server_the_key_never_leaks(llama_server, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    generator = OpenAIGenerator(
        model=LLAMA_SERVER_MODEL, base_url=llama_server, api_key_env=KEY_ENV, max_new_tokens=2
    )
    assert len(generator(user_prompts(["Hello"]))) == 1  # the server ignores the key
    port = free_port()
    broken = OpenAIGenerator(
        model=LLAMA_SERVER_MODEL, base_url=f"http://127.0.0.1:{port}/v1", api_key_env=KEY_ENV,
        max_retries=0, timeout=2,
    )  # fmt: skip
    with pytest.raises(GenerationError) as info:
        broken(user_prompts(["Hello"]))
    assert f"127.0.0.1:{port}" in str(info.value)
    assert_no_secret(generator, tmp_path, str(info.value), caplog.text)
    assert_no_secret(broken, tmp_path, str(info.value))


@pytest.mark.slow
def test_medllm_ner_runs_on_the_real_server(llama_server):
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe(
        "medllm_ner",
        config={
            "labels": ["DRUG", "ADVERSE_EVENT"],
            "generator": {
                "@misc": "medllm.OpenAIGenerator.v1",
                "model": LLAMA_SERVER_MODEL,
                "base_url": llama_server,
                "max_new_tokens": 32,
                "max_concurrency": 2,
                "max_prompt_tokens": 1500,
            },
        },
    )
    texts = ["After starting Abilify I have nausea.", "Aspirin gave me a rash."]
    docs = list(nlp.pipe(texts))
    assert [doc.text for doc in docs] == texts
    for doc in docs:  # whatever the tiny model answers, the entities are valid spans of the text
        assert all(ent.label_ in ("DRUG", "ADVERSE_EVENT") for ent in doc.ents)
