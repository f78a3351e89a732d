"""The medllm_ner component: assignment, records, batching, chunking, errors, scoring, I/O."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import spacy
from spacy.tokens import Doc, DocBin, Span
from spacy.training import Example

from spacy_medllm import get_record
from spacy_medllm.core.chunking import ChunkingError
from spacy_medllm.pipeline.component import MedLLMParseError
from tests.scripted import ScriptedGenerator, lexicon_answer

LEXICON = {"Abilify": "DRUG", "nausea": "ADVERSE_EVENT", "vomiting": "ADVERSE_EVENT"}


def make_nlp(answer=None, lang="en", **config):
    nlp = spacy.blank(lang)
    # a scripted generator (no adapter): the component's default labels and prompt
    config.setdefault("generator", {"@misc": "test.ScriptedLexiconGenerator.v1", "lexicon": {}})
    component = nlp.add_pipe("medllm_ner", config=config)
    component.generator = ScriptedGenerator(answer or lexicon_answer(LEXICON))
    return nlp, component


def ents(doc: Doc):
    return [(e.start_char, e.end_char, e.label_, e.text) for e in doc.ents]


def test_entities_land_at_character_offsets():
    nlp, _ = make_nlp()
    doc = nlp("After starting Abilify I have nausea and vomiting.")
    assert ents(doc) == [
        (15, 22, "DRUG", "Abilify"),
        (30, 36, "ADVERSE_EVENT", "nausea"),
        (41, 49, "ADVERSE_EVENT", "vomiting"),
    ]
    record = get_record(doc)
    assert record["n_emitted"] == 3 and record["n_spans"] == 3 and record["rejected"] == []


def test_invented_entity_is_reported_not_set():
    answer = json.dumps(
        [{"text": "Abilify", "label": "DRUG"}, {"text": "headache", "label": "ADVERSE_EVENT"}]
    )
    nlp, _ = make_nlp(lambda text: answer)
    doc = nlp("Abilify made me dizzy.")
    assert [e.text for e in doc.ents] == ["Abilify"]
    rejected = get_record(doc)["rejected"]
    assert rejected == [
        {
            "text": "headache",
            "label": "ADVERSE_EVENT",
            "reason": "not_in_text",
            "detail": rejected[0]["detail"],
        }
    ]


def test_unknown_label_is_reported_with_the_models_label():
    answer = json.dumps([{"text": "Denver", "label": "CITY"}, {"text": "Abilify", "label": "drug"}])
    nlp, _ = make_nlp(lambda text: answer)
    doc = nlp("Abilify in Denver.")
    assert ents(doc) == [(0, 7, "DRUG", "Abilify")]
    reasons = [(r["text"], r["label"], r["reason"]) for r in get_record(doc)["rejected"]]
    assert reasons == [("Denver", "CITY", "unknown_label")]


def test_parse_failure_is_recorded_with_the_response_and_strict_raises():
    nlp, component = make_nlp(lambda text: "I am sorry, I cannot help with that.")
    doc = nlp("Abilify and nausea.")
    assert doc.ents == ()
    errors = get_record(doc)["parse_errors"]
    assert len(errors) == 1 and errors[0]["response"].startswith("I am sorry")
    component.strict = True
    with pytest.raises(MedLLMParseError, match="could not parse"):
        nlp("Abilify and nausea.")


def test_overlaps_resolved_in_ents_and_kept_in_spans():
    answer = json.dumps(
        [{"text": "type 2 diabetes", "label": "DISEASE"}, {"text": "diabetes", "label": "DISEASE"}]
    )
    nlp, _ = make_nlp(lambda text: answer)
    doc = nlp("History of type 2 diabetes.")
    assert [e.text for e in doc.ents] == ["type 2 diabetes"]
    assert [r["reason"] for r in get_record(doc)["rejected"]] == ["overlap"]

    nlp, _ = make_nlp(lambda text: answer, output="spans", spans_key="sc")
    doc = nlp("History of type 2 diabetes.")
    assert [s.text for s in doc.spans["sc"]] == ["type 2 diabetes", "diabetes"]
    assert doc.ents == ()
    assert get_record(doc)["rejected"] == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_existing_entities_kept_or_overwritten(overwrite):
    nlp, _ = make_nlp(overwrite_ents=overwrite)
    doc = nlp.make_doc("Abilify gave me nausea.")
    doc.ents = [Span(doc, 0, 1, label="BRAND")]
    doc = nlp.get_pipe("medllm_ner")(doc)
    if overwrite:
        assert [(e.text, e.label_) for e in doc.ents] == [
            ("Abilify", "DRUG"),
            ("nausea", "ADVERSE_EVENT"),
        ]
    else:
        assert [(e.text, e.label_) for e in doc.ents] == [
            ("Abilify", "BRAND"),
            ("nausea", "ADVERSE_EVENT"),
        ]
        assert [r["reason"] for r in get_record(doc)["rejected"]] == ["existing_entity"]


def test_empty_documents_are_skipped_and_kept_in_order():
    nlp, component = make_nlp()
    texts = ["Abilify helps.", "", "   \n ", "I had nausea."]
    docs = list(nlp.pipe(texts))
    assert [d.text for d in docs] == texts
    assert [len(d.ents) for d in docs] == [1, 0, 0, 1]
    assert get_record(docs[1])["skipped"] == "empty document"
    # The model never saw the empty documents.
    assert [t for call in component.generator.calls for t in call] == [texts[0], texts[3]]


def test_pipe_batches_by_generator_batch_size_and_matches_single_calls():
    texts = [
        f"Patient {i} took Abilify and had {'nausea' if i % 2 else 'vomiting'}." for i in range(10)
    ]
    nlp, component = make_nlp()
    component.generator.batch_size = 4
    batched = [ents(d) for d in nlp.pipe(texts)]
    assert [len(call) for call in component.generator.calls] == [4, 4, 2]
    single = [ents(nlp(t)) for t in texts]
    assert batched == single


def test_generator_failure_is_recorded_on_its_document_and_strict_raises():
    nlp, component = make_nlp()
    component.generator = ScriptedGenerator(lexicon_answer(LEXICON), batch_size=2, fail_on="BOOM")
    texts = ["Abilify.", "BOOM nausea", "vomiting", "Abilify again"]
    # By default the failing batch is retried one document at a time: only the bad one fails.
    docs = list(nlp.pipe(texts))
    assert [d.text for d in docs] == texts
    assert "scripted failure" in get_record(docs[1])["error"] and docs[1].ents == ()
    assert [get_record(d)["error"] for d in (docs[0], docs[2], docs[3])] == [None] * 3
    assert [[e.text for e in d.ents] for d in docs] == [["Abilify"], [], ["vomiting"], ["Abilify"]]
    assert component.n_failed_docs == 1
    # strict: the error goes to spaCy's error handler, which raises by default...
    component.strict = True
    with pytest.raises(RuntimeError, match="scripted failure"):
        list(nlp.pipe(texts))
    # ...or records the whole batch, as the handler chooses.
    seen = []
    nlp.set_error_handler(lambda name, proc, docs, e: seen.append((name, len(docs))))
    docs = list(nlp.pipe(texts))
    assert [d.text for d in docs] == texts
    assert seen == [("medllm_ner", 2)]
    assert "scripted failure" in get_record(docs[0])["error"]
    assert get_record(docs[2])["error"] is None and [e.text for e in docs[2].ents] == ["vomiting"]


def test_long_document_is_split_at_sentences_and_offsets_are_right():
    sentences = [f"Day {i}: the patient took Abilify and reported nausea." for i in range(30)]
    text = " ".join(sentences)
    nlp, component = make_nlp()
    component.generator.budget = 40  # 10 overhead + about 30 words per prompt
    doc = nlp(text)
    prompts = [t for call in component.generator.calls for t in call]
    assert len(prompts) > 5
    assert all(component.generator.count_prompt_tokens([{"content": p}]) <= 40 for p in prompts)
    record = get_record(doc)
    assert len(record["chunks"]) == len(prompts)
    drugs = [e for e in doc.ents if e.label_ == "DRUG"]
    assert len(drugs) == 30
    assert all(
        e.text == "Abilify" and text[e.start_char : e.end_char] == "Abilify" for e in doc.ents[:1]
    )
    starts = [text.index("Abilify", text.index(f"Day {i}:")) for i in range(30)]
    assert [e.start_char for e in drugs] == starts


def test_max_chunk_tokens_splits_even_where_the_context_would_hold_the_whole_text():
    sentences = [f"Day {i}: the patient took Abilify and reported nausea." for i in range(6)]
    text = " ".join(sentences)
    nlp, component = make_nlp(max_chunk_tokens=20)  # the scripted budget is None: no context cap
    doc = nlp(text)
    prompts = [t for call in component.generator.calls for t in call]
    # 9 words a sentence: two sentences per piece fit 20 text tokens, three do not
    assert prompts == [" ".join(sentences[i : i + 2]) for i in range(0, 6, 2)]
    assert [(c["start"], c["end"]) for c in get_record(doc)["chunks"]] == [
        (text.index(p), text.index(p) + len(p)) for p in prompts
    ]
    starts = [text.index("Abilify", text.index(f"Day {i}:")) for i in range(6)]
    assert [e.start_char for e in doc.ents if e.label_ == "DRUG"] == starts
    # a context smaller than the cap still wins
    component.generator.budget = 10 + 9
    component.generator.calls.clear()
    nlp(text)
    assert [t for call in component.generator.calls for t in call] == sentences
    # the setting is part of the pipeline's config
    assert nlp.config["components"]["medllm_ner"]["max_chunk_tokens"] == 20


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_chunk_tokens": 0}, ">= 1"),
        ({"max_chunk_tokens": True}, "max_chunk_tokens"),  # spaCy's config check
        ({"max_chunk_tokens": 64, "long_documents": "error"}, 'long_documents = "split"'),
    ],
)
def test_max_chunk_tokens_is_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        make_nlp(**settings)


def test_long_document_error_mode_names_the_budget():
    nlp, component = make_nlp(long_documents="error")
    component.generator.budget = 20
    with pytest.raises(ChunkingError, match="prompt budget of 20 tokens"):
        nlp("word " * 50)


def test_save_io_keeps_prompt_and_response_and_records_survive_docbin():
    nlp, _ = make_nlp(save_io=True)
    doc = nlp("Abilify caused nausea.")
    chunk = get_record(doc)["chunks"][0]
    assert chunk["prompt"][-1] == {"role": "user", "content": "Abilify caused nausea."}
    assert "ADVERSE_EVENT" in chunk["prompt"][0]["content"]
    assert json.loads(chunk["response"])[0] == {"text": "Abilify", "label": "DRUG"}
    restored = next(iter(DocBin(docs=[doc], store_user_data=True).get_docs(nlp.vocab)))
    # msgpack gives tuples back for lists; the content must be the same.
    assert json.loads(json.dumps(get_record(restored))) == json.loads(json.dumps(get_record(doc)))


def test_custom_label_set_changes_prompt_and_filters_labels():
    answer = json.dumps([{"text": "Denver", "label": "CITY"}, {"text": "Abilify", "label": "DRUG"}])
    nlp, component = make_nlp(
        lambda text: answer, labels=["CITY"], label_definitions={"CITY": "a city name"}
    )
    doc = nlp("Abilify in Denver.")
    assert ents(doc) == [(11, 17, "CITY", "Denver")]
    assert "- CITY: a city name" in component.prompt_builder.messages("x")[0]["content"]
    assert "DRUG" not in component.prompt_builder.messages("x")[0]["content"]
    component.initialize(labels=["DRUG"])
    assert component.labels == ("DRUG",) and component.generator.initialized
    assert ents(nlp("Abilify in Denver.")) == [(0, 7, "DRUG", "Abilify")]


def test_bad_settings_give_clear_errors():
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match="output must be one of"):
        nlp.add_pipe("medllm_ner", config={"output": "entities"})
    with pytest.raises(ValueError, match="not in the label set"):
        nlp.add_pipe(
            "medllm_ner", name="x", config={"labels": ["DRUG"], "label_definitions": {"DOSE": "d"}}
        )


def test_score_per_label_and_label_blind():
    nlp, _ = make_nlp(
        lambda text: json.dumps(
            [{"text": "nausea", "label": "DRUG"}, {"text": "Abilify", "label": "DRUG"}]
        )
    )
    reference = nlp.make_doc("Abilify gave me nausea.")
    reference.ents = [Span(reference, 0, 1, "DRUG"), Span(reference, 3, 4, "ADVERSE_EVENT")]
    example = Example(nlp(reference.text), reference)
    scores = nlp.get_pipe("medllm_ner").score([example])
    assert scores["ents_p"] == pytest.approx(0.5) and scores["ents_r"] == pytest.approx(0.5)
    assert scores["ents_per_type"]["DRUG"]["p"] == pytest.approx(0.5)
    assert scores["ents_per_type"]["ADVERSE_EVENT"]["r"] == 0.0
    assert scores["ents_unlabeled_f"] == pytest.approx(1.0)
    assert nlp.evaluate([example])["ents_f"] == pytest.approx(0.5)


def test_to_disk_and_spacy_load_restore_labels_prompt_and_generator_state(tmp_path):
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "medllm_ner",
        config={
            "labels": ["DRUG", "ADVERSE_EVENT"],
            "label_definitions": {"DRUG": "a medicine"},
            "generator": {"@misc": "test.ScriptedLexiconGenerator.v1", "lexicon": LEXICON},
            "prompt": {
                "@misc": "medllm.PromptTemplate.v1",
                "examples": [
                    {"text": "Abilify hurt", "entities": [{"text": "Abilify", "label": "DRUG"}]}
                ],
            },
        },
    )
    nlp.get_pipe("medllm_ner").generator.saved_state = {"adapter": "abc"}
    texts = [f"Note {i}: Abilify then nausea and vomiting." for i in range(20)]
    before = [ents(d) for d in nlp.pipe(texts)]
    nlp.to_disk(tmp_path / "pipe")
    loaded = spacy.load(tmp_path / "pipe")
    component = loaded.get_pipe("medllm_ner")
    assert component.labels == ("DRUG", "ADVERSE_EVENT")
    assert component.prompt_builder.messages("t") == nlp.get_pipe(
        "medllm_ner"
    ).prompt_builder.messages("t")
    assert component.generator.saved_state == {"adapter": "abc"}
    assert [ents(d) for d in loaded.pipe(texts)] == before


BLOCK_HEAVY_IMPORTS = """
import sys, traceback
HEAVY = ("torch", "transformers", "peft", "openai", "accelerate", "bitsandbytes")
attempts = []  # heavy imports requested from spacy_medllm's own code

