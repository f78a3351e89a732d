"""`medllm_ner` end to end with a real (tiny) transformers model and a LoRA adapter trained here.

A random 2-layer Llama learns, in a few seconds of LoRA fine-tuning with the package's own
`finetune`, to answer the training texts with their entities. The component then runs real
generation through `HFGenerator`, so these tests see real JSON from a real model: the round trip
through `nlp.to_disk` / `spacy.load`, batched against one-by-one processing, long documents split
into pieces whose entities land at the right offsets, and bad input that never loses a document.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import spacy

from spacy_medllm.core.examples import make_example
from spacy_medllm.pipeline.component import get_record
from tests.gold_examples import GOLD, LABELS, VOCAB_TEXTS

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")

GOLD_TEXTS = [text for text, _ in GOLD]
# 24 documents: the training texts, and unseen ones the model answers however it likes.
DOCS = [
    *GOLD_TEXTS,
    *(f"{a} {b}" for a, b in itertools.pairwise(GOLD_TEXTS)),
    "Aspirin and a headache.",
    "She had nausea after metformin.",
    "No drug was taken.",
    "The rash on my arm came after ibuprofen.",
    "Zoloft, then dizzy.",
    "Dry cough with lisinopril 10 mg.",
    "Abilify made her tired and dizzy.",
    "A headache, a rash and nausea.",
    "Ibuprofen gave me diarrhoea.",
    "I took aspirin.",
    "",
    "   \n ",
    "Metformin",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny base model and a LoRA adapter that has memorised the GOLD answers."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from spacy_medllm.training.trainer import finetune

    from .tiny_models import build_tiny_causal_lm, overfit_config

    root = tmp_path_factory.mktemp("component_hf")
    base = build_tiny_causal_lm(root / "base", VOCAB_TEXTS, max_position_embeddings=512, seed=0)
    examples = [
        make_example(
            text,
            [(text.index(s), text.index(s) + len(s), label) for s, label in pairs],
            id=f"gold:{i}",
        )
        for i, (text, pairs) in enumerate(GOLD)
    ]
    config = overfit_config(
        base, root / "run", LABELS, max_steps=60, batch_size=6, logging_steps=10
    )
    adapter = finetune(config, examples)
    return {"base": base, "adapter": adapter}


def build_nlp(trained: dict, batch_size: int = 8, **component) -> spacy.language.Language:
    from spacy_medllm.pipeline.assemble import build_pipeline

    nlp = build_pipeline(
        model=str(trained["base"]),
        adapter=str(trained["adapter"]),
        batch_size=batch_size,
        max_new_tokens=64,
    )
    component_pipe = nlp.get_pipe("medllm_ner")
    for key, value in component.items():
        setattr(component_pipe, key, value)
    return nlp


def entities(doc) -> list[tuple[int, int, str]]:
    return [(e.start_char, e.end_char, e.label_) for e in doc.ents]


def records(docs, name: str = "medllm_ner") -> list[dict]:
    return [get_record(doc, name) for doc in docs]


@pytest.fixture(scope="module")
def nlp(trained: dict):
    return build_nlp(trained, save_io=True)


@pytest.fixture(scope="module")
def batched_docs(nlp) -> list:
    return list(nlp.pipe(DOCS))


def test_the_adapter_was_trained_with_the_prompt_the_component_uses(nlp, trained) -> None:
    from spacy_medllm.core.adapter_settings import load_prompt_settings

    settings = load_prompt_settings(trained["adapter"])
    component = nlp.get_pipe("medllm_ner")
    assert list(component.labels) == settings["labels"] == LABELS
    assert component.prompt_builder.template == settings["template"]


def test_the_trained_model_finds_the_entities_it_learned(batched_docs) -> None:
    for (text, pairs), doc in zip(GOLD, batched_docs[: len(GOLD)], strict=True):
        assert doc.text == text
        got = [(e.text, e.label_) for e in doc.ents]
        assert sorted(got) == sorted(pairs), (text, got, get_record(doc)["chunks"])


def test_every_document_comes_out_with_a_record(batched_docs) -> None:
    assert [doc.text for doc in batched_docs] == DOCS
    for doc, record in zip(batched_docs, records(batched_docs), strict=True):
        if not doc.text.strip():
            assert record["skipped"] == "empty document" and not doc.ents
            assert record["chunks"] == []
            continue
        assert record["skipped"] is None and record["error"] is None
        assert len(record["chunks"]) == 1 and "response" in record["chunks"][0]
        # Nothing is dropped silently: every emitted entity is a span or a recorded rejection.
        assert record["n_spans"] == len(doc.ents)
        assert record["n_emitted"] == record["n_spans"] + len(record["rejected"]), record


def test_batched_equals_one_by_one(trained, batched_docs) -> None:
    single = build_nlp(trained, batch_size=1, save_io=True)
    one_by_one = [single(text) for text in DOCS]
    assert [entities(d) for d in one_by_one] == [entities(d) for d in batched_docs]
    assert [[c["response"] for c in r["chunks"]] for r in records(one_by_one)] == [
        [c["response"] for c in r["chunks"]] for r in records(batched_docs)
    ]


def test_round_trip_through_disk_gives_identical_entities(nlp, batched_docs, tmp_path) -> None:
    nlp.to_disk(tmp_path / "pipeline")
    saved = tmp_path / "pipeline" / "medllm_ner"
    # The adapter travels inside the pipeline as safetensors; the base model only by reference.
    adapter_files = {p.name for p in saved.rglob("*") if p.is_file()}
    assert "adapter_model.safetensors" in adapter_files
    assert not [name for name in adapter_files if name.endswith((".bin", ".pt", ".pkl"))]
    assert "model.safetensors" not in adapter_files
    loaded = spacy.load(tmp_path / "pipeline")
    reloaded = list(loaded.pipe(DOCS))
    assert len(reloaded) == len(batched_docs) >= 20
    assert sum(bool(d.ents) for d in reloaded) >= len(GOLD)
    assert [entities(d) for d in reloaded] == [entities(d) for d in batched_docs]
    assert [r["rejected"] for r in records(reloaded)] == [
        r["rejected"] for r in records(batched_docs)
    ]


def test_a_document_longer_than_the_context_is_split_and_offsets_hold(trained) -> None:
    nlp = build_nlp(trained)
    component = nlp.get_pipe("medllm_ner")
    generator = component.generator
    context = generator.prompt_token_budget() + generator.max_new_tokens
    # The model learned single sentences: leave room for the prompt around the longest one only,
    # so that every piece is one sentence (and the answer may be long).
    longest = max(
        generator.count_prompt_tokens(component.prompt_builder.messages(t)) for t in GOLD_TEXTS
    )
    generator.max_new_tokens = context - longest
    parts: list[str] = []
    while len(" ".join(parts)) < 6 * context:
        parts.extend(GOLD_TEXTS)
    text = " ".join(parts)
    assert generator.count_prompt_tokens(component.prompt_builder.messages(text)) > context
    doc = nlp(text)
    chunks = get_record(doc)["chunks"]
    # One piece per sentence, in order, covering the text with nothing but spaces between them.
    assert [text[c["start"] : c["end"]] for c in chunks] == parts
    # Every sentence's entities are found at their own offsets, far beyond the first piece.
    expected = []
    for chunk, sentence in zip(chunks, parts, strict=True):
        pairs = dict(GOLD)[sentence]
        expected.extend(
            (chunk["start"] + sentence.index(s), chunk["start"] + sentence.index(s) + len(s), label)
            for s, label in pairs
        )
    assert entities(doc) == sorted(expected)


def test_a_long_document_is_refused_when_splitting_is_off(trained) -> None:
    from spacy_medllm.core.chunking import ChunkingError

    nlp = build_nlp(trained, long_documents="error")
    with pytest.raises(ChunkingError, match="medllm_ner"):
        nlp(" ".join(GOLD_TEXTS * 40))


def test_a_cut_answer_is_recorded_not_lost(trained) -> None:
    # Three new tokens cannot hold a complete entity: each answer is cut inside its first object.
    nlp = build_nlp(trained, save_io=True)
    nlp.get_pipe("medllm_ner").generator.max_new_tokens = 3
    docs = list(nlp.pipe(GOLD_TEXTS))
    assert [doc.text for doc in docs] == GOLD_TEXTS
    for doc in docs:
        record = get_record(doc)
        response = record["chunks"][0]["response"]
        assert response.startswith("[") and not response.rstrip().endswith("]"), response
        assert not doc.ents
        assert "truncated" in record["repairs"], record
        assert record["n_emitted"] == len(record["rejected"])


def test_command_line_assemble_extract_and_info(trained, batched_docs, tmp_path) -> None:
    from typer.testing import CliRunner

    from spacy_medllm.cli import app

    runner = CliRunner()
    pipeline = tmp_path / "pipeline"
    result = runner.invoke(
        app,
        [
            "assemble",
            str(pipeline),
            "--adapter",
            str(trained["adapter"].parent),  # the run folder: the adapter is found inside
            "--model",
            str(trained["base"]),
            "--max-new-tokens",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "DRUG" in result.output and (pipeline / "config.cfg").exists()

    texts = tmp_path / "texts.jsonl"
    texts.write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(GOLD_TEXTS)),
        encoding="utf8",
    )
    out = tmp_path / "out.jsonl"
    result = runner.invoke(
        app, ["extract", "--pipeline", str(pipeline), "-i", str(texts), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text(encoding="utf8").splitlines()]
    assert [line["id"] for line in lines] == list(range(len(GOLD_TEXTS)))
    for line, doc in zip(lines, batched_docs[: len(GOLD_TEXTS)], strict=True):
        assert [(e["start"], e["end"], e["label"]) for e in line["entities"]] == entities(doc)
        assert all(line["text"][e["start"] : e["end"]] == e["text"] for e in line["entities"])
        assert line["medllm"]["medllm_ner"]["rejected"] == get_record(doc)["rejected"]

    result = runner.invoke(app, ["info", str(pipeline)])
    assert result.exit_code == 0, result.output
    assert "labels: DRUG, ADVERSE_EVENT" in result.output
    assert str(trained["base"]) in result.output

    # --constrained is saved in the pipeline's config and used after spacy.load.
    grounded = tmp_path / "grounded"
    args = ["assemble", str(grounded), "--adapter", str(trained["adapter"].parent)]
    args += ["--model", str(trained["base"]), "--constrained", "grounded"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert spacy.load(grounded).get_pipe("medllm_ner").generator.constrained == "grounded"
    result = runner.invoke(app, [*args[:-1], "loose"])
    assert result.exit_code != 0 and "--constrained must be one of" in result.output
    # So is --quantize.
    result = runner.invoke(app, [*args[:-2], "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    assert spacy.load(grounded).get_pipe("medllm_ner").generator.quantize == "int8"
    result = runner.invoke(app, [*args[:-2], "--quantize", "int4"])
    assert result.exit_code != 0 and "--quantize must be one of" in result.output


def test_few_shot_examples_come_from_training_data_and_enter_the_prompt() -> None:
    from spacy_medllm.pipeline.assemble import few_shot_examples

    seed_train = Path(__file__).resolve().parent.parent / "corpus/seed_ae_emails/train.json"
    shots = few_shot_examples(seed_train, 3, LABELS)
    assert len(shots) == 3
    assert [len(s["text"]) for s in shots] == sorted(len(s["text"]) for s in shots)
    for shot in shots:
        assert {e["label"] for e in shot["entities"]} == set(LABELS)
    nlp = spacy.blank("en")
    component = nlp.add_pipe(
        "medllm_ner",
        config={
            "labels": LABELS,
            "prompt": {"@misc": "medllm.PromptTemplate.v1", "examples": shots},
            "generator": {"@misc": "medllm.HFGenerator.v1", "model": "unused-model"},
        },
    )
    messages = component.prompt_builder.messages("New text.")
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert messages[1]["content"] == shots[0]["text"]
    assert json.loads(messages[2]["content"]) == shots[0]["entities"]


EMPTY_TEXTS = ["No drug was taken.", "I slept well after lunch.", "Nothing happened today."]


@pytest.fixture(scope="module")
def trained_with_empty(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An adapter that has also memorised `[]` for texts without an entity."""
    from spacy_medllm.training.trainer import finetune

    from .tiny_models import overfit_config

    root = tmp_path_factory.mktemp("with_empty")
    examples = [
        *(
            make_example(text, [(text.index(s), text.index(s) + len(s), lab) for s, lab in pairs])
            for text, pairs in GOLD
        ),
        *(make_example(text, []) for text in EMPTY_TEXTS),
    ]
    config = overfit_config(
        trained["base"], root / "run", LABELS, max_steps=80, batch_size=9, max_empty_share=None
    )
    return {"base": trained["base"], "adapter": finetune(config, examples), "examples": examples}


