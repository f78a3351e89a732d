"""Constrained decoding: the answer automaton, the token trie, and a tiny random model that must
always answer in the schema (and, grounded, copy entity texts from the document)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spacy_medllm.core.labels import LabelSet
from spacy_medllm.core.parsing import parse_response
from spacy_medllm.generators.hf.automaton import DONE, AnswerAutomaton, json_string_bytes
from spacy_medllm.generators.hf.decoding_steps import JsonEndStopping, JsonScanner
from spacy_medllm.generators.hf.vocabulary import TokenConstraint, token_bytes

LABELS = ["DRUG", "ADVERSE_EVENT"]
DOCUMENTS = [
    "aspirin",
    "After starting aspirin I had a headache and nausea.",
    'He said "Metformin 500 mg" gave him diarrhoea.',
    "Path C:\\drugs\\abilify; tab\there, new\nline",
    "Ibuprofen → rash (ça va), naïve dose 10 µg",
    "   No side effects.   ",
    "Lisinopril 10 mg gave her a dry cough, so the doctor switched to losartan.",
    "vomiting and insomnia followed the dose increase",
]
SYSTEM = "Extract the medical entities. Answer with a JSON list."


def run(automaton: AnswerAutomaton, text: str):
    state = automaton.start()
    for byte in text.encode("utf8"):
        state = automaton.step(state, byte)
        if state is None:
            return None
    return state


def answer(*entities: tuple[str, str]) -> str:
    return json.dumps([{"text": t, "label": lab} for t, lab in entities], ensure_ascii=False)


# -- the automaton -------------------------------------------------------------------------------


def test_schema_accepts_canonical_answers() -> None:
    automaton = AnswerAutomaton(LABELS)
    assert run(automaton, "[]") == DONE
    assert run(automaton, answer(("aspirin", "DRUG"))) == DONE
    tricky = answer(
        ('say "hi"\\ ok', "DRUG"), ("naïve → µg 😀", "ADVERSE_EVENT"), ("a\nb\tc", "DRUG")
    )
    assert run(automaton, tricky) == DONE
    # escapes json.dumps does not write are valid JSON too
    assert run(automaton, '[{"text": "\\u00e9\\/x", "label": "DRUG"}]') == DONE


@pytest.mark.parametrize(
    "text",
    [
        "",  # nothing is not an answer
        "[",  # not finished
        "[] ",  # nothing after the list
        '[{"text": "", "label": "DRUG"}]',  # empty text
        '[{"text": "   ", "label": "DRUG"}]',  # whitespace only
        '[{"text": "a", "label": "DISEASE"}]',  # not a configured label
        '[{"text": "a", "label": "DRU"}]',
        '[{"text": "a\nb", "label": "DRUG"}]',  # raw newline inside a JSON string
        '[{"text": "a\\x", "label": "DRUG"}]',  # unknown escape
        '[{"text": "\\ud83d", "label": "DRUG"}]',  # lone surrogate
        '[{"text": "a" , "label": "DRUG"}]',  # not the trained layout
        '{"DRUG": ["a"]}',
    ],
)
def test_schema_rejects(text: str) -> None:
    state = run(AnswerAutomaton(LABELS), text)
    assert state != DONE


def test_invalid_utf8_is_rejected() -> None:
    automaton = AnswerAutomaton(LABELS)
    state = run(automaton, '[{"text": "')
    for byte in (0xC3, 0x28):  # a lead byte and no continuation
        state = automaton.step(state, byte) if state is not None else None
    assert state is None
    assert automaton.step(run(automaton, '[{"text": "'), 0xFF) is None


def test_grounded_only_copies_the_document() -> None:
    document = 'He took "Aspirin" and felt naïve\nnausea \\ 10 µg.'
    automaton = AnswerAutomaton(LABELS, document)
    for entity in ['"Aspirin"', "Aspirin", "naïve\nnausea", "\\ 10 µg.", "H", document]:
        assert run(automaton, answer((entity, "DRUG"))) == DONE, entity
    for entity in ["aspirin", "Aspirin and", "xyz", " took", "nausea  "]:
        assert run(automaton, answer((entity, "DRUG"))) != DONE, entity
    # only the canonical escapes of the document's characters
    assert run(automaton, '[{"text": "\\u0048e", "label": "DRUG"}]') is None
    assert run(automaton, "[]") == DONE


def test_grounded_texts_start_at_a_word() -> None:
    # A piece of another word ("tart" in "started") is not a copy of an entity: alignment would
    # widen it to that word. Words start after a space or a sign, and anywhere in scripts
    # written without spaces.
    automaton = AnswerAutomaton(LABELS, "I started Lexapro (10mg); 头痛和恶心.")
    for entity in ["started", "Lexapro", "10mg", "(10mg)", "mg", "头痛", "恶心", "痛和"]:
        assert run(automaton, answer((entity, "DRUG"))) == DONE, entity
    for entity in ["tart", "tarted", "exapro", "0mg"]:
        assert run(automaton, answer((entity, "DRUG"))) != DONE, entity
    # the end of an entity may still fall inside a word (an inflected form's lemma)
    assert run(AnswerAutomaton(LABELS, "metformiini"), answer(("metformiin", "DRUG"))) == DONE


def test_grounded_blank_document_allows_only_the_empty_list() -> None:
    automaton = AnswerAutomaton(LABELS, " \n ")
    assert run(automaton, "[]") == DONE
    assert run(automaton, '[{"') is None


def test_distance_is_the_shortest_completion() -> None:
    automaton = AnswerAutomaton(LABELS)
    assert automaton.distance(automaton.start()) == len("[]")
    state = run(automaton, '[{"text": "a')
    assert automaton.distance(state) == len('", "label": "DRUG"}]')
    state = run(automaton, '[{"text": "a", "label": "ADV')
    assert automaton.distance(state) == len('ERSE_EVENT"}]')


def test_json_string_bytes() -> None:
    assert json_string_bytes('a"b\\c\n') == b'a\\"b\\\\c\\n'
    assert json_string_bytes("é") == "é".encode()


# -- tokens ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def test_token_bytes_concatenate_to_the_decoded_text(tokenizer) -> None:
    table = token_bytes(tokenizer)
    assert table[tokenizer.eos_token_id] is None  # special tokens never appear in answers
    for text in DOCUMENTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert b"".join(table[i] for i in ids).decode("utf8") == tokenizer.decode(ids)


def test_allowed_tokens_are_exactly_the_valid_ones(tokenizer) -> None:
    """The trie walk returns the same set as testing every token against the automaton."""
    constraint = TokenConstraint(tokenizer, [tokenizer.eos_token_id])
    for automaton in (AnswerAutomaton(LABELS), AnswerAutomaton(LABELS, DOCUMENTS[2])):
        for prefix in ("", "[", '[{"text": "', '[{"text": "He', '[{"text": "a", "label": "'):
            state = run(automaton, prefix)
            if state is None:
                continue
            ids, _ = constraint.allowed(automaton, state)
            brute = {
                i
                for i in range(len(tokenizer))
                if constraint.token_bytes[i] and constraint.advance(automaton, state, i)
            }
            assert set(ids) == brute, prefix
    done_ids, _ = constraint.allowed(AnswerAutomaton(LABELS), DONE)
    assert done_ids == [tokenizer.eos_token_id]


def test_budget_only_allows_tokens_that_can_still_close(tokenizer) -> None:
    constraint = TokenConstraint(tokenizer, [tokenizer.eos_token_id])
    automaton = AnswerAutomaton(LABELS)
    state = run(automaton, '[{"text": "a')
    ids = constraint.allowed_ids(automaton, state, left=len('", "label": "DRUG"}]'))
    assert ids.numel() > 0
    for token_id in ids.tolist():
        after = constraint.advance(automaton, state, token_id)
        assert automaton.distance(after) <= len('", "label": "DRUG"}]') - 1


def test_forced_bytes_are_the_schema_between_choices() -> None:
    automaton = AnswerAutomaton(LABELS)
    assert automaton.forced(run(automaton, "[{"))[0] == b'"text": "'
    assert automaton.forced(run(automaton, '[{"text": "a"'))[0] == b', "label": "'
    data, end = automaton.forced(run(automaton, '[{"text": "a", "label": "A'))
    assert data == b'DVERSE_EVENT"}' and end == ("after",)
    assert automaton.forced(automaton.start()) == (b"[", ("open",))
    choices = ("[", '[{"text": "a', '[{"text": "a", "label": "', '[{"text": "a", "label": "DRUG"}')
    for choice in choices:
        state = run(automaton, choice)
        assert automaton.forced(state) == (b"", state), choice
    grounded = AnswerAutomaton(LABELS, "   ")  # nothing to copy: `[` can only be followed by `]`
    assert grounded.forced(run(grounded, "[")) == (b"]", DONE)


def test_forced_tokens_are_the_tokenizers_own(tokenizer) -> None:
    constraint = TokenConstraint(tokenizer, [tokenizer.eos_token_id])
    automaton = AnswerAutomaton(LABELS)
    for prefix in ('[{"text": "a"', '[{"text": "a", "label": "A', "[{"):
        state = run(automaton, prefix)
        data, _ = automaton.forced(state)
        own = tokenizer(data.decode(), add_special_tokens=False)["input_ids"]
        drafts = constraint.forced_tokens(automaton, state, left=100)
        assert drafts == own and b"".join(constraint.token_bytes[i] for i in drafts) == data
        assert len(constraint.forced_tokens(automaton, state, left=1)) == 1  # the budget
        assert constraint.forced_tokens(automaton, state, left=0) == []
    grounded = AnswerAutomaton(LABELS, "   ")
    drafts = constraint.forced_tokens(grounded, run(grounded, "["), left=10)
    assert b"".join(constraint.token_bytes[i] for i in drafts) == b"]"
    state = run(automaton, '[{"text": "a')  # free text: nothing is forced
    assert constraint.forced_tokens(automaton, state, left=100) == []


def test_document_drafts_continue_the_entity_from_the_document(tokenizer) -> None:
    from spacy_medllm.generators.hf.decoding_steps import DocumentDrafts

    constraint = TokenConstraint(tokenizer, [tokenizer.eos_token_id])
    document = 'He took "Metformin 500 mg", then metformin again; nausea followed.'
    drafts = DocumentDrafts(constraint, document, max_tokens=50)

    def written(ids):
        return b"".join(constraint.token_bytes[i] for i in ids).decode()

    # Quotes in the document are written escaped, as in the answer's JSON string.
    guess = written(drafts.draft(b'[{"text": "\\"Met', left=50))
    assert json_string_bytes(document).decode().startswith('He took \\"Met' + guess)
    assert guess.startswith("formin 500 mg")
    # The next entity starting the same way is looked for after the previous one's match.
    answer = b'[{"text": "Metformin 500 mg", "label": "DRUG"}, {"text": "met'
    assert written(drafts.draft(b'[{"text": "Met', 50)).startswith("formin 500")
    assert written(drafts.draft(answer, 50)).startswith("formin again")
    # Outside an entity text, for text the document does not hold, or without budget: nothing.
    assert drafts.draft(b'[{"text": "Met", "label": "', 50) == []
    assert drafts.draft(b'[{"text": "insulin', 50) == []
    assert drafts.draft(b'[{"text": "Met', 0) == []
    assert len(DocumentDrafts(constraint, document, max_tokens=2).draft(b'[{"text": "He', 9)) == 2
    assert DocumentDrafts.current_entity(b'[{"text": "a \\" b') == (11, b'a \\" b')


# -- stopping at the end of the answer ------------------------------------------------------------


@pytest.mark.parametrize(
    "response, closes_after",
    [
        ('[{"text": "a]", "label": "X"}] and more', '[{"text": "a]", "label": "X"}]'),
        ('  [[1], {"a": "\\"]"}]tail', '  [[1], {"a": "\\"]"}]'),
        ("[]", "[]"),
        ("Sure! [1] is the answer", None),  # prose first: never cut
        ('{"DRUG": ["a"]} {"x": 1}', None),
    ],
)
def test_json_scanner(response: str, closes_after: str | None) -> None:
    scanner = JsonScanner()
    closed_at = None
    for k in range(len(response)):
        if scanner.feed(response[k].encode()):
            closed_at = k + 1
            break
    assert (response[:closed_at] if closed_at else None) == closes_after


def test_json_end_stopping_is_per_row(tokenizer) -> None:
    import torch

    table = token_bytes(tokenizer)
    rows = ['[{"text": "a", "label": "DRUG"}] and then', 'Prose [x] "more"', "[[]] x"]
    encoded = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in rows]
    width = max(len(e) for e in encoded)
    encoded = [e + [tokenizer.pad_token_id] * (width - len(e)) for e in encoded]
    stopping = JsonEndStopping(table, len(rows), prompt_length=1)
    prompt = torch.zeros((len(rows), 1), dtype=torch.long)
    first_stop: list[int | None] = [None] * len(rows)
    for step in range(1, width + 1):
        ids = torch.cat([prompt, torch.tensor([e[:step] for e in encoded])], dim=1)
        flags = stopping(ids, None).tolist()
        for row, flag in enumerate(flags):
            if flag and first_stop[row] is None:
                first_stop[row] = step
    assert tokenizer.decode(encoded[0][: first_stop[0]]).endswith('"DRUG"}]')
    assert first_stop[1] is None
    assert tokenizer.decode(encoded[2][: first_stop[2]]) == "[[]]"


# -- a tiny random model must answer validly -------------------------------------------------------


@pytest.fixture(scope="module")
def generator(tiny_model_dir: Path):
    from spacy_medllm.generators.hf.generator import HFGenerator

    gen = HFGenerator(
        model=str(tiny_model_dir), batch_size=4, max_new_tokens=48, labels=LABELS, num_threads=1
    )
    gen.initialize()
    return gen


def _randomise(generator, seed: int) -> None:
    """New random weights (a different random model) in the loaded generator."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for param in generator._model.parameters():
            param.normal_(0.0, 0.3)