class BlockHeavy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            # Other installed spaCy plugins (spacy-llm) probe for transformers in their entry
            # points; only imports that our package asks for count.
            if any("/spacy_medllm/" in frame.filename for frame in traceback.extract_stack()):
                attempts.append(name)
            raise ImportError(f"blocked import of {name}")
        return None

sys.meta_path.insert(0, BlockHeavy())
import spacy  # thinc probes for torch here; that probe is not ours
attempts.clear()
"""


def test_building_and_loading_a_pipeline_never_imports_torch(tmp_path):
    """With torch & co unimportable, building, adding, saving and loading pipelines still works."""
    script = BLOCK_HEAVY_IMPORTS + textwrap.dedent(
        f"""
        nlp = spacy.blank("en")
        nlp.add_pipe("medllm_ner")
        nlp.add_pipe("medllm_ner", name="remote", config={{"generator": {{
            "@misc": "medllm.OpenAIGenerator.v1", "model": "m", "base_url": "http://127.0.0.1:9/v1"}}}})
        nlp.to_disk({str(tmp_path / "p")!r})
        loaded = spacy.load({str(tmp_path / "p")!r})
        assert loaded.pipe_names == ["medllm_ner", "remote"]
        doc = loaded("")  # an empty document needs no model
        print("ATTEMPTS", attempts)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "ATTEMPTS []" in result.stdout


