"""The response cache (`spacy_medllm.pipeline.cache`) around real generators: a tiny random
transformers model with a LoRA adapter (built in the test session), and a real llama.cpp server
(slow).

A hit must not call the model at all (the HF generator's batch counter stays at 0 and the model is
never loaded); anything that decides the answer (model, adapter, generation settings, prompt
template, labels, text) must miss; what only happens after the answer (alignment, matching)
must not; a damaged entry is reported and regenerated, never trusted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import spacy

from spacy_medllm.pipeline.cache import CACHE_ENV, ResponseCache, cache_key, generator_identity
from spacy_medllm.pipeline.component import CONFIDENCE_ATTR, get_record

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")

LABELS = ["DRUG", "ADVERSE_EVENT"]
TEXTS = [
    "After starting aspirin I had a headache and nausea.",
    "Metformin 500 mg twice daily caused diarrhoea.",
    "The patient took ibuprofen and developed a rash on the arm.",
]


def make_nlp(model: Path, adapter: Path | None, cache_dir: Path | None, **settings):
    """A pipeline with one medllm_ner; `settings` go to the generator, except the component's."""
    component_keys = {"labels", "prompt", "alignment_mode", "repeated_mentions", "confidence"}
    component = {k: settings.pop(k) for k in list(settings) if k in component_keys}
    config = {
        "labels": LABELS,
        "save_io": True,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "generator": {
            "@misc": "medllm.HFGenerator.v1",
            "model": str(model),
            "adapter": str(adapter) if adapter else None,
            "max_new_tokens": 16,
            "batch_size": 4,
            **settings,
        },
        **component,
    }
    nlp = spacy.blank("en")
    nlp.add_pipe("medllm_ner", config=config)
    return nlp


def run(nlp, texts=TEXTS) -> tuple[list, list[dict]]:
    docs = list(nlp.pipe(texts))
    return docs, [get_record(doc) for doc in docs]


def responses(records: list[dict]) -> list[list[str]]:
    return [[chunk["response"] for chunk in record["chunks"]] for record in records]


def statuses(records: list[dict]) -> list[str]:
    return [chunk["cache"] for record in records for chunk in record["chunks"]]


def generator_of(nlp):
    return nlp.get_pipe("medllm_ner").generator


@pytest.fixture
def filled(tiny_model_dir, tiny_adapter_dir, tmp_path) -> dict:
    """A cache folder filled by one run over TEXTS, and what that run answered."""
    cache = tmp_path / "cache"
    nlp = make_nlp(tiny_model_dir, tiny_adapter_dir, cache)
    docs, records = run(nlp)
    assert generator_of(nlp).stats["batches"] >= 1
    assert statuses(records) == ["miss"] * len(TEXTS)
    return {"cache": cache, "docs": docs, "records": records}


def test_a_hit_never_calls_or_loads_the_model(tiny_model_dir, tiny_adapter_dir, filled) -> None:
    nlp = make_nlp(tiny_model_dir, tiny_adapter_dir, filled["cache"])
    docs, records = run(nlp)
    generator = generator_of(nlp)
    assert generator.stats["batches"] == 0 and not generator.is_loaded
    assert statuses(records) == ["hit"] * len(TEXTS)
    assert [r["cache"]["hit"] for r in records] == [1, 1, 1]
    assert responses(records) == responses(filled["records"])
    assert [r["rejected"] for r in records] == [r["rejected"] for r in filled["records"]]
    assert [[(e.start_char, e.label_) for e in d.ents] for d in docs] == [
        [(e.start_char, e.label_) for e in d.ents] for d in filled["docs"]
    ]
    assert len(list(Path(filled["cache"]).rglob("*.json"))) == len(TEXTS)


def test_aligning_again_with_other_settings_reads_the_cache(
    tiny_model_dir, tiny_adapter_dir, filled
) -> None:
    nlp = make_nlp(
        tiny_model_dir,
        tiny_adapter_dir,
        filled["cache"],
        alignment_mode="strict",
        repeated_mentions="cursor",
    )
    _, records = run(nlp)
    assert statuses(records) == ["hit"] * len(TEXTS)
    assert generator_of(nlp).stats["batches"] == 0