def _prompts():
    return [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": d}] for d in DOCUMENTS
    ]


def test_unconstrained_random_model_emits_garbage(generator) -> None:
    """Without the constraint the tiny random model does not answer in the schema: the test below
    is not passing by luck."""
    generator.constrained = "off"
    _randomise(generator, 0)
    responses = generator(_prompts())
    assert sum(parse_response(r, LabelSet(LABELS)).ok for r in responses) < len(responses)


@pytest.mark.parametrize("drafts", [True, False])
@pytest.mark.parametrize("mode", ["schema", "grounded"])
def test_constrained_random_model_always_answers_validly(
    generator, mode: str, drafts: bool
) -> None:
    labels = LabelSet(LABELS)
    n_entities = 0
    generator.constrained = mode
    generator.jump_forward, generator.draft_tokens = drafts, 8 if drafts else 0
    for seed in (1, 2, 3, 4):
        _randomise(generator, seed)
        for max_new_tokens in (48, 13):  # 13 forces closing early, often inside an entity
            generator.max_new_tokens = max_new_tokens
            responses = generator(_prompts())
            for document, response in zip(DOCUMENTS, responses, strict=True):
                items = json.loads(response)  # strict JSON
                assert isinstance(items, list)
                parsed = parse_response(response, labels)
                assert parsed.ok and not parsed.rejections and not parsed.repairs, response
                assert len(parsed.entities) == len(items)
                for item in items:
                    assert list(item) == ["text", "label"]
                    assert item["label"] in LABELS
                    assert item["text"].strip()
                    if mode == "grounded":
                        assert item["text"] in document, (item, document)
                n_entities += len(items)
    generator.max_new_tokens = 48
    generator.constrained = "off"
    generator.jump_forward, generator.draft_tokens = True, 4
    assert n_entities > 0  # the random models did emit entities, not only []


