"""Tests for spacy_medllm.core.parsing: reading sloppy, truncated and oddly shaped model answers."""

from __future__ import annotations

import json

import pytest

from spacy_medllm.core.labels import DEFAULT_LABELS, LabelSet
from spacy_medllm.core.parsing import parse_response
from spacy_medllm.core.prompts import PromptBuilder
from spacy_medllm.core.records import (
    EMPTY_TEXT,
    MALFORMED,
    TRUNCATED,
    UNKNOWN_LABEL,
    ParsedEntity,
    ParseResult,
)

LABELS = LabelSet(DEFAULT_LABELS)
CANONICAL = '[{"text": "aspirin", "label": "DRUG"}, {"text": "nausea", "label": "ADVERSE_EVENT"}]'
ASPIRIN_NAUSEA = [("aspirin", "DRUG"), ("nausea", "ADVERSE_EVENT")]


def parse(response: str, labels: LabelSet = LABELS) -> ParseResult:
    result = parse_response(response, labels)
    assert result.error is None or not result.error.startswith("internal"), result.error
    return result


def pairs(result: ParseResult) -> list[tuple[str, str]]:
    return [(e.text, e.label) for e in result.entities]


def reasons(result: ParseResult) -> list[tuple[object, object, str]]:
    return [(r.text, r.label, r.reason) for r in result.rejections]


# -- the canonical answer ----------------------------------------------------------------------


def test_canonical_answer_needs_no_repair():
    result = parse(CANONICAL)
    assert result.ok
    assert result.entities == [
        ParsedEntity("aspirin", "DRUG"),
        ParsedEntity("nausea", "ADVERSE_EVENT"),
    ]
    assert result.rejections == []
    assert result.repairs == []


def test_empty_list_is_a_valid_answer():
    result = parse("[]")
    assert result.ok and result.entities == [] and result.rejections == []


@pytest.mark.parametrize("response", ["[ ]", "```json\n[]\n```", "No entities here: []", "{}"])
def test_empty_answers_in_other_forms(response):
    result = parse(response)
    assert result.ok
    assert result.entities == [] and result.rejections == []


@pytest.mark.parametrize("response", ["", "   \n\t", "No entities found.", "I cannot help."])
def test_no_json_is_an_error_not_an_exception(response):
    result = parse(response)
    assert not result.ok
    assert result.entities == [] and result.rejections == []
    assert "response" in result.error


def test_prose_with_brackets_but_no_answer_is_an_error():
    result = parse("See reference [1] and the {appendix}.")
    assert not result.ok and "no entity list" in result.error


def test_non_string_response_is_an_error():
    result = parse_response(None, LABELS)  # type: ignore[arg-type]
    assert not result.ok and "not a string" in result.error


# -- repairs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response,expected,repair",
    [
        (f"```json\n{CANONICAL}\n```", ASPIRIN_NAUSEA, "fence"),
        (f"```\n{CANONICAL}\n```", ASPIRIN_NAUSEA, "fence"),
        (f"```JSON {CANONICAL}```", ASPIRIN_NAUSEA, "fence"),
        (f"Here are the entities:\n{CANONICAL}", ASPIRIN_NAUSEA, "prose_before"),
        (f"{CANONICAL}\nLet me know if you need more.", ASPIRIN_NAUSEA, "prose_after"),
        (
            "[{'text': 'aspirin', 'label': 'DRUG'}, {'text': 'nausea', 'label': 'ADVERSE_EVENT'}]",
            ASPIRIN_NAUSEA,
            "single_quotes",
        ),
        (
            '[{"text": "aspirin", "label": "DRUG",}, '
            '{"text": "nausea", "label": "ADVERSE_EVENT"},]',
            ASPIRIN_NAUSEA,
            "trailing_comma",
        ),
        (
            '[{text: "aspirin", label: "DRUG"}, {text: "nausea", label: "ADVERSE_EVENT"}]',
            ASPIRIN_NAUSEA,
            "unquoted_key",
        ),
        ("[{text: aspirin, label: DRUG}]", [("aspirin", "DRUG")], "unquoted_value"),
        (
            '[{"text": "aspirin", "label": "DRUG"} {"text": "nausea", "label": "ADVERSE_EVENT"}]',
            ASPIRIN_NAUSEA,
            "missing_comma",
        ),
        (
            '[{"text": "aspirin", "label": "DRUG"}, // the drug\n'
            '/* and */ {"text": "nausea", "label": "ADVERSE_EVENT"}]',
            ASPIRIN_NAUSEA,
            "comment",
        ),
        (
            '[{"text": "heart\nattack", "label": "DISEASE"}]',
            [("heart\nattack", "DISEASE")],
            "raw_newline",
        ),
        (
            '<think>The text mentions [a drug].</think>\n[{"text": "aspirin", "label": "DRUG"}]',
            [("aspirin", "DRUG")],
            "think_block",
        ),
        (
            json.dumps(CANONICAL),  # the answer as a JSON string holding JSON
            ASPIRIN_NAUSEA,
            "double_encoded",
        ),
        ('[("aspirin", "DRUG"), ("nausea", "ADVERSE_EVENT")]', ASPIRIN_NAUSEA, "python_tuple"),
        ('[{"text": "aspirin", "label": "DRUG"}}]', [("aspirin", "DRUG")], "mismatched_bracket"),
    ],
)
def test_repairs(response, expected, repair):
    result = parse(response)
    assert result.ok
    assert pairs(result) == expected
    assert repair in result.repairs
    assert result.rejections == []


