"""Property-based tests (Hypothesis) of the path response -> parse -> align -> Doc, through the real
`medllm_ner` component with a scripted generator on a blank English pipeline (no model).

Generated inputs:
- documents: empty, white space only, any Unicode (every script, emoji, NUL and other control
  characters, combining marks, right-to-left text), words of several languages, and documents
  of up to 100,000 characters;
- model responses: JSON lists of entities copied from the document, invented or overlapping,
  with wrong types, unknown labels and missing keys; fenced, wrapped in prose or in an object,
  cut off anywhere, repeated into huge answers, with characters deleted or control characters
  inserted, or any text at all;
- generators that fail for some documents, and answers cut off at an answer budget.

Invariants: no exception escapes `nlp.pipe`; every document comes out, in order; every span's
text is the document's text at its offsets and its label one of the pipeline's; every entity the
model emitted became a span or a recorded rejection with a reason; the pieces a document was cut
into cover all its non-space characters; a failed request is an error on its document (and only
on the documents it concerns); a cut-off answer is flagged.

Examples per property: tests/hypothesis_profiles.py (1,000 by default, 10,000 nightly).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import spacy
from hypothesis import given
from hypothesis import strategies as st

from spacy_medllm import get_record
from spacy_medllm.core.parsing import parse_response
from spacy_medllm.core.records import REASONS
from spacy_medllm.pipeline.pieces import CUT_OFF
from tests.hypothesis_profiles import MIN_EXAMPLES, PROFILE, PROPERTY_SETTINGS
from tests.reliability_log import log_figure
from tests.scripted import ScriptedGenerator

LABELS = ["DRUG", "ADVERSE_EVENT"]
ALL_REASONS = {*REASONS, "low_confidence"}
COUNTS: Counter = Counter()  # (property, "examples" | "documents" | "responses") -> number


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    for name in sorted({key[0] for key in COUNTS}):
        log_figure(
            "property",
            name,
            profile=PROFILE,
            examples=COUNTS[name, "examples"],
            documents=COUNTS[name, "documents"],
            responses=COUNTS[name, "responses"],
        )


def _count(name: str, documents: int = 0, responses: int = 0) -> None:
    COUNTS[name, "examples"] += 1
    COUNTS[name, "documents"] += documents
    COUNTS[name, "responses"] += responses


# -- pipelines -------------------------------------------------------------------------------------


def _build(output: str) -> tuple[spacy.language.Language, object]:
    nlp = spacy.blank("en")
    config = {
        "labels": LABELS,
        "output": output,
        "generator": {"@misc": "test.ScriptedLexiconGenerator.v1", "lexicon": {}},
    }
    return nlp, nlp.add_pipe("medllm_ner", config=config)


PIPELINES = {output: _build(output) for output in ("ents", "spans")}


def pipeline(output: str, generator: object) -> tuple[spacy.language.Language, object]:
    nlp, component = PIPELINES[output]
    component.generator = generator
    component.strict = False
    return nlp, component


class FailingPieces(ScriptedGenerator):
    """Fails the prompts that contain `marker`: raising RuntimeError for the whole call, or (with
    `partial`) an error that says prompt by prompt which failed, as the OpenAI backend does."""

    def __init__(self, answer: Callable[[str], str], marker: str, partial: bool, **kwargs) -> None:
        super().__init__(answer, **kwargs)
        self.marker, self.partial = marker, partial

    def __call__(self, prompts):
        texts = [prompt[-1]["content"] for prompt in prompts]
        self.calls.append(texts)
        bad = [self.marker in text for text in texts]
        if not any(bad):
            return [self.answer(text) for text in texts]
        if not self.partial:
            raise RuntimeError("scripted failure")
        error = RuntimeError("some prompts failed")
        error.responses = [None if b else self.answer(t) for t, b in zip(texts, bad, strict=True)]
        error.errors = [RuntimeError("scripted failure") if b else None for b in bad]
        raise error


class Budgeted(ScriptedGenerator):
    """Answers cut off after `limit` characters, and says its answer budget (so that medllm_ner
    caps its pieces and cuts again those whose answer ran out)."""

    def __init__(self, answer: Callable[[str], str], limit: int, **kwargs) -> None:
        super().__init__(lambda text: answer(text)[:limit], **kwargs)
        self.limit = limit

    def answer_token_budget(self) -> int:
        return 24 + self.limit // 8


# -- documents -------------------------------------------------------------------------------------

ANY_CHAR = st.characters(exclude_categories=("Cs",))  # any code point but lone surrogates
SAMPLES = [
    "After starting Abilify I had nausea and vomiting.",
    "Patsient alustas metformiini kasutamist ja kaebab nüüd kõhulahtisuse üle.",
    "Пациент принимал метформин и жалуется на диарею.",
    "患者服用二甲双胍后出现腹泻。",
    "المريض يتناول الميتفورمين ويشكو من الإسهال.",
    "😀🤒💊 nausea 🧪 \u200d👩\u200d⚕️",
    "\x00\x00nausea\x00",
    "\t\n\r \u2028\u2029\u00a0\u3000",
    "e\u0301 n\u0303 \u202eeaesuan\u202c",
    "pt c/o SOB, CP x3d, N/V/D. Hx: HTN, DM2 (EF 35%).",
    "İstanbul ß ẞ ﬁ Ǆ",
]
WORDS = [w for sample in SAMPLES for w in sample.split()]
small_docs = st.one_of(
    st.sampled_from(SAMPLES),
    st.text(alphabet=ANY_CHAR, max_size=300),
    st.lists(st.one_of(st.sampled_from(WORDS), st.text(ANY_CHAR, min_size=1, max_size=12))).map(
        " ".join
    ),
    st.sampled_from(["", " ", "\n\n", "\x00", "\u200b"]),
)


def documents(max_size: int = 100_000) -> st.SearchStrategy[list[str]]:
    """1-5 documents; in one example of 20, one of them has 10,000 to `max_size` characters."""
    huge = st.builds(
        lambda piece, size: (piece * (size // len(piece) + 1))[:size],
        small_docs.filter(lambda text: len(text) > 0),
        st.integers(min(10_000, max_size), max_size),
    )
    return st.lists(small_docs, min_size=1, max_size=4).flatmap(
        lambda docs: st.integers(0, 19).flatmap(
            lambda k: st.just(docs)
            if k
            else huge.flatmap(lambda big: st.integers(0, len(docs)).map(
                lambda at: [*docs[:at], big, *docs[at:]]
            ))
        )
    )  # fmt: skip


def answer_from_text(text: str) -> str:
    """Every third word of the piece (and two overlapping ones), an invented entity, alternating
    labels: what a model might answer for it."""
    words = [word[:40] for word in text.split()]  # models name entities, not paragraphs
    items = [{"text": w, "label": LABELS[k % 2]} for k, w in enumerate(words[::3][:40])]
    if len(words) > 2:
        items.append({"text": " ".join(words[:2]), "label": "DRUG"})
        items.append({"text": " ".join(words[1:3]), "label": "DRUG"})
    items.append({"text": "zqxv invented", "label": "ADVERSE_EVENT"})
    return json.dumps(items, ensure_ascii=False)


# -- responses -------------------------------------------------------------------------------------


@st.composite
def entity_text(draw, doc: str):
    choice = draw(st.integers(0, 5))
    if choice == 0 and doc:
        start = draw(st.integers(0, len(doc) - 1))
        return doc[start : draw(st.integers(start, min(len(doc), start + 40)))]
    if choice == 1 and doc.split():
        return draw(st.sampled_from(doc.split()))
    if choice == 2:
        return draw(st.text(ANY_CHAR, max_size=30))
    if choice == 3:
        return draw(st.sampled_from(["", "   ", "\x00", "\u202e", "nausea\nvomiting", "x" * 5000]))
    if choice == 4:
        return draw(
            st.one_of(st.integers(), st.floats(), st.none(), st.booleans(), st.lists(st.integers()))
        )
    return draw(st.sampled_from(WORDS))


@st.composite
def entity_item(draw, doc: str):
    text = draw(entity_text(doc))
    label = draw(
        st.one_of(
            st.sampled_from([*LABELS, "drug", "Adverse event", "CITY", "", " DRUG "]),
            st.one_of(st.none(), st.integers(), st.lists(st.sampled_from(LABELS), max_size=2)),
        )
    )
    shape = draw(st.integers(0, 6))
    if shape == 0:
        return [text, label]
    if shape == 1:
        return {"entity": text, "type": label}
    if shape == 2:
        return text
    if shape == 3:
        return {"text": text}
    if shape == 4:
        return {"label": label, "text": text, "extra": draw(st.integers())}
    return {"text": text, "label": label}


def _insert(draw, text: str, chars: st.SearchStrategy) -> str:
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(chars) + text[at:]
    return text


@st.composite
def responses(draw, doc: str) -> str:
    """A model response for `doc`, sane or not."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(st.text(ANY_CHAR, max_size=400), st.sampled_from(["", "[]", "{}"])))
    items = draw(st.lists(entity_item(doc), max_size=12))
    top = draw(st.integers(0, 9))
    if top == 0:
        body = json.dumps({"entities": items}, ensure_ascii=draw(st.booleans()))
    elif top == 1:
        body = json.dumps(draw(st.one_of(st.integers(), st.none(), st.text(max_size=20))))
    elif top == 2:  # a huge answer: the list again and again
        body = json.dumps(items * draw(st.integers(20, 400)), ensure_ascii=False)
    else:
        body = json.dumps(items, ensure_ascii=draw(st.booleans()))
    for change in draw(st.lists(st.integers(0, 7), max_size=3)):
        if change == 0:
            body = f"```json\n{body}\n```"
        elif change == 1:
            body = f"Here are the entities: {body} Let me know if you need more."
        elif change == 2:
            body = body[: draw(st.integers(0, len(body)))]  # cut off
        elif change == 3 and body:  # characters lost
            at = draw(st.integers(0, len(body) - 1))
            body = body[:at] + body[at + draw(st.integers(1, 10)) :]
        elif change == 4:
            body = _insert(draw, body, st.sampled_from(["\x00", "\x1b", "\x7f", "\u2028", "\r"]))
        elif change == 5:
            body = body.replace('"', "'")
        elif change == 6:
            body = body.replace("}", "},").replace("]", ",]")
        else:
            body = _insert(draw, body, st.sampled_from(list('[]{}",:\\')))
    return body


