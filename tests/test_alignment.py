"""spacy_medllm.core.alignment: finding entity strings in the text and snapping to tokens."""

from __future__ import annotations

import pytest
import spacy

from spacy_medllm.core.alignment import find_entities, snap_to_tokens
from spacy_medllm.core.records import (
    DUPLICATE,
    EMPTY_TEXT,
    NOT_IN_TEXT,
    TOKEN_MISALIGNED,
    AlignedEntity,
    ParsedEntity,
)

ET_TEXT = "Patsient alustas metformiini kasutamist ja kaebab kõhulahtisuse üle."


@pytest.fixture(scope="module")
def nlp_en():
    return spacy.blank("en")


@pytest.fixture(scope="module")
def nlp_et():
    return spacy.blank("et")


def ents(*pairs: tuple[str, str]) -> list[ParsedEntity]:
    return [ParsedEntity(text, label) for text, label in pairs]


def found(text: str, aligned: list[AlignedEntity]) -> list[tuple[str, str, str]]:
    return [(text[a.start : a.end], a.label, a.match) for a in aligned]


# -- matching steps ----------------------------------------------------------------------------


def test_exact_offsets():
    text = "He took aspirin and felt nausea."
    aligned, rejected = find_entities(text, ents(("aspirin", "DRUG"), ("nausea", "ADVERSE_EVENT")))
    assert aligned == [
        AlignedEntity(8, 15, "DRUG", "aspirin", "exact"),
        AlignedEntity(25, 31, "ADVERSE_EVENT", "nausea", "exact"),
    ]
    assert rejected == []


def test_estonian_entities(nlp_et):
    entities = ents(("metformiini", "DRUG"), ("kõhulahtisuse", "ADVERSE_EVENT"))
    aligned, rejected = find_entities(ET_TEXT, entities)
    assert found(ET_TEXT, aligned) == [
        ("metformiini", "DRUG", "exact"),
        ("kõhulahtisuse", "ADVERSE_EVENT", "exact"),
    ]
    spans, misaligned = snap_to_tokens(nlp_et(ET_TEXT), aligned, mode="strict")
    assert [(s.text, s.label_) for s in spans] == [
        ("metformiini", "DRUG"),
        ("kõhulahtisuse", "ADVERSE_EVENT"),
    ]
    assert rejected == misaligned == []


@pytest.mark.parametrize(
    "text,entity,expected",
    [
        ("Ülemine hingamisteede infektsioon.", "ülemine", "Ülemine"),
        ("Valu ÜLEMISES kõhus.", "ülemises", "ÜLEMISES"),
        # "İ".lower() is two characters long: index arithmetic on lower() would be off by one
        ("İlaç aldı, sonra ASPIRIN ve baş ağrısı.", "aspirin", "ASPIRIN"),
        ("İİİ: BAŞ AĞRISI", "baş ağrısı", "BAŞ AĞRISI"),
        # "ß".upper() is "SS": offsets after it must still be right
        ("Große Schmerzen im FUß und Übelkeit.", "übelkeit", "Übelkeit"),
        ("Große Schmerzen im Fuß.", "FUß", "Fuß"),
    ],
)
def test_case_insensitive_offsets_with_unicode(text, entity, expected):
    aligned, rejected = find_entities(text, ents((entity, "X")))
    assert rejected == []
    assert found(text, aligned) == [(expected, "X", "case_insensitive")]


def test_case_sensitive_does_not_fold_case():
    text = "Nausea began."
    aligned, rejected = find_entities(text, ents(("nausea", "AE")), case_sensitive=True)
    assert aligned == []
    assert [(r.text, r.reason) for r in rejected] == [("nausea", NOT_IN_TEXT)]


