"""Slow: the packaged SmolLM2-135M-Instruct, loaded with no network, fine-tuned for a few dozen LoRA
steps on seed e-mails, then run as `medllm_ner` on unseen test e-mails and reloaded from disk.

This is the whole product path on the real default model: packaged GGUF -> cached HF folder ->
LoRA (peft) -> adapter folder -> component -> `nlp.to_disk` -> `spacy.load` -> the same entities.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import spacy

from spacy_medllm.pipeline.component import get_record

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "corpus" / "seed_ae_emails"
LABELS = ["DRUG", "ADVERSE_EVENT"]


@pytest.fixture(scope="module")
def short_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("peft")
    from spacy_medllm.generators.packaged import ModelNotAvailableError, resolve_base_model
    from spacy_medllm.training.config import FinetuneConfig
    from spacy_medllm.training.examples import load_training_examples
    from spacy_medllm.training.trainer import finetune

    try:
        resolve_base_model("smollm2-135m-instruct")
    except ModelNotAvailableError as err:
        pytest.skip(str(err))
    examples = load_training_examples([SEED / "train.json"], exclude=[SEED / "test.json"])[:160]
    config = FinetuneConfig(
        base_model="smollm2-135m-instruct",
        output_dir=str(tmp_path_factory.mktemp("e2e") / "lora"),
        labels=LABELS,
        learning_rate=1e-3,
        max_steps=40,
        per_device_train_batch_size=4,
        warmup_ratio=0.1,
        save_steps=1000,
        logging_steps=10,
        progress=False,
    )
    return finetune(config, examples)


def test_packaged_model_with_lora_as_a_spacy_component(short_lora: Path, tmp_path: Path) -> None:
    from spacy_medllm.pipeline.assemble import build_pipeline

    test = json.loads((SEED / "test.json").read_text(encoding="utf8"))[:6]
    texts = [record["input"] for record in test]
    nlp = build_pipeline("smollm2-135m-instruct", str(short_lora), batch_size=6, max_new_tokens=96)
    component = nlp.get_pipe("medllm_ner")
    assert component.generator.describe()["model"] == "smollm2-135m-instruct"
    docs = list(nlp.pipe(texts))

    found_drugs = 0
    for doc, record in zip(docs, test, strict=True):
        medllm = get_record(doc)
        # After 40 steps the model answers in the trained JSON format.
        assert not medllm["parse_errors"], medllm
        assert medllm["n_emitted"] == medllm["n_spans"] + len(medllm["rejected"])
        for ent in doc.ents:
            assert ent.label_ in LABELS
            assert doc.text[ent.start_char : ent.end_char] == ent.text
        gold_drug = json.loads(record["output"])["drug_name"].lower()
        found_drugs += any(e.label_ == "DRUG" and e.text.lower() == gold_drug for e in doc.ents)
    # Unseen e-mails: the drug name is found in most of them.
    assert found_drugs >= 4, [(d.text[-120:], [(e.text, e.label_) for e in d.ents]) for d in docs]

    nlp.to_disk(tmp_path / "pipeline")
    assert not list((tmp_path / "pipeline").rglob("model.safetensors"))  # base model by reference
    reloaded = spacy.load(tmp_path / "pipeline")
    again = list(reloaded.pipe(texts))
    assert [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in again] == [
        [(e.start_char, e.end_char, e.label_) for e in d.ents] for d in docs
    ]


def test_draft_tokens_keep_the_real_models_answers(short_lora: Path) -> None:
    """On the real model, which answers in the trained JSON: drafts (forced schema tokens, document
    continuations) are mostly kept, decoding takes fewer steps, and every answer is what
    `generate` writes one token per step, unconstrained and constrained."""
    from spacy_medllm.pipeline.assemble import build_pipeline

    test = json.loads((SEED / "test.json").read_text(encoding="utf8"))[6:12]
    texts = [record["input"] for record in test]
    component = build_pipeline(
        "smollm2-135m-instruct", str(short_lora), batch_size=3, max_new_tokens=96
    ).get_pipe("medllm_ner")
    generator = component.generator
    prompts = [component.prompt_builder.messages(text) for text in texts]
    for constrained in ("off", "schema"):
        generator.constrained = constrained
        runs = {}
        for drafts in (True, False):
            generator.jump_forward, generator.draft_tokens = drafts, 4 if drafts else 0
            before = dict(generator.stats)
            responses = generator(prompts)
            runs[drafts] = (
                responses,
                {key: generator.stats[key] - before[key] for key in before},
            )
        (with_drafts, stats), (one_by_one, plain) = runs[True], runs[False]
        assert with_drafts == one_by_one, constrained
        assert all(response.startswith("[") for response in with_drafts)
        assert plain["accepted_draft_tokens"] == 0
        kept, proposed = stats["accepted_draft_tokens"], stats["draft_tokens"]
        assert kept >= 0.5 * proposed > 0, stats
        assert stats["decode_steps"] < 0.7 * plain["decode_steps"], (stats, plain)