@pytest.mark.parametrize("mode", ["schema", "grounded"])
def test_drafts_give_the_answers_of_one_token_per_step(generator, mode: str) -> None:
    """Draft tokens (forced by the schema, copied from the document) count only where they are
    the model's own choice: the answers equal `generate`'s one token per step, alone and in a
    batch (rows keep different numbers of tokens: padding and rejected drafts in the key/value
    cache, positions per row), in fewer steps."""
    generator.constrained = mode
    prompts = _prompts()
    stats = {"steps": [0, 0], "tokens": 0, "accepted": 0}
    for seed in (1, 2, 3, 4):
        _randomise(generator, seed)
        for drafts, index in ((True, 0), (False, 1)):
            generator.jump_forward = drafts
            generator.draft_tokens = 8 if drafts else 0
            before = dict(generator.stats)
            answers = generator(prompts)
            stats["steps"][index] += generator.stats["decode_steps"] - before["decode_steps"]
            if drafts:
                stats["tokens"] += generator.stats["generated_tokens"] - before["generated_tokens"]
                stats["accepted"] += (
                    generator.stats["accepted_draft_tokens"] - before["accepted_draft_tokens"]
                )
                with_drafts = answers
                generator.batch_size = 1
                assert generator(prompts) == with_drafts
                generator.batch_size = 4
        assert with_drafts == answers, seed
    assert stats["accepted"] > 0
    assert stats["steps"][0] < stats["steps"][1]
    generator.jump_forward, generator.draft_tokens = True, 4
    generator.constrained = "off"