@pytest.mark.parametrize(
    "change",
    ["adapter", "no adapter", "max_new_tokens", "constrained", "template", "labels", "text"],
)
def test_whatever_decides_the_answer_misses(
    change, tiny_model_dir, tiny_adapter_dir, filled, tmp_path
) -> None:
    adapter = tiny_adapter_dir
    settings: dict = {}
    texts = TEXTS
    if change == "adapter":
        from .tiny_models import build_random_lora_adapter

        adapter = build_random_lora_adapter(tiny_model_dir, tmp_path / "other_adapter", seed=1)
    elif change == "no adapter":
        adapter = None
    elif change == "max_new_tokens":
        settings["max_new_tokens"] = 12
    elif change == "constrained":
        settings["constrained"] = "schema"
    elif change == "template":
        settings["prompt"] = {
            "@misc": "medllm.PromptTemplate.v1",
            "instruction": "List the entities.\nLabels:\n{label_lines}\nAnswer in JSON.",
        }
    elif change == "labels":
        settings["labels"] = ["DRUG"]
    elif change == "text":
        texts = [text.replace(".", "!") for text in TEXTS]
    nlp = make_nlp(tiny_model_dir, adapter, filled["cache"], **settings)
    _, records = run(nlp, texts)
    assert statuses(records) == ["miss"] * len(TEXTS)
    assert generator_of(nlp).stats["batches"] >= 1
    # The new answers were stored next to the old ones, which are still there.
    assert len(list(Path(filled["cache"]).rglob("*.json"))) == 2 * len(TEXTS)


def test_a_model_changed_in_place_gets_another_key(tiny_model_dir, tmp_path) -> None:
    from spacy_medllm.generators.hf.generator import HFGenerator

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    prompt = [{"role": "user", "content": TEXTS[0]}]
    before = cache_key(generator_identity(HFGenerator(model=str(folder))), prompt)
    assert before == cache_key(generator_identity(HFGenerator(model=str(folder))), prompt)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # retrained in place: same path, new file
    after = cache_key(generator_identity(HFGenerator(model=str(folder))), prompt)
    assert after != before