# -- checks ----------------------------------------------------------------------------------------


def spans_of(doc, component) -> list:
    return list(doc.ents) if component.output == "ents" else list(doc.spans.get("medllm", []))


def check_spans(doc, component) -> None:
    text = doc.text  # Doc.text joins every token: once, not once per span
    for span in spans_of(doc, component):
        assert 0 <= span.start_char < span.end_char <= len(text)
        assert span.text == text[span.start_char : span.end_char]
        assert span.label_ in LABELS


def check_record(doc, text: str) -> dict:
    record = get_record(doc)
    assert record is not None, "a document came out without a record"
    assert all(r["reason"] in ALL_REASONS for r in record["rejected"]), record["rejected"]
    if not text.strip():
        assert record["skipped"] == "empty document" and record["chunks"] == []
    return record


def check_coverage(record: dict, text: str) -> None:
    """The answered, failed and cut-again pieces cover every non-space character."""
    covered = [False] * len(text)
    for piece in [*record["chunks"], *record["failed_chunks"], *record["split_again"]]:
        for k in range(piece["start"], piece["end"]):
            covered[k] = True
    lost = [k for k, char in enumerate(text) if not covered[k] and not char.isspace()]
    if record["error"] is None or not record["error"].startswith("ChunkingError"):
        assert not lost, f"characters {lost[:5]}... of the document were never sent"