def test_unconstrained_drafts_give_generates_answers(generator) -> None:
    """Unconstrained, drafts are checked against the plain greedy choice: the answers (stopping at
    an end-of-turn token, at the end of a JSON list, or at max_new_tokens) are generate's."""
    generator.constrained = "off"
    prompts = _prompts()
    for seed in (0, 5):
        _randomise(generator, seed)
        for max_new_tokens in (48, 7):
            generator.max_new_tokens = max_new_tokens
            generator.jump_forward, generator.draft_tokens = True, 4
            assert generator.uses_drafts
            with_drafts = generator(prompts)
            generator.jump_forward, generator.draft_tokens = False, 0
            assert generator(prompts) == with_drafts
    generator.max_new_tokens = 48
    generator.jump_forward, generator.draft_tokens = True, 4


@pytest.mark.parametrize("mode", ["schema", "grounded"])
def test_empty_answer_threshold(generator, mode: str) -> None:
    """With `empty_answer_threshold` an answer is `[]` exactly when the model's probability of
    the empty answer is at least the threshold: at 1.0 no answer is empty (the random models do
    answer `[]` without it), at a tiny threshold every answer is; each veto and forced answer is
    counted, and generate's logits processor and the draft decoder agree. Recording the
    probabilities (for `calibrate`) changes no answer."""
    generator.constrained = mode
    generator.sized_answers = False
    prompts = _prompts()
    keys = [p[-1]["content"] for p in prompts]
    empty_before = vetoed = forced = 0

    def empty(answer: str) -> bool:
        return answer.strip().replace(" ", "") == "[]"

    for seed in range(1, 9):
        _randomise(generator, seed)
        generator.empty_answer_threshold = None
        plain = generator(prompts)
        empty_before += sum(map(empty, plain))
        generator.record_empty_probability = True
        generator.empty_probabilities.clear()
        assert generator(prompts) == plain
        assert set(generator.empty_probabilities) == set(keys)
        assert all(0.0 <= p <= 1.0 for p in generator.empty_probabilities.values())
        generator.record_empty_probability = False
        for threshold, want_empty in ((1.0, False), (1e-12, True)):
            generator.empty_answer_threshold = threshold
            answers = {}
            for drafts in (True, False):
                generator.jump_forward, generator.draft_tokens = drafts, 4 if drafts else 0
                before = dict(generator.stats)
                answers[drafts] = generator(prompts)
                vetoed += generator.stats.get("empty_answers_vetoed", 0) - before.get(
                    "empty_answers_vetoed", 0
                )
                forced += generator.stats.get("empty_answers_forced", 0) - before.get(
                    "empty_answers_forced", 0
                )
                assert [empty(a) for a in answers[drafts]] == [want_empty] * len(prompts)
            assert answers[True] == answers[False], (seed, threshold)
    assert empty_before > 0
    assert vetoed >= 2 * empty_before
    assert forced >= 2 * (8 * len(prompts) - empty_before)
    # Sized for the one-word document, the budget leaves `[]` the only answer: not vetoed.
    generator.sized_answers, generator.empty_answer_threshold = True, 1.0
    assert [a.replace(" ", "") for a in generator(prompts[:1])] == ["[]"]
    generator.empty_answer_threshold = None
    generator.jump_forward, generator.draft_tokens = True, 4
    generator.constrained, generator.sized_answers = "off", True
    with pytest.raises(ValueError, match="empty_answer_threshold must be in"):
        type(generator)(model="unused", empty_answer_threshold=1.5)