def test_single_quoted_strings_keep_their_apostrophes():
    result = parse(
        "[{'text': 'patient's cough', 'label': 'SYMPTOM'}, {'text': 'x', 'label': 'DRUG'}]"
    )
    assert pairs(result) == [("patient's cough", "SYMPTOM"), ("x", "DRUG")]


def test_apostrophes_inside_double_quoted_strings():
    result = parse(
        "Here's what I found: [{'text': \"Crohn's disease\", 'label': 'DISEASE'}, "
        '{"text": "patient\'s rash", "label": "ADVERSE_EVENT"}]'
    )
    assert pairs(result) == [("Crohn's disease", "DISEASE"), ("patient's rash", "ADVERSE_EVENT")]
    assert "prose_before" in result.repairs


def test_unescaped_inner_double_quotes_are_kept():
    result = parse('[{"text": "the "blue" pill", "label": "DRUG"}]')
    assert pairs(result) == [('the "blue" pill', "DRUG")]
    assert "unescaped_quote" in result.repairs


def test_escaped_unicode_and_surrogate_pairs():
    result = parse(
        r'[{"text": "\u00dclemine \u00f5\u00e4\u00f6\u00fc", "label": "BODY_PART"}, '
        r'{"text": "\ud83d\udc8a pill", "label": "DRUG"}]'
    )
    assert pairs(result) == [("Ülemine õäöü", "BODY_PART"), ("\U0001f48a pill", "DRUG")]


def test_lone_surrogate_escape_becomes_replacement_character():
    result = parse(r'[{"text": "a\ud800b", "label": "DRUG"}]')
    assert pairs(result) == [("a\ufffdb", "DRUG")]
    assert "invalid_escape" in result.repairs


def test_python_literals():
    result = parse(
        "[{'text': 'aspirin', 'label': 'DRUG', 'negated': False}, {'text': None, 'label': 'DRUG'}]"
    )
    assert pairs(result) == [("aspirin", "DRUG")]
    assert reasons(result) == [(None, "DRUG", EMPTY_TEXT)]
    assert "python_literal" in result.repairs


def test_nan_junk_is_rejected_not_raised():
    result = parse(
        '[{"text": "aspirin", "label": "DRUG"}, NaN, {"text": NaN, "label": "DRUG"}, Infinity]'
    )
    assert pairs(result) == [("aspirin", "DRUG")]
    assert [r.reason for r in result.rejections] == [MALFORMED, MALFORMED, MALFORMED]
    assert result.rejections[0].text == "nan"
    assert "non_json_literal" in result.repairs


def test_entity_text_is_stripped():
    result = parse('[{"text": "  aspirin\\n", "label": " DRUG "}]')
    assert result.entities == [ParsedEntity("aspirin", "DRUG", raw_label=" DRUG ")]


