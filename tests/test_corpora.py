"""Corpus readers: hand-counted documents of the real corpora, hand-written fixtures in each format,
PMID splits, the PHEE/ADE refusal, the spaCy reader and the converter."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import spacy
from spacy.util import registry

from spacy_medllm.cli import main as cli
from spacy_medllm.core.examples import make_example, read_docbin, read_jsonl
from spacy_medllm.corpora import docs, paths, readers, splits
from spacy_medllm.corpora import registry as corpora_registry
from spacy_medllm.corpora.registry import corpus_stats, load_corpus
from spacy_medllm.corpora.splits import (
    CorpusContaminationError,
    check_no_cross_contamination,
    check_no_text_overlap,
    hash_split,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = paths.corpora_root()


def needs(folder: str):
    """Skip (with the reason) when a real corpus is not available on this machine."""
    path = SHARED / folder
    return pytest.mark.skipif(
        not path.exists(), reason=f"{path} not available (set $MEDLLM_CORPORA to the corpora)"
    )


@pytest.fixture(autouse=True)
def fresh_cache():
    corpora_registry._read_cached.cache_clear()
    yield
    corpora_registry._read_cached.cache_clear()


def by_id(examples):
    return {e["id"]: e for e in examples}


# -- ADE corpus v2: hand-written fixture ----------------------------------------------------------

# Invented sentences in the corpus's format; offsets are document offsets ("PMID\n\nTitle..."),
# so a sentence starting the document has offset len(PMID) + 2.
ADE_AE = [
    # 111: the title, offset 5. "aspirin" occurs twice; the annotated one is the second (25-32),
    # which only the document offsets can tell. Two relations repeat the effect "rash".
    "111|Rash after aspirin, then aspirin and ibuprofen again.|Rash|5|9|aspirin|30|37",
    "111|Rash after aspirin, then aspirin and ibuprofen again.|Rash|5|9|ibuprofen|42|51",
    # 111: a later sentence (offset 100) with a drug nested in the effect.
    "111|Severe aspirin-induced asthma followed.|aspirin-induced asthma|107|129|aspirin|107|114",
    # 222 and 333 share a title: kept once, in the earlier split.
    "222|Hepatitis due to valproate.|Hepatitis|5|14|valproate|22|31",
    "333|Hepatitis due to valproate.|Hepatitis|5|14|valproate|22|31",
]
ADE_DOSE = ["111|Rash after aspirin, then aspirin and ibuprofen again.|again|52|57|ibuprofen|42|51"]
ADE_NEG = ["444 NEG No drug was given.", "555 NEG Nothing happened."]


@pytest.fixture
def ade_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ade" / "ADE-Corpus-V2"
    folder.mkdir(parents=True)
    (folder / "DRUG-AE.rel").write_text("\n".join(ADE_AE) + "\n", "utf8")
    (folder / "DRUG-DOSE.rel").write_text("\n".join(ADE_DOSE) + "\n", "utf8")
    (folder / "ADE-NEG.txt").write_text("\n".join(ADE_NEG) + "\n", "utf8")
    return tmp_path / "ade"


def all_splits(name, path, **kwargs):
    return [
        e for split in ("train", "dev", "test") for e in load_corpus(name, split, path, **kwargs)
    ]


def test_ade_fixture_offsets_duplicates_and_overlaps(ade_folder):
    examples = by_id(all_splits("ade-corpus-v2", ade_folder))
    first = examples["111:5"]
    assert first["text"][25:32] == "aspirin" and first["text"][11:18] == "aspirin"
    # the second "aspirin" (document offset 30), the effect once although two relations give it
    assert first["spans"] == [(0, 4, "ADVERSE_EVENT"), (25, 32, "DRUG"), (37, 46, "DRUG")]
    # the nested drug loses to the longer effect
    assert examples["111:100"]["spans"] == [(7, 29, "ADVERSE_EVENT")]
    # the shared title is kept once
    assert sum(e["text"] == "Hepatitis due to valproate." for e in examples.values()) == 1
    stats = corpus_stats("ade-corpus-v2", ade_folder)
    reader = stats["reader"]
    assert reader["relations_effect"] == 5 and reader["relations_dose"] == 1
    assert reader["duplicate_mentions"] == 2  # "Rash" twice, "ibuprofen" again in the DOSE file
    assert reader["negative_sentences_skipped"] == 2
    assert reader["duplicate_texts_removed"] == 1
    assert reader.get("mentions_unplaced", 0) == 0
    removed = Counter()
    for entry in stats["splits"].values():
        removed.update(entry["overlaps_removed"])
    assert removed == Counter({"ADVERSE_EVENT>DRUG": 1})


def test_ade_fixture_dosage_on_request_and_overlaps_kept_on_request(ade_folder):
    default = by_id(all_splits("ade-corpus-v2", ade_folder))
    assert all(s[2] != "DOSAGE" for e in default.values() for s in e["spans"])
    with_dose = by_id(all_splits("ade-corpus-v2", ade_folder, labels=["DRUG", "DOSAGE"]))
    assert with_dose["111:5"]["spans"] == [(25, 32, "DRUG"), (37, 46, "DRUG"), (47, 52, "DOSAGE")]
    kept = by_id(all_splits("ade-corpus-v2", ade_folder, keep_overlaps=True))
    assert kept["111:100"]["spans"] == [(7, 29, "ADVERSE_EVENT"), (7, 14, "DRUG")]
    with pytest.raises(ValueError, match="no labels"):
        load_corpus("ade-corpus-v2", "train", ade_folder, labels=["Chemical"])


def test_ade_fixture_splits_follow_the_pmid_hash(ade_folder):
    for split in ("train", "dev", "test"):
        for example in load_corpus("ade-corpus-v2", split, ade_folder):
            assert hash_split(example["id"].split(":")[0]) == split


# -- the hash split -------------------------------------------------------------------------------


def test_hash_split_is_fixed_and_near_80_10_10():
    # fixed values: the split of a PMID never changes between runs, machines or versions
    assert [hash_split(p) for p in ("10030778", "10048291", "10082597", "2", "5", "9")] == [
        "test",
        "train",
        "train",
        "dev",
        "test",
        "train",
    ]
    counts = Counter(hash_split(str(i)) for i in range(20000))
    assert 0.78 < counts["train"] / 20000 < 0.82
    assert 0.09 < counts["dev"] / 20000 < 0.11 and 0.09 < counts["test"] / 20000 < 0.11
    assert hash_split("7", (0.0, 0.0, 1.0)) == "test"
    with pytest.raises(ValueError):
        hash_split("7", (0.5, 0.5, 0.5))


# -- ADE corpus v2: the real files ----------------------------------------------------------------


@needs("ade-corpus-v2")
def test_ade_first_documents_by_hand():
    """The first three PMIDs of DRUG-AE.rel, counted by hand (offsets only: the corpus has no
    stated licence, so none of its text is written here)."""
    train = by_id(load_corpus("ade-corpus-v2", "train"))
    test = by_id(load_corpus("ade-corpus-v2", "test"))
    # 10030778: a title (sentence offset 10 = len("10030778\n\n")); relation 1
    assert test["10030778:10"]["spans"] == [(12, 24, "DRUG"), (33, 44, "ADVERSE_EVENT")]
    assert len(test["10030778:10"]["text"]) == 45
    # 10048291: the title and a sentence at document offset 817 (908 - 91); relations 2-3
    assert train["10048291:10"]["spans"] == [(21, 34, "ADVERSE_EVENT"), (84, 102, "DRUG")]
    assert train["10048291:817"]["spans"] == [(91, 109, "DRUG"), (143, 168, "ADVERSE_EVENT")]
    # 10082597: one effect with two drugs (relations 4-5: the effect is given twice) ...
    assert train["10082597:588"]["spans"] == [
        (32, 47, "ADVERSE_EVENT"),
        (58, 66, "DRUG"),
        (71, 80, "DRUG"),
    ]
    # ... and two effects x two drugs (relations 7-10: 8 mentions, 4 spans)
    assert train["10082597:828"]["spans"] == [
        (34, 42, "DRUG"),
        (96, 105, "DRUG"),
        (146, 158, "ADVERSE_EVENT"),
        (163, 182, "ADVERSE_EVENT"),
    ]
    rows = (SHARED / "ade-corpus-v2/ADE-Corpus-V2/DRUG-AE.rel").read_text("utf8").splitlines()
    for row in rows[:10]:  # every mention of those rows is where its document offset says
        _, sentence, effect, e_start, _, drug, d_start, _ = row.split("|")
        example = next(e for e in (*train.values(), *test.values()) if e["text"] == sentence)
        offset = int(example["id"].split(":")[1])
        starts = {s: sentence[s:e] for s, e, _ in example["spans"]}
        assert starts[int(e_start) - offset] == effect and starts[int(d_start) - offset] == drug


@needs("ade-corpus-v2")
def test_ade_split_is_disjoint_by_pmid_and_deterministic():
    pmids = {
        s: {e["id"].split(":")[0] for e in load_corpus("ade-corpus-v2", s)}
        for s in ("train", "dev", "test")
    }
    assert not pmids["train"] & pmids["dev"]
    assert not pmids["train"] & pmids["test"]
    assert not pmids["dev"] & pmids["test"]
    n = sum(map(len, pmids.values()))
    assert 0.75 < len(pmids["train"]) / n < 0.85
    first = [e["id"] for e in load_corpus("ade-corpus-v2", "test")]
    corpora_registry._read_cached.cache_clear()
    assert [e["id"] for e in load_corpus("ade-corpus-v2", "test")] == first
    stats = corpus_stats("ade-corpus-v2")
    assert stats["texts_shared_between_splits"] == {"train/dev": 0, "train/test": 0, "dev/test": 0}
    assert stats["reader"].get("mentions_unplaced", 0) == 0
    assert stats["reader"]["sentences"] == 4272  # SOURCE.md: 4,272 sentences


# -- PubTator: BC5CDR and NCBI-disease ------------------------------------------------------------

PUBTATOR = """\
1|t|Aspirin and rash.
1|a|The rash went.
1\t0\t7\tAspirin\tChemical\tD1
1\t12\t16\trash\tDisease\tD2
1\t12\t16\trash\tDisease\tD2
1\t22\t26\trash  \tDisease\tD2
1\t12\t16\titch\tDisease\tD3
1\tCID\tD1\tD2