@pytest.mark.parametrize("mode", ["schema", "grounded"])
def test_recorded_empty_probability_is_the_threshold_that_decides(generator, mode: str) -> None:
    """What `calibrate` relies on: with the probability recorded in a greedy run and, for the
    answers `[]`, a vetoed one, a threshold up to it makes the answer `[]` and one above it does
    not, also for answers that open with "[" alone and decide at the next token ("]");
    generate's logits processor and the draft decoder record the same value."""
    generator.constrained = mode
    generator.sized_answers = False
    prompts = _prompts()
    two_step = 0
    try:
        for seed in (1, 2, 3, 4):
            _randomise(generator, seed)
            generator.empty_answer_threshold = None
            generator.record_empty_probability = True
            recorded = []
            for drafts in (True, False):
                generator.jump_forward, generator.draft_tokens = drafts, 4 if drafts else 0
                generator.empty_probabilities.clear()
                plain = generator(prompts)
                recorded.append(dict(generator.empty_probabilities))
            assert recorded[0].keys() == recorded[1].keys() == {p[-1]["content"] for p in prompts}
            for key, value in recorded[0].items():
                assert value == pytest.approx(recorded[1][key], rel=1e-4, abs=1e-7)
            # As calibrate: the answers `[]` again with the empty answer vetoed, still recording
            # (after a vetoed "[]" the answer may open with "[" alone and decide once more).
            generator.empty_answer_threshold = 1.0
            empty = [p for p, a in zip(prompts, plain, strict=True) if a.replace(" ", "") == "[]"]
            generator(empty)
            generator.empty_answer_threshold = None
            two_step += sum(generator.empty_probabilities[k] > v for k, v in recorded[1].items())
            recorded[0] = dict(generator.empty_probabilities)
            generator.record_empty_probability = False
            for prompt in prompts:
                p_empty = recorded[0][prompt[-1]["content"]]
                for factor, want_empty in ((1 - 1e-3, True), (1 + 1e-3, False)):
                    threshold = min(1.0, p_empty * factor)
                    if threshold <= 0.0 or (not want_empty and p_empty * factor > 1.0):
                        continue
                    generator.empty_answer_threshold = threshold
                    answer = generator([prompt])[0].strip().replace(" ", "")
                    assert (answer == "[]") is want_empty, (seed, prompt[-1], p_empty, answer)
    finally:
        generator.empty_answer_threshold = None
        generator.record_empty_probability = False
        generator.jump_forward, generator.draft_tokens = True, 4
        generator.constrained, generator.sized_answers = "off", True
    # answers `[]` at the first token that, vetoed there, opened with "[" alone and were more
    # likely still to become `[]` at the next: the case a first-step probability gets wrong
    assert two_step > 0