def _norm(value: object) -> str:
    return " ".join(re.sub(r"[\W_]+", " ", str(value).casefold()).split())


def check_accounting(doc, component, response: str) -> None:
    """Every emitted entity is a span (one whose text contains it) or a rejection with a
    reason; the record's count of emitted entities is the parser's."""
    record = get_record(doc)
    parsed = parse_response(response, component.label_set)
    assert record["n_emitted"] == len(parsed.entities) + len(parsed.rejections)
    for rejection in parsed.rejections:
        assert rejection.to_dict() in record["rejected"]
    if not parsed.ok:
        assert [e["response"] for e in record["parse_errors"]] == [response]
    spans = spans_of(doc, component)
    for entity in parsed.entities:
        needle = _norm(entity.text)
        as_span = any(s.label_ == entity.label and needle in _norm(s.text) for s in spans)
        as_rejection = any(
            r["label"] in (entity.label, entity.raw_label)
            and (r["text"] == entity.text or needle in _norm(r["text"]))
            for r in record["rejected"]
        )
        assert as_span or as_rejection, f"{entity} is neither a span nor a rejection"


# -- properties ------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    texts=documents(),
    output=st.sampled_from(["ents", "spans"]),
    budget=st.sampled_from([None, 14, 40, 400]),
    batch_size=st.integers(1, 5),
)
def test_any_documents_come_out_in_order_with_true_spans(texts, output, budget, batch_size):
    if budget is not None and max(map(len, texts)) > 10_000:
        budget = 20 * budget  # a few hundred pieces, not thousands: the run stays short
    generator = ScriptedGenerator(answer_from_text, batch_size=batch_size, budget=budget)
    nlp, component = pipeline(output, generator)
    docs = list(nlp.pipe(texts))
    assert [doc.text for doc in docs] == texts
    for doc, text in zip(docs, texts, strict=True):
        record = check_record(doc, text)
        assert record["error"] is None
        check_spans(doc, component)
        check_coverage(record, text)
    _count("documents", documents=len(texts), responses=sum(len(c) for c in generator.calls))