1|t|Again the first document.
1|a|Ignored.
1\t0\t5\tAgain\tDisease\tD4

2|t|Nothing.
2|a|
"""


def test_pubtator_fixture_mismatches_duplicates_and_repeated_documents(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text(PUBTATOR, "utf8")
    counts: Counter[str] = Counter()
    examples = readers.read_pubtator(path, "fixture", counts)
    assert [e["id"] for e in examples] == ["1", "2"]
    assert examples[0]["text"] == "Aspirin and rash. The rash went."
    assert examples[0]["spans"] == [(0, 7, "Chemical"), (12, 16, "Disease"), (22, 26, "Disease")]
    assert examples[1]["text"] == "Nothing. " and examples[1]["spans"] == []
    assert counts["mention_mismatches"] == 2
    assert counts["mention_mismatches_whitespace_only"] == 1  # "rash  " kept
    assert counts["mention_mismatches_dropped"] == 1  # "itch" is not what the offsets hold
    assert counts["duplicate_spans"] == 1
    assert counts["duplicate_documents_removed"] == 1
    assert counts["relation_lines"] == 1


@needs("bc5cdr")
def test_bc5cdr_first_documents_by_hand():
    train = load_corpus("bc5cdr", "train")
    first, second, third = train[:3]
    assert [e["id"] for e in (first, second, third)] == ["227508", "354896", "435349"]
    title = "Naloxone reverses the antihypertensive effect of clonidine."
    assert first["text"].startswith(title + " In unanesthetized")
    # 20 mentions: 16 Chemical, 4 Disease (the title's "antihypertensive" is not annotated)
    labels = Counter(label for _, _, label in first["spans"])
    assert labels == {"Chemical": 16, "Disease": 4}
    assert first["spans"][:5] == [
        (0, 8, "Chemical"),
        (49, 58, "Chemical"),
        (93, 105, "Disease"),  # 60 (title + space) + len("In unanesthetized, spontaneously ")
        (181, 190, "Chemical"),
        (244, 252, "Chemical"),  # "nalozone" (sic), kept as annotated
    ]
    assert [first["text"][s:e] for s, e, _ in first["spans"][:5]] == [
        "Naloxone",
        "clonidine",
        "hypertensive",
        "clonidine",
        "nalozone",
    ]
    assert second["spans"] == [
        (0, 9, "Chemical"),
        (18, 34, "Disease"),
        (90, 99, "Chemical"),
        (142, 152, "Disease"),
        (331, 347, "Disease"),
        (409, 418, "Chemical"),
    ]
    assert second["text"][18:34] == "cardiac asystole"
    assert third["spans"][:4] == [
        (0, 13, "Chemical"),
        (41, 55, "Disease"),
        (80, 102, "Chemical"),
        (104, 107, "Chemical"),
    ]
    stats = corpus_stats("bc5cdr")
    # SOURCE.md: 500 docs per split; train 5,203 / 4,182, dev 5,347 / 4,244, test 5,385 / 4,424
    assert {s: v["labels"] for s, v in stats["splits"].items()} == {
        "train": {"Chemical": 5203, "Disease": 4182},
        "dev": {"Chemical": 5347, "Disease": 4244},
        "test": {"Chemical": 5385, "Disease": 4424},
    }
    assert all(v["n_docs"] == 500 for v in stats["splits"].values())
    assert stats["reader"].get("mention_mismatches", 0) == 0


@needs("ncbi-disease")
def test_ncbi_first_documents_by_hand():
    train = load_corpus("ncbi-disease", "train")
    first, second = train[:2]
    assert (first["id"], second["id"]) == ("10192393", "10194428")
    assert first["spans"] == [
        (s, e, "Disease")
        for s, e in [
            (15, 26),
            (443, 449),
            (483, 496),
            (539, 565),
            (567, 570),
            (670, 698),
            (855, 867),
            (879, 893),
            (1021, 1035),
            (1210, 1221),
            (1262, 1268),
            (1312, 1326),
            (1385, 1392),
            (1615, 1622),
        ]
    ]
    assert first["text"][670:698] == "colon and some other cancers"
    assert len(second["spans"]) == 13
    assert [second["text"][s:e] for s, e, _ in second["spans"][:4]] == [
        "hemochromatosis",
        "hemochromatosis",
        "Hereditary hemochromatosis",
        "HH",
    ]
    fine = load_corpus("ncbi-disease-fine", "train")[1]
    assert [label for _, _, label in fine["spans"][:5]] == [
        "Modifier",
        "SpecificDisease",
        "SpecificDisease",
        "SpecificDisease",
        "DiseaseClass",
    ]
    stats = corpus_stats("ncbi-disease")
    assert {s: v["n_docs"] for s, v in stats["splits"].items()} == {
        "train": 592,
        "dev": 100,
        "test": 100,
    }
    # SOURCE.md: 787 dev and 960 test mentions; train 5,145 less the repeated PMID's 11
    assert {s: v["n_spans"] for s, v in stats["splits"].items()} == {
        "train": 5134,
        "dev": 787,
        "test": 960,
    }
    assert stats["reader"]["duplicate_documents_removed"] == 1  # PMID 8528200
    # one mention is written with two trailing spaces; its offsets are right
    assert stats["reader"]["mention_mismatches"] == 1
    assert stats["reader"]["mention_mismatches_whitespace_only"] == 1


# -- PHEE -----------------------------------------------------------------------------------------


def phee_record(id_, context, events):
    return {
        "id": id_,
        "context": context,
        "is_mult_event": False,
        "annotations": [{"events": events}],
    }


def arg(*mentions):
    """An argument: each mention is a list of (text, start) pieces."""
    return {
        "text": [[t for t, _ in pieces] for pieces in mentions],
        "start": [[s for _, s in pieces] for pieces in mentions],
    }


@pytest.fixture
def phee_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "phee" / "data" / "json"
    folder.mkdir(parents=True)
    adverse = phee_record(
        "1_1",
        "Rash and fever after aspirin 100 mg for gout.",
        [
            {
                "event_type": "Adverse_event",
                "Effect": arg([("Rash", 0), ("fever", 9)]),  # two pieces: two spans
                "Treatment": {
                    **arg([("aspirin 100 mg for gout", 21)]),
                    "Drug": arg([("aspirin", 21)]),
                    "Dosage": arg([("100 mg", 29)]),
                    "Disorder": arg([("gout", 40)]),
                },
            }
        ],
    )
    therapeutic = phee_record(
        "2_1",
        "Gout improved with colchicine.",
        [
            {
                "event_type": "Potential_therapeutic_event",
                "Effect": arg([("improved", 5)]),  # a therapeutic effect: skipped
                "Treatment": {"Drug": arg([("colchicine", 19)]), "Disorder": arg([("Gout", 0)])},
            }
        ],
    )
    wrong = phee_record(
        "3_1", "Headache.", [{"event_type": "Adverse_event", "Effect": arg([("Nausea", 0)])}]
    )
    rows = {"train": [adverse, therapeutic], "dev": [wrong], "test": [adverse]}
    for split, records in rows.items():
        (folder / f"{split}.json").write_text(
            "\n".join(json.dumps(r) for r in records) + "\n", "utf8"
        )
    return tmp_path / "phee"


def test_phee_fixture_labels_pieces_and_skips(phee_folder):
    train = load_corpus(
        "phee", "train", phee_folder, labels=["DRUG", "ADVERSE_EVENT", "DOSAGE", "DISEASE"]
    )
    assert train[0]["spans"] == [
        (0, 4, "ADVERSE_EVENT"),
        (9, 14, "ADVERSE_EVENT"),
        (21, 28, "DRUG"),
        (29, 35, "DOSAGE"),
        (40, 44, "DISEASE"),
    ]
    assert train[1]["spans"] == [(0, 4, "DISEASE"), (19, 29, "DRUG")]
    assert load_corpus("phee", "train", phee_folder)[1]["spans"] == [(19, 29, "DRUG")]
    assert load_corpus("phee", "dev", phee_folder)[0]["spans"] == []
    assert load_corpus("phee", "test", phee_folder) == []  # the same text as train: dropped
    reader = corpus_stats("phee", phee_folder)["reader"]
    assert reader["therapeutic_effects_skipped"] == 1
    assert reader["argument_pieces_extra"] == 1 * 2  # the two-piece Effect, in train and test
    assert reader["mention_mismatches_dropped"] == 1
    assert reader["duplicate_texts_removed"] == 1


@needs("phee")
def test_phee_first_documents_by_hand():
    train = load_corpus("phee", "train", labels=["DRUG", "ADVERSE_EVENT", "DOSAGE", "DISEASE"])
    first, second, third = train[:3]
    assert (first["id"], second["id"], third["id"]) == ("8908396_3", "10891991_1", "2332596_1")
    assert first["spans"] == [
        (154, 161, "DRUG"),
        (170, 183, "ADVERSE_EVENT"),
        (189, 197, "DISEASE"),
    ]
    assert [first["text"][s:e] for s, e, _ in first["spans"]] == [
        "insulin",
        "lipoatrophies",
        "diabetic",
    ]
    assert second["spans"] == [
        (117, 126, "DRUG"),
        (131, 139, "DISEASE"),
        (168, 196, "ADVERSE_EVENT"),
    ]
    assert third["spans"] == [(0, 13, "DRUG"), (14, 28, "ADVERSE_EVENT")]
    stats = corpus_stats("phee")
    assert {s: v["n_docs"] for s, v in stats["splits"].items()} == {
        "train": 2897,  # 2,898 less one sentence that occurs twice
        "dev": 960,
        "test": 968,
    }
    assert stats["reader"].get("mention_mismatches", 0) == 0


# -- contamination --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "train, test",
    [
        ("phee", "ade-corpus-v2"),
        ("ade-corpus-v2", "phee"),
        ("phee:train", "ade-corpus-v2:test"),
        ("ade-corpus-v2:train", "phee:test"),
        (["bc5cdr:train", "phee:train"], "ade-corpus-v2:test"),
        ("bc5cdr:test", "bc5cdr:test"),
    ],
)
def test_cross_contamination_is_refused(train, test):
    with pytest.raises(CorpusContaminationError):
        check_no_cross_contamination(train, test)


@pytest.mark.parametrize(
    "train, test",
    [
        ("phee:train", "phee:test"),
        ("ade-corpus-v2:train", "ade-corpus-v2:test"),
        ("bc5cdr", "ncbi-disease"),
        (["bc5cdr:train", "ncbi-disease:train"], "ade-corpus-v2:test"),
    ],
)
def test_allowed_combinations_pass(train, test):
    check_no_cross_contamination(train, test)


def test_text_overlap_check_normalises_case_and_spaces():
    train = [make_example("Rash after aspirin.", id="a"), make_example("Other.", id="b")]
    test = [make_example("rash  after Aspirin.", id="t1"), make_example("New.", id="t2")]
    with pytest.raises(CorpusContaminationError, match=r"1 of 2 test texts.*'t1'"):
        check_no_text_overlap(train, test)
    check_no_text_overlap(train, test, normalize=False)
    check_no_text_overlap(train, [test[1]])


@needs("phee")
@needs("ade-corpus-v2")
def test_phee_and_ade_really_share_sentences():
    """Why the refusal exists: most PHEE test sentences are ADE sentences."""
    ade = [e for s in ("train", "dev", "test") for e in load_corpus("ade-corpus-v2", s)]
    phee_test = load_corpus("phee", "test")
    shared = splits.shared_texts(ade, phee_test, normalize=False)
    assert len(shared) > 0.8 * len(phee_test)
    with pytest.raises(CorpusContaminationError):
        check_no_text_overlap(ade, phee_test)


# -- seed e-mails and the Estonian dev set ---------------------------------------------------------


def test_seed_corpus_from_the_repository():
    stats = corpus_stats("seed-ae-emails")
    assert {s: v["n_docs"] for s, v in stats["splits"].items()} == {
        "train": 676,  # 700 less 18 repeated e-mails less the 6 test e-mails
        "test": 59,
        "test_unseen": 53,
    }
    assert stats["train_duplicates_removed"] == 18
    assert stats["train_test_leak"]["test_ids"] == [
        f"test:{i}"
        for i in (19, 25, 43, 47, 52, 56)  # the seed benchmark's leaked records
    ]
    assert stats["gold_strings"]["test"]["unrecovered"] == 24
    assert stats["gold_strings"]["train"]["unrecovered"] == 317
    test = load_corpus("seed-ae-emails", "test")
    # answers keep the strings that have no span (paraphrases)
    assert sum(len(e["answer_entities"]) for e in test) == 174
    assert sum(len(e["spans"]) for e in test) == 154
    check_no_text_overlap(load_corpus("seed-ae-emails", "train"), test, normalize=False)


def test_seed_corpus_fixture_removes_leaks_and_duplicates(tmp_path):
    def record(text, drug, events):
        return {"input": text, "output": json.dumps({"drug_name": drug, "adverse_events": events})}

    a = record("Took Advil, got a rash.", "Advil", ["rash"])
    b = record("Lipitor gave me cramps.", "Lipitor", ["muscle cramps"])  # not in the text
    c = record("Zoloft made me dizzy.", "Zoloft", ["dizzy"])
    (tmp_path / "train.json").write_text(json.dumps([a, a, b, c]), "utf8")
    (tmp_path / "test.json").write_text(json.dumps([c, b]), "utf8")
    stats = corpus_stats("seed-ae-emails", tmp_path)
    assert stats["train_duplicates_removed"] == 1
    assert stats["train_test_leak"]["n_texts"] == 2
    assert [e["text"] for e in load_corpus("seed-ae-emails", "train", tmp_path)] == [a["input"]]
    assert load_corpus("seed-ae-emails", "test_unseen", tmp_path) == []
    assert stats["gold_strings"]["test"]["unrecovered"] == 1
    with pytest.raises(KeyError, match="no split 'dev'"):
        load_corpus("seed-ae-emails", "dev", tmp_path)


@pytest.mark.skipif(
    not corpora_registry.corpus_path("et-dev").exists(),
    reason=f"{corpora_registry.corpus_path('et-dev')} not available",
)
def test_et_dev_first_documents_by_hand():
    dev = load_corpus("et-dev", "dev")
    assert len(dev) == 30
    assert dev[0]["spans"] == [(17, 28, "DRUG"), (40, 57, "DISEASE"), (79, 92, "ADVERSE_EVENT")]
    assert dev[1]["spans"] == [(7, 21, "DRUG"), (51, 61, "ADVERSE_EVENT")]
    assert dev[3]["spans"] == [(0, 13, "PROCEDURE")]
    assert dev[0]["text"][17:28] == "metformiini"


# -- spaCy reader, writers, converter -------------------------------------------------------------

ET_FIXTURE = [
    # "aspiriin" ends inside the token "aspiriini": snapped outwards to the whole token
    {
        "id": "a",
        "text": "Ta võttis aspiriini ja sai lööbe.",
        "entities": [
            {"start": 10, "end": 18, "label": "DRUG"},
            {"start": 27, "end": 32, "label": "ADVERSE_EVENT"},
        ],
    },
    {
        "id": "b",
        "text": "Kolonoskoopia tehti.",
        "entities": [
            {"start": 0, "end": 13, "label": "PROCEDURE"},
        ],
    },
]


@pytest.fixture
def et_file(tmp_path: Path) -> Path:
    path = tmp_path / "et.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ET_FIXTURE), "utf8")
    return path


def test_registered_reader_gives_spacy_examples_with_snapped_gold(et_file):
    config = {
        "corpus": {
            "@readers": "medllm.Corpus.v1",
            "name": "et-dev",
            "split": "dev",
            "path": str(et_file),
        }
    }
    reader = registry.resolve(config)["corpus"]
    nlp = spacy.blank("et")
    examples = list(reader(nlp))
    assert len(examples) == 2
    ents = [(e.text, e.label_) for e in examples[0].reference.ents]
    assert ents == [("aspiriini", "DRUG"), ("lööbe", "ADVERSE_EVENT")]
    assert examples[0].predicted.text == ET_FIXTURE[0]["text"] and not examples[0].predicted.ents
    limited = registry.resolve({"c": {**config["corpus"], "limit": 1, "labels": ["PROCEDURE"]}})
    only = list(limited["c"](nlp))
    assert len(only) == 1 and not only[0].reference.ents


def test_pyproject_entry_point_names_the_registered_reader():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf8"))["project"]
    target = project["entry-points"]["spacy_readers"]["medllm.Corpus.v1"]
    module, _, attribute = target.partition(":")
    assert (module, attribute) == ("spacy_medllm.corpora.docs", "create_corpus_reader")
    assert registry.readers.get("medllm.Corpus.v1") is docs.create_corpus_reader


def test_convert_cli_writes_docbins_jsonl_and_stats(et_file, tmp_path, capsys):
    out = tmp_path / "converted"
    assert cli(["corpus", "convert", "et-dev", "--path", str(et_file), "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["dev.jsonl", "dev.spacy", "stats.json"]
    stats = json.loads((out / "stats.json").read_text("utf8"))
    assert stats["splits"]["dev"]["n_spans"] == 3
    assert stats["splits"]["dev"]["alignment"]["n_snapped"] == 1
    assert stats["splits"]["dev"]["alignment"]["tokenizer"] == "spacy.blank('et')"
    assert [e["spans"] for e in read_jsonl(out / "dev.jsonl")] == [
        [(10, 18, "DRUG"), (27, 32, "ADVERSE_EVENT")],
        [(0, 13, "PROCEDURE")],
    ]
    # the DocBin holds the token-aligned spans
    assert [e["spans"] for e in read_docbin(out / "dev.spacy")] == [
        [(10, 19, "DRUG"), (27, 32, "ADVERSE_EVENT")],
        [(0, 13, "PROCEDURE")],
    ]
    assert '"n_docs": 2' in capsys.readouterr().out


def test_convert_seed_fixture_writes_every_split(tmp_path):
    record = {
        "input": "Advil gave me a rash.",
        "output": '{"drug_name": "Advil", "adverse_events": ["rash"]}',
    }
    other = {**record, "input": "Advil gave me a rash again."}
    (tmp_path / "train.json").write_text(json.dumps([record]), "utf8")
    (tmp_path / "test.json").write_text(json.dumps([other]), "utf8")
    stats = docs.convert_corpus("seed-ae-emails", tmp_path / "out", tmp_path)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        "stats.json",
        "test.jsonl",
        "test.spacy",
        "test_unseen.jsonl",
        "test_unseen.spacy",
        "train.jsonl",
        "train.spacy",
    ]
    line = json.loads((tmp_path / "out" / "test.jsonl").read_text("utf8"))
    assert line["answer_entities"] == [["Advil", "DRUG"], ["rash", "ADVERSE_EVENT"]]
    assert stats["splits"]["train"]["alignment"]["n_unaligned"] == 0


def test_missing_corpus_and_unknown_names_are_clear_errors(tmp_path):
    with pytest.raises(paths.CorpusNotFoundError, match="MEDLLM_CORPORA"):
        load_corpus("bc5cdr", "train", tmp_path / "nowhere")
    with pytest.raises(KeyError, match="unknown corpus"):
        load_corpus("i2b2", "train")


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDLLM_CORPORA", str(tmp_path))
    assert paths.corpora_root() == tmp_path
    assert corpora_registry.corpus_path("phee") == tmp_path / "phee"
    # Shipped in the repo (written for this project, MIT), so it does not follow the variable.
    assert corpora_registry.corpus_path("et-dev") == paths.REPO_ROOT / "corpus/et_dev/et-dev.jsonl"
    assert corpora_registry.corpus_path("phee", "/x") == Path("/x")


def test_corpora_and_evaluate_import_no_heavy_libraries():
    """Beyond what spaCy itself imports (thinc imports torch when it is installed)."""
    import subprocess

    heavy = ("torch", "seqeval", "matplotlib", "transformers", "bert_score")
    code = (
        "import sys, spacy; before = set(sys.modules);"
        "import spacy_medllm.corpora.registry, spacy_medllm.corpora.docs;"
        "import spacy_medllm.evaluation.evaluate;"
        f"print(sorted(m for m in {heavy!r} if m in set(sys.modules) - before))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