def test_constrained_without_labels_is_a_clear_error(tiny_model_dir: Path) -> None:
    from spacy_medllm.generators.base import GenerationError
    from spacy_medllm.generators.hf.generator import HFGenerator

    gen = HFGenerator(model=str(tiny_model_dir), constrained="schema", max_new_tokens=8)
    with pytest.raises(GenerationError, match="needs the labels"):
        gen(_prompts()[:1])
    with pytest.raises(ValueError, match="constrained must be one of"):
        HFGenerator(model=str(tiny_model_dir), constrained="json")


# -- confidence -----------------------------------------------------------------------------------


def test_scored_generation_matches_a_forward_pass(generator) -> None:
    """Each logprob is the model's own log-softmax at that step; offsets tile the response."""
    import torch

    _randomise(generator, 2)
    generator.constrained = "grounded"
    prompts = _prompts()
    accepted = generator.stats["accepted_draft_tokens"]
    scored = generator.generate_scored(prompts)
    assert generator.stats["accepted_draft_tokens"] > accepted  # drafts are scored too
    assert [s.text for s in scored] == generator(prompts)
    for response in scored:
        assert len(response.logprobs) == len(response.offsets) == len(response.token_ids) > 0
        assert all(lp <= 0.0 for lp in response.logprobs)
        assert response.offsets[0][0] == 0 and response.offsets[-1][1] == len(response.text)
        for (_, end), (start, _) in zip(response.offsets, response.offsets[1:], strict=False):
            assert end == start
    # Recompute one answer's token log-probabilities with a single forward pass.
    prompt_ids = generator.encode_prompt(prompts[1])
    answer_ids = scored[1].token_ids
    with torch.no_grad():
        logits = generator._model(torch.tensor([prompt_ids + answer_ids])).logits[0]
    positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(answer_ids) - 1)
    expected = torch.log_softmax(logits.float(), dim=-1)[positions, torch.tensor(answer_ids)]
    assert torch.allclose(expected, torch.tensor(scored[1].logprobs), atol=1e-3)
    generator.constrained = "off"