@PROPERTY_SETTINGS
@given(data=st.data(), output=st.sampled_from(["ents", "spans"]))
def test_any_response_becomes_spans_or_recorded_rejections(data, output):
    text = data.draw(st.one_of(small_docs, st.sampled_from(SAMPLES)), label="document")
    response = data.draw(responses(text), label="response")
    nlp, component = pipeline(output, ScriptedGenerator(lambda _: response))
    (doc,) = list(nlp.pipe([text]))
    assert doc.text == text
    record = check_record(doc, text)
    check_spans(doc, component)
    if text.strip():
        assert record["error"] is None and len(record["chunks"]) == 1
        check_accounting(doc, component, response)
    _count("responses", documents=1, responses=1)


@PROPERTY_SETTINGS
@given(
    texts=st.lists(st.tuples(small_docs, st.booleans()), min_size=1, max_size=6),
    partial=st.booleans(),
    budget=st.sampled_from([None, 14]),
    batch_size=st.integers(1, 4),
)
def test_failed_requests_are_errors_on_their_documents_only(texts, partial, budget, batch_size):
    marker = "\u2620BOOM"
    texts = [f"{text} {marker}" if bad else text.replace(marker, "") for text, bad in texts]
    generator = FailingPieces(
        answer_from_text, marker, partial, batch_size=batch_size, budget=budget
    )
    nlp, component = pipeline("ents", generator)
    docs = list(nlp.pipe(texts))
    assert [doc.text for doc in docs] == texts
    for doc, text in zip(docs, texts, strict=True):
        record = check_record(doc, text)
        check_spans(doc, component)
        check_coverage(record, text)
        if marker in text:
            assert "scripted failure" in record["error"]
            assert record["failed_chunks"] and all(
                marker in text[c["start"] : c["end"]] or not partial
                for c in record["failed_chunks"]
            )
        else:
            assert record["error"] is None and record["failed_chunks"] == []
    _count("failures", documents=len(texts), responses=sum(len(c) for c in generator.calls))


@PROPERTY_SETTINGS
@given(texts=documents(5_000), limit=st.integers(1, 400), split=st.booleans())
def test_cut_off_answers_are_flagged_never_silently_dropped(texts, limit, split):
    if split:
        generator = Budgeted(answer_from_text, limit, batch_size=4, budget=200)
    else:  # a generator that does not tell its budget: flagged only
        generator = ScriptedGenerator(lambda text: answer_from_text(text)[:limit], budget=200)
    nlp, component = pipeline("spans", generator)
    docs = list(nlp.pipe(texts))
    assert [doc.text for doc in docs] == texts
    for doc, text in zip(docs, texts, strict=True):
        record = check_record(doc, text)
        check_spans(doc, component)
        check_coverage(record, text)
        for chunk in record["chunks"]:
            answer = generator.answer(text[chunk["start"] : chunk["end"]])
            cut = CUT_OFF in parse_response(answer, component.label_set).repairs
            assert chunk.get("truncated", False) == cut
        assert record["n_truncated"] == sum(bool(c.get("truncated")) for c in record["chunks"])
    _count("cut_off", documents=len(texts), responses=sum(len(c) for c in generator.calls))


def test_the_profile_asks_for_enough_examples():
    """The CI profile tries at least 1,000 examples per property (the issue's bar)."""
    assert PROPERTY_SETTINGS.max_examples >= MIN_EXAMPLES >= 100
    if PROFILE == "ci":
        assert PROPERTY_SETTINGS.max_examples >= 1_000
