"""A 20,000-word document through `medllm_ner` with a real (tiny) model: every piece is listed in
the record, every entity lands at its own character offset, and nothing is cut off silently.

The model is the tiny Llama with the LoRA adapter that `tests/test_component_hf.py` trains on the
GOLD sentences (its `trained` fixture, trained again for this module). The document is 3,000+ of
those sentences in a shuffled order with varied white space between them, so the gold offset of
every entity is known; the prompt budget is set so that each piece is one sentence, which is
what the model learned to answer.
"""

from __future__ import annotations

import itertools
import random

import pytest

from spacy_medllm.pipeline.component import get_record
from tests.gold_examples import GOLD
from tests.test_component_hf import build_nlp, entities, trained  # noqa: F401 (fixture)

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")

N_WORDS = 20_000
SEPARATORS = (" ", "  ", "\n", "\n\n", " \n")


def long_document(seed: int = 0) -> tuple[str, list[tuple[int, int]], list[tuple[int, int, str]]]:
    """The text, each sentence's (start, end) and every gold entity (start, end, label)."""
    rng = random.Random(seed)
    text, sentences, gold = "", [], []
    words = 0
    while words < N_WORDS:
        sentence, pairs = rng.choice(GOLD)
        if text:
            text += rng.choice(SEPARATORS)
        start = len(text)
        text += sentence
        sentences.append((start, len(text)))
        gold.extend(
            (start + sentence.index(s), start + sentence.index(s) + len(s), label)
            for s, label in pairs
        )
        words += len(sentence.split())
    return text, sentences, sorted(gold)


@pytest.fixture(scope="module")
def long_nlp(trained):  # noqa: F811 (the fixture imported above)
    nlp = build_nlp(trained, batch_size=32)
    component = nlp.get_pipe("medllm_ner")
    generator = component.generator

    def prompt_tokens(text: str) -> int:
        return generator.count_prompt_tokens(component.prompt_builder.messages(text))

    # Give the answer all the context a prompt of one sentence leaves, so that no piece can hold
    # two sentences: the model learned single sentences.
    context = generator.prompt_token_budget() + generator.max_new_tokens
    longest = max(prompt_tokens(text) for text, _ in GOLD)
    generator.max_new_tokens = context - longest
    pairs = itertools.permutations([text for text, _ in GOLD], 2)
    assert min(prompt_tokens(a + sep + b) for a, b in pairs for sep in SEPARATORS) > longest
    return nlp


def test_a_20000_word_document_has_every_entity_at_its_offset(long_nlp) -> None:
    text, sentences, gold = long_document()
    assert len(text.split()) >= N_WORDS
    generator = long_nlp.get_pipe("medllm_ner").generator
    assert generator.count_prompt_tokens([{"role": "user", "content": text}]) > 40 * (
        generator.prompt_token_budget() + generator.max_new_tokens
    )
    short_before, short_after = GOLD[0][0], GOLD[3][0]
    before, doc, after = long_nlp.pipe([short_before, text, short_after])

    record = get_record(doc)
    assert record["error"] is None and record["skipped"] is None
    # Every piece is listed, in order: one per sentence, and together they hold every character
    # that is not white space.
    pieces = [(chunk["start"], chunk["end"]) for chunk in record["chunks"]]
    assert pieces == sentences
    covered = bytearray(len(text))
    for start, end in pieces:
        covered[start:end] = b"\x01" * (end - start)
    assert all(covered[i] or text[i].isspace() for i in range(len(text)))
    # Every entity is where the gold says, to the character, and the model's every answer was
    # read in full: no parse error, no answer cut off, nothing emitted that is not a span.
    assert entities(doc) == gold
    assert all(text[start:end] == e.text for (start, end, _), e in zip(gold, doc.ents, strict=True))
    assert record["parse_errors"] == [] and "truncated" not in record["repairs"]
    assert record["rejected"] == [] and record["n_emitted"] == record["n_spans"] == len(gold)
    # The short documents of the same batch kept their own answers.
    for short, out in ((short_before, before), (short_after, after)):
        expected = sorted(
            (short.index(s), short.index(s) + len(s), label) for s, label in dict(GOLD)[short]
        )
        assert entities(out) == expected
        assert [(c["start"], c["end"]) for c in get_record(out)["chunks"]] == [(0, len(short))]


def test_with_a_cache_each_distinct_piece_is_generated_once(long_nlp, tmp_path) -> None:
    from spacy_medllm.pipeline.cache import ResponseCache

    text, sentences, gold = long_document(seed=1)
    component = long_nlp.get_pipe("medllm_ner")
    generator = component.generator
    component.response_cache = ResponseCache(tmp_path / "cache")
    try:
        batches = generator.stats["batches"]
        doc = long_nlp(text)
    finally:
        component.response_cache = None
    record = get_record(doc)
    # Six distinct sentences: six answers generated (in one batch), the other pieces share them.
    assert generator.stats["batches"] - batches == 1
    assert len(list((tmp_path / "cache").rglob("*.json"))) == len(GOLD)
    assert record["cache"]["miss"] == len(sentences) and record["cache"]["hit"] == 0
    assert [(c["start"], c["end"]) for c in record["chunks"]] == sentences
    assert entities(doc) == gold