@pytest.mark.parametrize("overwrite", [False, True])
def test_tokens_the_model_read_are_outside_and_unanswered_chunks_stay_missing(overwrite):
    # Two sentences, one prompt each; the answer to the second cannot be parsed. A student trained
    # on these Docs must learn "O" for what the model read and left unmarked, and nothing about the
    # sentence whose answer was lost.
    def answer(text: str) -> str:
        return "not json at all" if "second" in text else lexicon_answer(LEXICON)(text)

    nlp, component = make_nlp(answer, overwrite_ents=overwrite)
    component.generator.budget = 20  # one sentence per prompt
    text = "After starting Abilify I have nausea today. The second sentence mentions vomiting."
    doc = nlp(text)
    record = get_record(doc)
    assert len(record["chunks"]) == 2 and len(record["parse_errors"]) == 1
    first_end = record["chunks"][0]["end"]
    first = [t.ent_iob_ for t in doc if t.idx + len(t) <= first_end]
    second = [t.ent_iob_ for t in doc if t.idx >= first_end]
    assert first == ["O", "O", "B", "O", "O", "B", "O", "O"]
    assert second and set(second) == {""}
    # The DocBin round trip keeps the distinction (what distillation writes and trains on).
    from spacy.tokens import DocBin

    restored = next(DocBin(docs=[doc]).get_docs(nlp.vocab))
    assert [t.ent_iob_ for t in restored] == [t.ent_iob_ for t in doc]