def test_calibrating_the_empty_answer_threshold(trained_with_empty, tmp_path) -> None:
    """`calibrate` scores the pipeline at each threshold from two runs (greedy with the recorded
    probabilities of `[]`, and vetoed): the model answers the texts without an entity `[]`; at
    1.0 it must name something there (grounded decoding copies it from the text: false
    positives), at a tiny threshold it answers `[]` everywhere, so the best is greedy; the
    composed rows equal real runs at those thresholds; the pipeline's own setting is restored,
    and `--write` saves the chosen one into config.cfg."""
    from typer.testing import CliRunner

    from spacy_medllm.cli import app
    from spacy_medllm.evaluation.calibrate import calibrate_empty_threshold
    from spacy_medllm.evaluation.evaluate import evaluate_pipeline
    from spacy_medllm.pipeline.assemble import build_pipeline

    gold = trained_with_empty["examples"]
    nlp = build_pipeline(
        model=str(trained_with_empty["base"]),
        adapter=str(trained_with_empty["adapter"]),
        max_new_tokens=64,
        constrained="grounded",
    )
    report = calibrate_empty_threshold(nlp, gold, [None, 1.0, 1e-9], progress=False)
    plain, vetoed, forced = report["rows"]
    assert report["n_probabilities"] == len(gold) and report["n_rerun"] == len(EMPTY_TEXTS)
    assert plain["texts"]["n_without_gold_answered"] == 0 and plain["f1"] > 0.8
    assert vetoed["texts"]["n_without_gold_answered"] == len(EMPTY_TEXTS)
    assert vetoed["fp"] > plain["fp"]
    assert forced["tp"] == forced["fp"] == 0 and forced["recall"] == 0.0
    assert report["best"] is None and report["best_f1"] == plain["f1"] > vetoed["f1"]
    assert report["verified"]["f1"] == plain["f1"]
    generator = nlp.get_pipe("medllm_ner").generator
    assert generator.empty_answer_threshold is None and not generator.record_empty_probability
    # The composed rows are what the pipeline gives when run at those thresholds.
    for threshold, row in ((1.0, vetoed), (1e-9, forced)):
        generator.empty_answer_threshold = threshold
        full = evaluate_pipeline(nlp, gold, progress=False)["strict"]["micro"]
        assert (full["tp"], full["fp"], full["fn"]) == (row["tp"], row["fp"], row["fn"])
    generator.empty_answer_threshold = None

    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        calibrate_empty_threshold(nlp, gold, [0.0])
    with pytest.raises(ValueError, match="no component with a transformers generator"):
        calibrate_empty_threshold(spacy.blank("en"), gold, [None])

    folder = tmp_path / "pipeline"
    nlp.to_disk(folder)
    gold_file = tmp_path / "dev.jsonl"
    lines = [
        {
            "text": e["text"],
            "spans": [{"start": s, "end": t, "label": lab} for s, t, lab in e["spans"]],
        }
        for e in gold
    ]
    gold_file.write_text("".join(json.dumps(line) + "\n" for line in lines), "utf8")
    result = CliRunner().invoke(
        app,
        [
            "calibrate", str(folder), "--gold", str(gold_file), "--thresholds", "1.0,none",
            "--output", str(tmp_path / "cal.json"), "--write", str(tmp_path / "out"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "cal.json").read_text("utf8"))
    assert [row["threshold"] for row in written["rows"]] == [1.0, None]
    assert written["best"] is None
    assert "| None **best** |" in (tmp_path / "cal.md").read_text("utf8")
    saved = spacy.load(tmp_path / "out").get_pipe("medllm_ner").generator
    assert saved.empty_answer_threshold is None and saved.constrained == "grounded"
    # A threshold chosen elsewhere is kept in config.cfg: what spacy.load builds from.
    from spacy_medllm.evaluation.calibrate import apply_threshold

    apply_threshold(nlp, 0.85)
    nlp.to_disk(tmp_path / "again")
    assert (
        spacy.load(tmp_path / "again").get_pipe("medllm_ner").generator.empty_answer_threshold
        == 0.85
    )
    refused = CliRunner().invoke(
        app, ["calibrate", str(folder), "--corpus", "seed", "--split", "test", "--output", "x.json"]
    )
    assert refused.exit_code != 0 and "dev split" in refused.output