@pytest.mark.parametrize("damage", ["truncated", "edited answer", "other key", "not an object"])
def test_a_damaged_entry_is_reported_and_regenerated(
    damage, tiny_model_dir, tiny_adapter_dir, filled
) -> None:
    cache = ResponseCache(filled["cache"])
    nlp = make_nlp(tiny_model_dir, tiny_adapter_dir, filled["cache"])
    prompt = nlp.get_pipe("medllm_ner").prompt_builder.messages(TEXTS[1])
    key = cache_key(generator_identity(generator_of(nlp)), prompt)
    path = cache.entry_path(key)
    original = path.read_text(encoding="utf8")
    entry = json.loads(original)
    if damage == "truncated":
        path.write_text(original[: len(original) // 2], encoding="utf8")
    elif damage == "edited answer":
        entry["response"] = '[{"text": "aspirin", "label": "DRUG"}]'
        path.write_text(json.dumps(entry), encoding="utf8")
    elif damage == "other key":
        other = cache_key(
            generator_identity(generator_of(nlp)),
            nlp.get_pipe("medllm_ner").prompt_builder.messages(TEXTS[0]),
        )
        shutil.copyfile(cache.entry_path(other), path)
    else:
        path.write_text("[1, 2, 3]", encoding="utf8")

    _, records = run(nlp)
    assert statuses(records) == ["hit", "corrupt", "hit"]
    problems = records[1]["cache"]["problems"]
    assert len(problems) == 1 and str(path) in problems[0]["detail"]
    expected = {
        "truncated": "not JSON",
        "edited answer": "checksum",
        "other key": "another key",
        "not an object": "not a JSON object",
    }[damage]
    assert expected in problems[0]["detail"]
    # The model answered again, as it did the first time: the damaged answer was not used...
    assert generator_of(nlp).stats["batches"] == 1
    assert responses(records) == responses(filled["records"])
    # ... and the entry is whole again.
    assert cache.get(key).status == "hit"
    assert cache.get(key).response.text == filled["records"][1]["chunks"][0]["response"]


def test_the_cache_folder_may_be_deleted_at_any_time(
    tiny_model_dir, tiny_adapter_dir, filled
) -> None:
    shutil.rmtree(filled["cache"])
    nlp = make_nlp(tiny_model_dir, tiny_adapter_dir, filled["cache"])
    _, records = run(nlp)
    assert statuses(records) == ["miss"] * len(TEXTS)
    assert responses(records) == responses(filled["records"])
    assert len(list(Path(filled["cache"]).rglob("*.json"))) == len(TEXTS)


def test_the_cache_survives_to_disk_and_spacy_load(
    tiny_model_dir, tiny_adapter_dir, filled, tmp_path
) -> None:
    nlp = make_nlp(tiny_model_dir, tiny_adapter_dir, filled["cache"])
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.config["components"]["medllm_ner"]["cache_dir"] == str(filled["cache"])
    # The adapter now loads from inside the pipeline folder: same weights, same key.
    assert generator_of(loaded).adapter != str(tiny_adapter_dir)
    _, records = run(loaded)
    assert statuses(records) == ["hit"] * len(TEXTS)
    assert generator_of(loaded).stats["batches"] == 0 and not generator_of(loaded).is_loaded
    assert responses(records) == responses(filled["records"])


def test_the_environment_variable_turns_the_cache_on(
    tiny_model_dir, tiny_adapter_dir, filled, monkeypatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(filled["cache"]))
    nlp = make_nlp(tiny_model_dir, tiny_adapter_dir, None)
    _, records = run(nlp)
    assert statuses(records) == ["hit"] * len(TEXTS)
    monkeypatch.delenv(CACHE_ENV)
    _, records = run(make_nlp(tiny_model_dir, tiny_adapter_dir, None))
    assert all(r["cache"] is None and "cache" not in r["chunks"][0] for r in records)


def test_confidence_scores_are_cached_with_the_answer(
    tiny_model_dir, tiny_adapter_dir, filled
) -> None:
    # The filled entries hold text only: a scored run needs the token scores, so it misses.
    scored = make_nlp(tiny_model_dir, tiny_adapter_dir, filled["cache"], confidence=True)
    docs, records = run(scored)
    assert statuses(records) == ["miss"] * len(TEXTS)
    assert responses(records) == responses(filled["records"])
    again = make_nlp(tiny_model_dir, tiny_adapter_dir, filled["cache"], confidence=True)
    docs_again, records_again = run(again)
    assert statuses(records_again) == ["hit"] * len(TEXTS)
    assert generator_of(again).stats["batches"] == 0
    assert [r["chunks"][0].get("confidence") for r in records_again] == [
        r["chunks"][0].get("confidence") for r in records
    ]
    assert [[e._.get(CONFIDENCE_ATTR) for e in d.ents] for d in docs_again] == [
        [e._.get(CONFIDENCE_ATTR) for e in d.ents] for d in docs
    ]
    # An entry with scores serves a run without them too.
    _, plain = run(make_nlp(tiny_model_dir, tiny_adapter_dir, filled["cache"]))
    assert statuses(plain) == ["hit"] * len(TEXTS)


@pytest.mark.slow
def test_openai_compatible_answers_are_cached(llama_server, tmp_path) -> None:
    import openai

    from tests.servers import LLAMA_SERVER_MODEL

    def pipeline():
        nlp = spacy.blank("en")
        nlp.add_pipe(
            "medllm_ner",
            config={
                "labels": LABELS,
                "save_io": True,
                "cache_dir": str(tmp_path / "cache"),
                "generator": {
                    "@misc": "medllm.OpenAIGenerator.v1",
                    "model": LLAMA_SERVER_MODEL,
                    "base_url": llama_server,
                    "max_new_tokens": 24,
                    "max_retries": 0,
                },
            },
        )
        return nlp

    _, first = run(pipeline())
    assert statuses(first) == ["miss"] * len(TEXTS)
    nlp = pipeline()
    # Any request from here on would fail: nothing listens on port 9.
    generator_of(nlp)._client = openai.OpenAI(
        base_url="http://127.0.0.1:9/v1", api_key="unused", max_retries=0, timeout=5
    )
    _, second = run(nlp)
    assert statuses(second) == ["hit"] * len(TEXTS)
    assert responses(second) == responses(first)
    assert all(r["error"] is None for r in second)