def test_outside_tokens_never_override_another_components_entities():
    nlp, _ = make_nlp(answer=lambda text: "[]")
    nlp.add_pipe("entity_ruler", before="medllm_ner").add_patterns(
        [{"label": "DRUG", "pattern": "Abilify"}]
    )
    doc = nlp("After starting Abilify I have nausea.")
    assert [(t.text, t.ent_iob_) for t in doc][2] == ("Abilify", "B")
    assert {t.ent_iob_ for t in doc if t.text != "Abilify"} == {"O"}


def test_sentence_ends_keep_their_closing_quotes() -> None:
    # Found by the property tests: the `"` after `?` was in no piece, so never sent to the model.
    from spacy_medllm.core.chunking import sentence_ranges
    from spacy_medllm.pipeline.pieces import halve

    text = 'He asked "is it the pills?" and left. (Then slept.) Next day fine.'
    doc = spacy.blank("en")(text)
    ranges = sentence_ranges(doc)
    assert [text[a:b] for a, b in ranges] == [
        'He asked "is it the pills?"',
        "and left.",
        "(Then slept.)",
        "Next day fine.",
    ]
    covered = {i for a, b in halve(text, 0, len(text)) for i in range(a, b)}
    assert all(i in covered for i, char in enumerate(text) if not char.isspace())