def _ner(tiny_model_dir: Path, **config):
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe(
        "medllm_ner",
        config={
            "labels": LABELS,
            "generator": {
                "@misc": "medllm.HFGenerator.v1",
                "model": str(tiny_model_dir),
                "max_new_tokens": 40,
                "constrained": "grounded",
                "num_threads": 1,
            },
            **config,
        },
    )
    return nlp


def test_confidence_on_spans_and_threshold(tiny_model_dir: Path) -> None:
    from spacy_medllm.pipeline.component import get_record

    texts = [d for d in DOCUMENTS if d.strip()]
    nlp = _ner(tiny_model_dir, confidence=True)
    pipe = nlp.get_pipe("medllm_ner")
    pipe.generator.initialize()
    scores: list[float] = []
    for seed in range(1, 7):  # a random model that emits entities
        _randomise(pipe.generator, seed)
        docs = list(nlp.pipe(texts))
        scores = [e._.medllm_confidence for doc in docs for e in doc.ents]
        if len(set(scores)) >= 2:
            break
    assert len(set(scores)) >= 2
    assert all(s is not None and s <= 0.0 for s in scores)
    for doc in docs:
        record = get_record(doc)
        listed = [c["confidence"] for chunk in record["chunks"] for c in chunk["confidence"]]
        assert all(c <= 0.0 for c in listed)
        assert {e._.medllm_confidence for e in doc.ents} <= set(listed)

    threshold = sorted(scores)[len(scores) // 2]
    strict_nlp = _ner(tiny_model_dir, confidence_threshold=threshold)
    strict_pipe = strict_nlp.get_pipe("medllm_ner")
    strict_pipe.generator = pipe.generator  # the same random weights
    strict_docs = list(strict_nlp.pipe(texts))
    for doc, strict_doc in zip(docs, strict_docs, strict=True):
        expected = [
            (e.start_char, e.end_char, e.label_)
            for e in doc.ents
            if e._.medllm_confidence >= threshold
        ]
        kept = [(e.start_char, e.end_char, e.label_) for e in strict_doc.ents]
        assert kept == expected
        assert all(e._.medllm_confidence >= threshold for e in strict_doc.ents)
        record = get_record(strict_doc)
        low = [r for r in record["rejected"] if r["reason"] == "low_confidence"]
        below = [
            c
            for chunk in record["chunks"]
            for c in chunk["confidence"]
            if c["confidence"] < threshold
        ]
        assert [(r["text"], r["label"]) for r in low] == [(c["text"], c["label"]) for c in below]
    assert any(get_record(d)["rejected"] for d in strict_docs)


def test_confidence_needs_a_scoring_generator() -> None:
    import spacy

    from spacy_medllm.generators.openai_compat import OpenAIGenerator

    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match="confidence needs a generator"):
        nlp.add_pipe(
            "medllm_ner",
            config={
                "generator": {
                    "@misc": "medllm.OpenAIGenerator.v1",
                    "model": "m",
                    "base_url": "http://127.0.0.1:9/v1",
                },
                "confidence_threshold": -1.0,
            },
        )
    assert not hasattr(OpenAIGenerator, "generate_scored")