@pytest.mark.parametrize(
    "text,entity,expected",
    [
        ("History of heart-attack in 2019.", "heart attack", "heart-attack"),
        ("History of heart\n attack in 2019.", "heart attack", "heart\n attack"),
        ("Known type-2 diabetes.", "Type 2 diabetes", "type-2 diabetes"),
        ("History of heart attack.", "heart-attack", "heart attack"),
        ("Crohn’s disease flared.", "Crohn's disease", "Crohn’s disease"),
        ("Dose: 5 mg / day.", "5 mg/day", "5 mg / day"),
    ],
)
def test_fuzzy_whitespace_and_punctuation(text, entity, expected):
    aligned, rejected = find_entities(text, ents((entity, "X")))
    assert rejected == []
    assert found(text, aligned) == [(expected, "X", "fuzzy")]
    aligned, rejected = find_entities(text, ents((entity, "X")), fuzzy=False)
    assert aligned == [] and rejected[0].reason == NOT_IN_TEXT


def test_exact_is_preferred_to_fuzzy():
    text = "heart-attack, then a heart attack"
    aligned, _ = find_entities(text, ents(("heart attack", "D")))
    assert found(text, aligned) == [("heart attack", "D", "exact")]


def test_standalone_occurrence_wins_over_in_word():
    text = "Severe headache, and some ache in the back."
    aligned, _ = find_entities(text, ents(("ache", "SYMPTOM")))
    assert found(text, aligned) == [("ache", "SYMPTOM", "exact")]
    assert aligned[0].start == text.index(" ache") + 1


def test_standalone_case_insensitive_wins_over_in_word_exact():
    text = "Felt nauseated. Nausea persisted."
    aligned, _ = find_entities(text, ents(("nausea", "AE")))
    assert found(text, aligned) == [("Nausea", "AE", "case_insensitive")]


def test_in_word_occurrence_is_found_and_expanded(nlp_en):
    text = "Severe headache since Monday."
    aligned, rejected = find_entities(text, ents(("ache", "SYMPTOM")))
    assert rejected == []
    assert found(text, aligned) == [("ache", "SYMPTOM", "exact")]
    spans, _ = snap_to_tokens(nlp_en(text), aligned, mode="expand")
    assert [s.text for s in spans] == ["headache"]


def test_estonian_lemma_inside_inflected_word(nlp_et):
    aligned, rejected = find_entities(ET_TEXT, ents(("metformiin", "DRUG")))
    assert rejected == []
    start = ET_TEXT.index("metformiini")
    assert aligned == [AlignedEntity(start, start + 10, "DRUG", "metformiin", "exact")]
    doc = nlp_et(ET_TEXT)
    spans, misaligned = snap_to_tokens(doc, aligned, mode="expand")
    assert [(s.text, s.label_, s.start_char) for s in spans] == [("metformiini", "DRUG", start)]
    for mode in ("strict", "contract"):
        spans, misaligned = snap_to_tokens(doc, aligned, mode=mode)
        assert spans == []
        assert [(r.text, r.reason) for r in misaligned] == [("metformiin", TOKEN_MISALIGNED)]


# -- not found, empty --------------------------------------------------------------------------


def test_not_found_is_reported_and_every_entity_is_accounted_for():
    text = "He took aspirin."
    entities = ents(("aspirin", "DRUG"), ("ibuprofen", "DRUG"), ("  ", "DRUG"))
    aligned, rejected = find_entities(text, entities)
    assert found(text, aligned) == [("aspirin", "DRUG", "exact")]
    assert [(r.text, r.label, r.reason) for r in rejected] == [
        ("ibuprofen", "DRUG", NOT_IN_TEXT),
        ("  ", "DRUG", EMPTY_TEXT),
    ]


def test_no_entities_gives_nothing_and_empty_text_rejects_every_entity():
    assert find_entities("some text", []) == ([], [])
    aligned, rejected = find_entities("", ents(("a", "X")))
    assert aligned == [] and [(r.text, r.reason) for r in rejected] == [("a", NOT_IN_TEXT)]


def test_invalid_repeated_mode():
    with pytest.raises(ValueError, match="repeated"):
        find_entities("a", ents(("a", "X")), repeated="first")


# -- repeated mentions -------------------------------------------------------------------------