# -- truncation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response,rejected",
    [
        ('[{"text": "aspirin", "label": "DRUG"}, {"text": "nau', ("nau", None)),  # in a string
        ('[{"text": "aspirin", "label": "DRUG"}, {"text": "nausea"', ("nausea", None)),
        ('[{"text": "aspirin", "label": "DRUG"}, {"text": "nausea", "lab', ("nausea", None)),
        ('[{"text": "aspirin", "label": "DRUG"}, {"text": "nausea", "label"', ("nausea", None)),
        ('[{"text": "aspirin", "label": "DRUG"}, {"text": "nausea", "label": ', ("nausea", None)),
        (
            '[{"text": "aspirin", "label": "DRUG"}, {"text": "nausea", "label": "ADVERSE_EV',
            ("nausea", "ADVERSE_EV"),
        ),
        ('[{"text": "aspirin", "label": "DRUG"}, {"text": "na\\u00', ("na", None)),  # in an escape
    ],
)
def test_truncated_last_entity_is_rejected(response, rejected):
    result = parse(response)
    assert result.ok
    assert pairs(result) == [("aspirin", "DRUG")]
    assert reasons(result) == [(*rejected, TRUNCATED)]
    assert "truncated" in result.repairs


@pytest.mark.parametrize(
    "response",
    [
        '[{"text": "aspirin", "label": "DRUG"}',  # after an item
        '[{"text": "aspirin", "label": "DRUG"}, ',  # between items
        '[{"text": "aspirin", "label": "DRUG"}, {',  # an item just opened
        '[{"text": "aspirin", "label": "DRUG"}, {"text": "',  # no text yet
        '[{"text": "aspirin", "label": "DRUG"',  # every field read, object not closed
        '```json\n[{"text": "aspirin", "label": "DRUG"}, {"te',
    ],
)
def test_truncation_without_text_keeps_complete_entities(response):
    result = parse(response)
    assert pairs(result) == [("aspirin", "DRUG")]
    assert result.rejections == []
    assert "truncated" in result.repairs


@pytest.mark.parametrize(
    "response,rejected",
    [
        ('[["aspirin", "DRUG"], ["nausea", ', [("nausea", None, TRUNCATED)]),
        ('[["aspirin", "DRUG"], ["nausea", "ADVERSE_EVENT"', []),
        ('[["aspirin", "DRUG"], ["nau', [("nau", None, TRUNCATED)]),
    ],
)
def test_truncated_pairs(response, rejected):
    result = parse(response)
    assert pairs(result)[:1] == [("aspirin", "DRUG")]
    assert reasons(result) == rejected
    assert len(result.entities) == 2 - len(rejected)


def test_truncated_label_keyed_object():
    result = parse('{"DRUG": ["aspirin", "ibuprofen"], "ADVERSE_EVENT": ["nausea", "vomi')
    assert pairs(result) == [
        ("aspirin", "DRUG"),
        ("ibuprofen", "DRUG"),
        ("nausea", "ADVERSE_EVENT"),
    ]
    assert reasons(result) == [("vomi", "ADVERSE_EVENT", TRUNCATED)]


# -- keys, labels and shapes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "item",
    [
        '{"Text": "aspirin", "Label": "DRUG"}',
        '{"TEXT": "aspirin", "LABEL": "DRUG"}',
        '{"entity": "aspirin", "type": "DRUG"}',
        '{"name": "aspirin", "category": "DRUG"}',
        '{"span": "aspirin", "entity_type": "DRUG"}',
        '{"value": "aspirin", "tag": "DRUG"}',
        '{"mention": "aspirin", "Type": "DRUG"}',
        '{"Entity Text": "aspirin", "Entity-Type": "DRUG"}',
        '{"label": "DRUG", "text": "aspirin", "start": 4, "end": 11}',
        '{"DRUG": "aspirin"}',
        '["aspirin", "DRUG"]',
        '["DRUG", "aspirin"]',
        '{"text": "aspirin", "labels": ["DRUG"]}',
    ],
)
def test_item_key_spellings(item):
    result = parse(f"[{item}]")
    assert result.entities == [ParsedEntity("aspirin", "DRUG")]
    assert result.rejections == []


@pytest.mark.parametrize(
    "raw,label",
    [
        ("adverse events", "ADVERSE_EVENT"),
        ("ADE", "ADVERSE_EVENT"),
        ("Adverse-Event", "ADVERSE_EVENT"),
        ("drug_name", "DRUG"),
        ("drug", "DRUG"),
        ("Medications", "DRUG"),
        ("symptoms", "SYMPTOM"),
    ],
)
def test_label_aliases_keep_the_raw_label(raw, label):
    result = parse(json.dumps([{"text": "x", "label": raw}]))
    assert result.entities == [ParsedEntity("x", label, raw_label=raw)]


