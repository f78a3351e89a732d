"""Server faults, injected by a proxy (tests/fault_proxy.py) in front of an OpenAI-compatible
server: what the OpenAI backend and `medllm_ner` do with each.

Each fault kind, once (transient): retried with backoff, answered, no document lost. For good
(persistent): an error recorded on each document, naming what came back (status, content type,
the start of the body) and the retries actually made, with every document out of `nlp.pipe`, in
order, within the deadline. A refused connection fails fast; a server that dies mid-run costs
seconds, not a timeout per document.

Tests marked `slow` put the proxy in front of the real llama.cpp server (the session fixture
`llama_server`, tests/conftest_openai.py) or start one of their own to kill; the others use the
scripted FakeOpenAIServer (tests/servers.py). The retry policy's rules are tested on their own
at the end.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator

import pytest
import spacy

from spacy_medllm import get_record
from spacy_medllm.core.records import summarise_records
from spacy_medllm.generators.base import GenerationError
from spacy_medllm.generators.openai_compat import OpenAIGenerator, PartialGenerationError
from spacy_medllm.generators.retry_policy import (
    CONFIG,
    MALFORMED,
    REFUSED,
    TIMEOUT,
    CircuitBreaker,
    Failure,
    backoff_seconds,
    retry_after_seconds,
)
from tests.fault_proxy import FaultProxy
from tests.reliability_log import log_figure
from tests.servers import (
    LLAMA_SERVER_MODEL,
    FakeOpenAIServer,
    free_port,
    llama_server_missing,
    running_llama_server,
)

TEXTS = [
    "After starting Abilify I had nausea.",
    "Aspirin gave me a rash.",
    "Metformin caused diarrhoea.",
    "Ibuprofen helped my back pain.",
    "Lisinopril gave her a dry cough.",
]
# Fault kinds a retry can cure, and what the error names when the fault persists.
TRANSIENT = {
    "http_500": ["HTTP 500", "application/json", "injected internal server error"],
    "http_503_html": ["HTTP 503", "text/html", "an HTML page", "Service Unavailable"],
    "http_429": ["HTTP 429", "injected rate limit"],
    "http_429_retry_after": ["HTTP 429", "asked to wait 1 s (Retry-After)"],
    "slow": ["APITimeoutError", "no answer within timeout"],
    "truncated": ["connection lost", "complete message body"],
    "truncated_json": ["HTTP 200", "is not valid JSON", '"id"', "chatcmpl-"],
    "non_json": ["HTTP 200", "is not valid JSON", "Internal error, please try again"],
    "html_200": ["HTTP 200", "text/html", "an HTML page", "It works!", "not a chat completion"],
    "no_choices": ["HTTP 200", "has no choices", "model is loading"],
    "reset": ["connection lost", "reset by peer"],
    "close": ["connection lost", "Server disconnected"],
}
# Fault kinds no retry can cure: not retried.
PERMANENT = {
    "http_400": ["HTTP 400", "prompt too long"],
    "http_401": ["HTTP 401", "check the key in the environment variable"],
}


def generator(base_url: str, **settings) -> OpenAIGenerator:
    settings.setdefault("model", LLAMA_SERVER_MODEL)
    settings.setdefault("max_new_tokens", 16)
    settings.setdefault("timeout", 1.0)
    settings.setdefault("max_retries", 2)
    return OpenAIGenerator(base_url=base_url, **settings)


def ner_pipeline(base_url: str, **settings) -> tuple[spacy.language.Language, object]:
    """A blank English pipeline with medllm_ner on the OpenAI backend at `base_url`."""
    strict = settings.pop("strict", False)
    config = {
        "labels": ["DRUG", "ADVERSE_EVENT"],
        "strict": strict,
        "generator": {"@misc": "medllm.OpenAIGenerator.v1", "base_url": base_url, **settings},
    }
    config["generator"].setdefault("model", LLAMA_SERVER_MODEL)
    config["generator"].setdefault("max_new_tokens", 16)
    nlp = spacy.blank("en")
    return nlp, nlp.add_pipe("medllm_ner", config=config)


def assert_all_out(docs, texts) -> None:
    assert [doc.text for doc in docs] == list(texts), "a document was lost or reordered"
    assert all(get_record(doc) is not None for doc in docs)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


# -- one fault, then the server answers: retried ---------------------------------------------------


@pytest.mark.parametrize("kind", sorted(TRANSIENT))
def test_a_transient_fault_is_retried_and_answered(fake, kind):
    with FaultProxy(fake.base_url, plan=[kind, "pass"], slow_seconds=3) as proxy:
        model = generator(proxy.base_url, max_concurrency=1)
        start = time.monotonic()
        assert model([[{"role": "user", "content": "hello"}]]) == ["hello"]
        elapsed = time.monotonic() - start
        model.close()
    assert proxy.injected[kind] == 1 and [fault for _, fault in proxy.log] == [kind, "pass"]
    assert model.last_usage[0]["retries"] == 1
    if kind == "http_429_retry_after":
        assert elapsed >= 1.0  # the server's Retry-After was waited for
    assert elapsed < 6
    log_figure(
        "fault",
        f"{kind} (once)",
        server="scripted",
        injected=1,
        docs_in=1,
        docs_out=1,
        lost=0,
        outcome="retried, answered",
        seconds=round(elapsed, 2),
    )


@pytest.mark.parametrize("kind", sorted(PERMANENT))
def test_a_permanent_fault_is_not_retried(fake, kind):
    with FaultProxy(fake.base_url, plan=[kind, "pass"]) as proxy:
        model = generator(proxy.base_url, max_retries=3)
        with pytest.raises(GenerationError) as info:
            model([[{"role": "user", "content": "hello"}]])
    assert proxy.chat_requests == 1
    message = str(info.value)
    assert all(part in message for part in PERMANENT[kind]), message
    assert "retries" not in message


# -- the fault persists: an error on each document, naming what came back --------------------------


@pytest.mark.parametrize("kind", sorted({**TRANSIENT, **PERMANENT}))
@pytest.mark.parametrize("retries", [0, 2])
def test_a_persistent_fault_is_an_error_on_each_document(fake, kind, retries):
    with FaultProxy(fake.base_url, plan=[kind], slow_seconds=2) as proxy:
        nlp, component = ner_pipeline(
            proxy.base_url, max_retries=retries, timeout=1.0, max_concurrency=2, batch_size=2
        )
        start = time.monotonic()
        docs = list(nlp.pipe(TEXTS))
        elapsed = time.monotonic() - start
    assert_all_out(docs, TEXTS)
    errors = [get_record(doc)["error"] for doc in docs]
    assert all(errors), errors
    # The first documents' errors name what came back; later ones may be refused by the circuit
    # breaker (the server marked down) without a request, which says so.
    first = errors[0]
    assert all(part in first for part in {**TRANSIENT, **PERMANENT}[kind]), first
    assert "no choices" not in first or kind == "no_choices"
    retried = kind in TRANSIENT and retries
    assert (f"after {retries} retries" in first) == bool(retried), first
    for error in errors[1:]:
        assert all(p in error for p in {**TRANSIENT, **PERMANENT}[kind]) or "marked down" in error
    assert component.n_failed_docs == len(TEXTS)
    assert summarise_records(get_record(doc) for doc in docs)["n_errors"] == len(TEXTS)
    assert elapsed < 30
    log_figure(
        "fault",
        f"{kind} (persistent, {retries} retries)",
        server="scripted",
        injected=proxy.injected[kind],
        docs_in=len(TEXTS),
        docs_out=len(docs),
        lost=len(TEXTS) - len(docs),
        outcome="error recorded on every document",
        seconds=round(elapsed, 2),
    )


def test_strict_raises_the_error_instead(fake):
    with FaultProxy(fake.base_url, plan=["http_500"]) as proxy:
        nlp, _ = ner_pipeline(proxy.base_url, max_retries=0, strict=True)
        with pytest.raises(GenerationError, match="HTTP 500"):
            list(nlp.pipe(TEXTS))


def test_partial_failure_keeps_the_other_answers(fake):
    # Request 2 of 4 fails for good (no retries): only its document has an error.
    plan = ["pass", "http_500", "pass", "pass"]
    with FaultProxy(fake.base_url, plan=plan) as proxy:
        model = generator(proxy.base_url, max_retries=0, max_concurrency=1)
        prompts = [[{"role": "user", "content": t}] for t in TEXTS[:4]]
        with pytest.raises(PartialGenerationError) as info:
            model(prompts)
    assert info.value.responses == [TEXTS[0], None, TEXTS[2], TEXTS[3]]
    assert [e is None for e in info.value.errors] == [True, False, True, True]
    assert "1 of 4 requests failed" in str(info.value)
    with FaultProxy(fake.base_url, plan=plan) as proxy:
        nlp, _component = ner_pipeline(proxy.base_url, max_retries=0, max_concurrency=1)
        docs = list(nlp.pipe(TEXTS[:4]))
    assert_all_out(docs, TEXTS[:4])
    assert [get_record(doc)["error"] is None for doc in docs] == [True, False, True, True]
    assert proxy.chat_requests == 4  # the other answers were kept, not asked again


# -- deadlines, refused connections, a dead server -------------------------------------------------


def test_the_deadline_bounds_a_hanging_server(fake):
    with FaultProxy(fake.base_url, plan=["slow"], slow_seconds=60) as proxy:
        model = generator(proxy.base_url, timeout=1.0, max_retries=50, deadline=3.0)
        start = time.monotonic()
        with pytest.raises(GenerationError) as info:
            model([[{"role": "user", "content": "hello"}]])
        elapsed = time.monotonic() - start
    assert elapsed < 4.5, f"the deadline of 3 s was overrun: {elapsed:.1f} s"
    message = str(info.value)
    assert "deadline = 3 s" in message and "no answer within timeout = 1 s" in message
    assert " after " in message  # it did retry, within the deadline


def test_a_refused_connection_fails_fast_for_every_document():
    port = free_port()  # nothing listens on it
    texts = [f"Patient {i} took aspirin." for i in range(40)]
    nlp, _component = ner_pipeline(
        f"http://127.0.0.1:{port}/v1", timeout=60.0, max_retries=3, max_concurrency=4
    )
    start = time.monotonic()
    docs = list(nlp.pipe(texts))
    elapsed = time.monotonic() - start
    assert_all_out(docs, texts)
    errors = [get_record(doc)["error"] for doc in docs]
    assert all(errors) and "connection refused" in errors[0] and "retries" not in errors[0]
    assert "is the server running" in errors[0]
    assert sum("marked down" in error for error in errors) >= len(texts) - 4
    assert elapsed < 5, f"a refused connection took {elapsed:.1f} s over {len(texts)} documents"
    log_figure(
        "fault",
        "connection refused",
        server="none",
        injected=len(texts),
        docs_in=len(texts),
        docs_out=len(docs),
        lost=0,
        outcome="error recorded on every document, no retries",
        seconds=round(elapsed, 2),
    )


def test_failures_are_logged_and_counted_not_raised(fake, caplog):
    caplog.set_level(logging.WARNING, logger="spacy_medllm")
    with FaultProxy(fake.base_url, plan=["http_400"]) as proxy:
        nlp, _component = ner_pipeline(proxy.base_url, max_retries=0)
        docs = list(nlp.pipe(TEXTS))
    assert_all_out(docs, TEXTS)
    failures = [r for r in caplog.records if "a document failed" in r.getMessage()]
    assert 1 <= len(failures) <= 3  # the first few, not one line per document for ever
    assert "strict = true" in failures[0].getMessage()


# -- against the real llama.cpp server -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(TRANSIENT))
def test_real_server_survives_each_transient_fault(llama_server, kind):
    # The first request of the run is spoiled, the rest pass: every document is answered.
    settings = {"timeout": 8.0, "max_retries": 2, "max_concurrency": 1, "batch_size": 3}
    # The untrained model's answers run past max_new_tokens, so pieces are halved and asked
    # again: count the requests of a clean run first (greedy answers, the same every time).
    with FaultProxy(llama_server, plan=["pass"]) as clean:
        list(ner_pipeline(clean.base_url, **settings)[0].pipe(TEXTS[:3]))
    with FaultProxy(llama_server, plan=[kind, "pass"], slow_seconds=12) as proxy:
        nlp, _component = ner_pipeline(proxy.base_url, **settings)
        start = time.monotonic()
        docs = list(nlp.pipe(TEXTS[:3]))
        elapsed = time.monotonic() - start
    assert_all_out(docs, TEXTS[:3])
    assert [get_record(doc)["error"] for doc in docs] == [None] * 3
    assert all(len(get_record(doc)["chunks"]) >= 1 for doc in docs)
    assert proxy.injected[kind] == 1
    assert proxy.chat_requests == clean.chat_requests + 1  # the clean run's and 1 retry
    log_figure(
        "fault",
        f"{kind} (once)",
        server="llama.cpp",
        injected=proxy.injected[kind],
        docs_in=3,
        docs_out=len(docs),
        lost=0,
        outcome="retried, answered",
        seconds=round(elapsed, 2),
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted({**TRANSIENT, **PERMANENT}))
def test_real_server_persistent_fault_is_an_error_per_document(llama_server, kind):
    # Every second request is spoiled: documents whose request is spoiled past its retries get
    # an error, the others their answer; none is lost.
    with FaultProxy(
        llama_server, plan=lambda n: kind if n % 2 else "pass", slow_seconds=12
    ) as proxy:
        nlp, _component = ner_pipeline(
            proxy.base_url, timeout=8.0, max_retries=0, max_concurrency=1, batch_size=4
        )
        start = time.monotonic()
        docs = list(nlp.pipe(TEXTS[:4]))
        elapsed = time.monotonic() - start
    assert_all_out(docs, TEXTS[:4])
    errors = [get_record(doc)["error"] for doc in docs]
    assert all(errors[0::2]), errors
    expected = {**TRANSIENT, **PERMANENT}[kind]
    assert all(part in errors[0] for part in expected), errors[0]
    # A 401 marks the server down: the documents after it are refused without a request.
    if kind == "http_401":
        assert all(errors) and "marked down" in errors[1]
    else:
        assert errors[1::2] == [None, None]
    log_figure(
        "fault",
        f"{kind} (every other request, no retries)",
        server="llama.cpp",
        injected=proxy.injected[kind],
        docs_in=4,
        docs_out=len(docs),
        lost=0,
        outcome=f"{sum(map(bool, errors))} documents with an error, the others answered",
        seconds=round(elapsed, 2),
    )


@pytest.mark.slow
def test_real_server_that_dies_mid_run_costs_seconds(tmp_path):
    reason = llama_server_missing()
    if reason:
        pytest.skip(reason)
    texts = [f"Patient {i} took aspirin and had nausea." for i in range(12)]
    with running_llama_server(log_path=tmp_path / "server.log") as server:
        nlp, _component = ner_pipeline(
            server.base_url, timeout=30.0, max_retries=3, max_concurrency=2, batch_size=4
        )
        killed_at: list[float] = []

        def stream() -> Iterator[str]:
            for i, text in enumerate(texts):
                if i == 4:  # the first batch is answered: the server dies
                    server.process.send_signal(signal.SIGKILL)
                    server.process.wait(timeout=10)
                    killed_at.append(time.monotonic())
                yield text

        docs = list(nlp.pipe(stream()))
        after_kill = time.monotonic() - killed_at[0]
    assert_all_out(docs, texts)
    errors = [get_record(doc)["error"] for doc in docs]
    assert errors[:4] == [None] * 4
    assert all(errors[4:]) and "connection refused" in errors[4]
    assert after_kill < 10, f"the dead server stalled the run for {after_kill:.0f} s"
    log_figure(
        "fault",
        "server killed mid-run (SIGKILL)",
        server="llama.cpp",
        injected=1,
        docs_in=len(texts),
        docs_out=len(docs),
        lost=0,
        outcome="answered before the kill, error recorded after it",
        seconds=round(after_kill, 2),
    )


# -- the retry policy ------------------------------------------------------------------------------


def test_retry_after_headers_are_read_in_all_their_forms():
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    now = 1_700_000_000.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 7))
    assert retry_after_seconds({"retry-after": date}, now=now) == pytest.approx(7, abs=1)
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None and retry_after_seconds(None) is None


def test_backoff_doubles_up_to_a_cap_with_jitter():
    assert backoff_seconds(0, rng=lambda: 0.0) == 0.5
    assert backoff_seconds(3, rng=lambda: 0.0) == 4.0
    assert backoff_seconds(10, rng=lambda: 0.0) == 8.0
    assert backoff_seconds(1, rng=lambda: 1.0) == 0.75  # less a quarter at most


def test_the_circuit_breaker_opens_and_closes():
    breaker = CircuitBreaker(threshold=3, cooldown=30.0)
    timeout = Failure(TIMEOUT, True, "timed out")
    breaker.failure(timeout, now=0)
    breaker.failure(timeout, now=1)
    assert breaker.check(now=2) is None
    breaker.failure(timeout, now=2)
    assert "3 failed requests in a row" in breaker.check(now=3)
    assert breaker.check(now=33) is None  # asked again after the cooldown
    breaker.success()
    breaker.failure(Failure(REFUSED, False, "connection refused"), now=40)
    assert "connection refused" in breaker.check(now=41)  # at once
    breaker.success()
    assert breaker.check(now=42) is None
    breaker.failure(Failure(CONFIG, False, "HTTP 401"), now=50)
    assert breaker.check(now=51) is not None
    breaker.success()
    for _ in range(10):  # a malformed answer is transient: counted, not at once
        breaker.failure(Failure(MALFORMED, True, "HTML"), now=60)
        breaker.success()
    assert breaker.check(now=61) is None and breaker.opened == 3