NAUSEA_TEXT = "Nausea on day 1; nausea again on day 3 and nausea on day 5."


def test_repeated_all_maps_every_occurrence_of_the_best_step():
    aligned, rejected = find_entities(NAUSEA_TEXT, ents(("nausea", "AE")), repeated="all")
    # the exact step finds the two lower-case mentions; "Nausea" is left to a "Nausea" entity
    assert [a.start for a in aligned] == [17, 43]
    assert rejected == []
    aligned, _ = find_entities(NAUSEA_TEXT, ents(("Nausea", "AE"), ("nausea", "AE")))
    assert [a.start for a in aligned] == [0, 17, 43]


def test_repeated_all_rejects_a_repeated_emission():
    entities = ents(("nausea", "AE"), ("nausea", "AE"), ("nausea", "SYMPTOM"))
    aligned, rejected = find_entities(NAUSEA_TEXT, entities, repeated="all")
    assert [(a.start, a.label) for a in aligned] == [
        (17, "AE"),
        (17, "SYMPTOM"),
        (43, "AE"),
        (43, "SYMPTOM"),
    ]
    assert [(r.text, r.reason) for r in rejected] == [("nausea", DUPLICATE)]
    assert "already mapped" in rejected[0].detail


def test_repeated_all_occurrences_do_not_overlap():
    text = "aaaa"
    aligned, _ = find_entities(text, ents(("aa", "X")), repeated="all")
    assert [(a.start, a.end) for a in aligned] == [(0, 2), (2, 4)]


def test_repeated_cursor_maps_mentions_in_order():
    entities = ents(("nausea", "AE"), ("nausea", "AE"), ("nausea", "AE"), ("nausea", "AE"))
    aligned, rejected = find_entities(NAUSEA_TEXT, entities, repeated="cursor")
    assert [(a.start, a.match) for a in aligned] == [
        (0, "case_insensitive"),
        (17, "exact"),
        (43, "exact"),
    ]
    assert [(r.text, r.reason) for r in rejected] == [("nausea", DUPLICATE)]


def test_repeated_cursor_two_mentions():
    text = "Nausea and vomiting; later nausea and vomiting again."
    entities = ents(("nausea", "AE"), ("vomiting", "AE"), ("nausea", "AE"), ("vomiting", "AE"))
    aligned, rejected = find_entities(text, entities, repeated="cursor")
    assert [text[a.start : a.end] for a in aligned] == ["Nausea", "vomiting", "nausea", "vomiting"]
    assert [a.start for a in aligned] == [0, 11, 27, 38]
    assert rejected == []


def test_repeated_cursor_wraps_for_out_of_order_lists():
    text = "Aspirin, then ibuprofen, then paracetamol."
    entities = ents(("ibuprofen", "DRUG"), ("Aspirin", "DRUG"), ("paracetamol", "DRUG"))
    aligned, rejected = find_entities(text, entities, repeated="cursor")
    assert [text[a.start : a.end] for a in aligned] == ["Aspirin", "ibuprofen", "paracetamol"]
    assert rejected == []


def test_repeated_cursor_same_span_other_label_is_not_a_duplicate():
    text = "Reports nausea."
    aligned, rejected = find_entities(
        text, ents(("nausea", "AE"), ("nausea", "SYMPTOM")), repeated="cursor"
    )
    assert [(a.start, a.label) for a in aligned] == [(8, "AE"), (8, "SYMPTOM")]
    assert rejected == []


# -- overlaps and order ------------------------------------------------------------------------


def test_overlapping_entities_are_all_kept(nlp_en):
    text = "Acute heart attack in 2019."
    entities = ents(("heart", "BODY_PART"), ("Acute heart attack", "DISEASE"), ("attack", "X"))
    aligned, rejected = find_entities(text, entities)
    assert [(a.start, a.end, a.label) for a in aligned] == [
        (0, 18, "DISEASE"),
        (6, 11, "BODY_PART"),
        (12, 18, "X"),
    ]
    assert rejected == []
    spans, _ = snap_to_tokens(nlp_en(text), aligned)
    assert [s.text for s in spans] == ["Acute heart attack", "heart", "attack"]