def test_unknown_labels_are_rejected_with_their_raw_label():
    result = parse('[{"text": "aspirin", "label": "DRUG"}, {"text": "Tallinn", "label": "City"}]')
    assert pairs(result) == [("aspirin", "DRUG")]
    assert reasons(result) == [("Tallinn", "City", UNKNOWN_LABEL)]


def test_labels_outside_a_custom_label_set_are_unknown():
    labels = LabelSet(["DRUG"])
    result = parse(CANONICAL, labels)
    assert pairs(result) == [("aspirin", "DRUG")]
    assert reasons(result) == [("nausea", "ADVERSE_EVENT", UNKNOWN_LABEL)]


def test_seed_format():
    result = parse('{"drug_name": "Abilify", "adverse_events": ["nausea", "vomiting"]}')
    assert result.entities == [
        ParsedEntity("Abilify", "DRUG", raw_label="drug_name"),
        ParsedEntity("nausea", "ADVERSE_EVENT", raw_label="adverse_events"),
        ParsedEntity("vomiting", "ADVERSE_EVENT", raw_label="adverse_events"),
    ]


def test_label_keyed_object():
    result = parse(
        '{"DRUG": ["aspirin", "ibuprofen"], "Disease": "gout", "SYMPTOM": [], '
        '"PROCEDURE": null, "DRUG": "naproxen", "allergen": "pollen", "note": "two drugs"}'
    )
    assert pairs(result) == [
        ("aspirin", "DRUG"),
        ("ibuprofen", "DRUG"),
        ("gout", "DISEASE"),
        ("naproxen", "DRUG"),  # a repeated key is not lost
    ]
    assert reasons(result) == [("pollen", "allergen", UNKNOWN_LABEL)]  # "note" is commentary


def test_label_keyed_lists_of_objects():
    result = parse('{"DRUG": [{"text": "aspirin"}, {"name": "ibuprofen", "label": "Drugs"}]}')
    assert pairs(result) == [("aspirin", "DRUG"), ("ibuprofen", "DRUG")]


@pytest.mark.parametrize(
    "response",
    [
        f'{{"entities": {CANONICAL}}}',
        f'{{"Entities": {CANONICAL}, "count": 2}}',
        f'{{"results": {{"entities": {CANONICAL}}}}}',
        f'{{"text": "He took aspirin and felt nausea.", "entities": {CANONICAL}}}',
        f'{{"medical_entities": {CANONICAL}}}',
        '{"entities": {"DRUG": ["aspirin"], "ADVERSE_EVENT": ["nausea"]}}',
    ],
)
def test_wrapped_lists(response):
    result = parse(response)
    assert pairs(result) == ASPIRIN_NAUSEA
    assert result.rejections == []


def test_duplicates_are_kept():
    result = parse(
        '[{"text": "nausea", "label": "ADVERSE_EVENT"}, '
        '{"text": "nausea", "label": "ADVERSE_EVENT"}, '
        '{"text": "Nausea", "label": "ADVERSE_EVENT"}]'
    )
    assert pairs(result) == [("nausea", "ADVERSE_EVENT")] * 2 + [("Nausea", "ADVERSE_EVENT")]


@pytest.mark.parametrize(
    "item,reason,text",
    [
        ('{"text": 50, "label": "DOSAGE"}', MALFORMED, 50),
        ('{"text": true, "label": "DRUG"}', MALFORMED, True),
        ('{"text": {"value": "x"}, "label": "DRUG"}', MALFORMED, {"value": "x"}),
        ('{"text": ["a", "b"], "label": "DRUG"}', MALFORMED, ["a", "b"]),
        ('{"text": null, "label": "DRUG"}', EMPTY_TEXT, None),
        ('{"text": "", "label": "DRUG"}', EMPTY_TEXT, ""),
        ('{"text": "   ", "label": "DRUG"}', EMPTY_TEXT, "   "),
        ('{"text": "aspirin"}', MALFORMED, "aspirin"),  # no label
        ('{"text": "aspirin", "label": null}', MALFORMED, "aspirin"),
        ('{"text": "aspirin", "label": ""}', MALFORMED, "aspirin"),
        ('"aspirin"', MALFORMED, "aspirin"),  # a bare string
        ("42", MALFORMED, 42),
        ("null", MALFORMED, None),
    ],
)
def test_items_that_are_not_entities(item, reason, text):
    result = parse(f'[{{"text": "aspirin", "label": "DRUG"}}, {item}]')
    assert pairs(result) == [("aspirin", "DRUG")]
    assert len(result.rejections) == 1
    assert result.rejections[0].reason == reason
    assert result.rejections[0].text == text