# -- snapping to tokens ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "start,end,mode,expected",
    [
        (7, 15, "strict", "headache"),
        (7, 15, "contract", "headache"),
        (7, 15, "expand", "headache"),
        (8, 14, "strict", None),
        (8, 14, "contract", None),
        (8, 14, "expand", "headache"),
        (3, 10, "strict", None),
        (3, 10, "contract", None),
        (3, 10, "expand", "have headache"),
        (2, 17, "contract", "have headache"),
        (2, 17, "expand", "have headache now"),
        (1, 2, "expand", None),  # only whitespace
    ],
)
def test_snap_modes(nlp_en, start, end, mode, expected):
    doc = nlp_en("I have headache now")
    aligned = [AlignedEntity(start, end, "X", doc.text[start:end])]
    spans, rejected = snap_to_tokens(doc, aligned, mode=mode)
    if expected is None:
        assert spans == []
        assert [r.reason for r in rejected] == [TOKEN_MISALIGNED]
    else:
        assert [(s.text, s.label_) for s in spans] == [(expected, "X")]
        assert rejected == []


def test_snap_offset_for_chunks(nlp_en):
    doc = nlp_en("First part mentions nothing. He took aspirin and got a rash.")
    start = doc.text.index("He took")
    chunk = doc.text[start:]
    aligned, _ = find_entities(chunk, ents(("aspirin", "DRUG"), ("rash", "ADVERSE_EVENT")))
    spans, rejected = snap_to_tokens(doc, aligned, offset=start)
    assert [(s.text, s.label_, s.start_char) for s in spans] == [
        ("aspirin", "DRUG", doc.text.index("aspirin")),
        ("rash", "ADVERSE_EVENT", doc.text.index("rash")),
    ]
    assert rejected == []


def test_snap_outside_the_doc_is_misaligned(nlp_en):
    doc = nlp_en("short")
    spans, rejected = snap_to_tokens(doc, [AlignedEntity(0, 5, "X", "short")], offset=10)
    assert spans == [] and rejected[0].reason == TOKEN_MISALIGNED


def test_snap_dedupes_identical_spans(nlp_et):
    aligned, _ = find_entities(ET_TEXT, ents(("metformiin", "DRUG"), ("metformiini", "DRUG")))
    doc = nlp_et(ET_TEXT)
    spans, rejected = snap_to_tokens(doc, aligned, mode="expand")
    assert [(s.text, s.label_) for s in spans] == [("metformiini", "DRUG")]
    assert [r.reason for r in rejected] == [DUPLICATE]
    spans, rejected = snap_to_tokens(doc, [*aligned, AlignedEntity(17, 28, "OTHER", "x")])
    assert [(s.text, s.label_) for s in spans] == [
        ("metformiini", "DRUG"),
        ("metformiini", "OTHER"),
    ]


def test_snap_invalid_mode(nlp_en):
    with pytest.raises(ValueError, match="mode"):
        snap_to_tokens(nlp_en("a"), [], mode="loose")


# -- property ----------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.text(min_size=1, max_size=60), st.data())
def test_any_substring_is_found_with_correct_offsets(text, data):
    start = data.draw(st.integers(0, len(text) - 1))
    end = data.draw(st.integers(start + 1, len(text)))
    needle = text[start:end]
    hypothesis.assume(needle.strip() == needle)
    for repeated in ("all", "cursor"):
        aligned, rejected = find_entities(
            text, ents((needle, "X")), case_sensitive=True, fuzzy=False, repeated=repeated
        )
        assert rejected == []
        assert aligned
        assert all(text[a.start : a.end] == needle and a.match == "exact" for a in aligned)
        # with folding and fuzzy matching on, something is still found, inside the text
        aligned, rejected = find_entities(text, ents((needle, "X")), repeated=repeated)
        assert rejected == [] and aligned
        assert all(0 <= a.start < a.end <= len(text) for a in aligned)