def test_numbers_as_label_keyed_values_are_rejected():
    result = parse('{"DOSAGE": [500, "5 mg"]}')
    assert pairs(result) == [("5 mg", "DOSAGE")]
    assert reasons(result) == [(500, "DOSAGE", MALFORMED)]


def test_nested_junk():
    result = parse(
        '[[{"text": "aspirin", "label": "DRUG"}], {"foo": {"bar": [1, 2]}}, [], {}, '
        '[{"DISEASE": ["gout"]}], "???"]'
    )
    assert pairs(result) == [("aspirin", "DRUG"), ("gout", "DISEASE")]
    assert all(r.reason == MALFORMED for r in result.rejections)
    assert [r.text for r in result.rejections] == [1, 2, "???"]


def test_deep_nesting_does_not_raise():
    result = parse("[" * 5000 + '{"text": "a", "label": "DRUG"}' + "]" * 5000)
    assert result.entities == []


# -- several JSON values -----------------------------------------------------------------------


def test_json_lines_are_merged():
    result = parse(
        '{"text": "aspirin", "label": "DRUG"}\n{"text": "nausea", "label": "ADE"}\n'
        '{"text": "x", "label": "CITY"}'
    )
    assert pairs(result) == ASPIRIN_NAUSEA
    assert reasons(result) == [("x", "CITY", UNKNOWN_LABEL)]
    assert "merged_values" in result.repairs


def test_objects_listed_without_brackets_are_merged():
    result = parse('{"text": "aspirin", "label": "DRUG"}, {"text": "nausea", "label": "ADE"}')
    assert pairs(result) == ASPIRIN_NAUSEA


def test_first_value_with_entities_wins_over_later_ones():
    result = parse(
        'Answer: [{"text": "aspirin", "label": "DRUG"}]\n'
        'Or maybe: [{"text": "nausea", "label": "ADVERSE_EVENT"}]'
    )
    assert pairs(result) == [("aspirin", "DRUG")]
    assert "extra_values" in result.repairs


def test_value_without_entities_gives_way_to_a_later_answer():
    result = parse('See [1]. Format: {"text": ..., "label": ...}\n' + CANONICAL)
    assert pairs(result) == ASPIRIN_NAUSEA


# -- properties --------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
given, settings = hypothesis.given, hypothesis.settings

_entity_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20
).filter(lambda t: t == t.strip() and t != "")
_entities = st.lists(st.tuples(_entity_text, st.sampled_from(DEFAULT_LABELS)), max_size=8)
_json_chars = st.text(
    alphabet=st.sampled_from(list("[]{}\"',: \n\\abcuxDRUG0123-.`tn")), max_size=80
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), _json_chars))
def test_never_raises(response):
    result = parse(response)
    assert isinstance(result, ParseResult)
    assert result.ok or not result.entities


@settings(max_examples=200, deadline=None)
@given(_entities)
def test_canonical_answers_round_trip(entities):
    answer = PromptBuilder.answer(entities)
    expected = []
    for pair in entities:
        if pair not in expected:
            expected.append(pair)
    result = parse(answer)
    assert result.ok
    assert result.entities == [ParsedEntity(text, label) for text, label in expected]
    assert result.rejections == []
    assert result.repairs == []


@settings(max_examples=100, deadline=None)
@given(_entities, st.floats(min_value=0, max_value=1))
def test_truncated_answers_keep_a_prefix_of_the_entities(entities, fraction):
    answer = PromptBuilder.answer(entities)
    full = parse(answer).entities
    cut = answer[: int(len(answer) * fraction)]
    result = parse(cut)
    assert result.entities == full[: len(result.entities)]
    assert all(r.reason == TRUNCATED for r in result.rejections)
    assert len(result.rejections) <= 1
