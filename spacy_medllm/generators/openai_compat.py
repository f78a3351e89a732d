"""The OpenAI-compatible generator: chat completions from any server that speaks the OpenAI API.

Works with OpenAI itself and with local servers (vLLM, llama.cpp's server, llama-cpp-python's
`python -m llama_cpp.server`, TGI), offline as long as the server is. Importing this module and
building an `OpenAIGenerator` imports only the standard library and spaCy; the `openai` package is
imported when the client is first needed (`initialize()` or the first call).

Over 600 lines: one class, whose docstring documents each of its settings, and the checks that
turn every kind of server answer into either a response or an error naming what came back; the
retry rules live in `retry_policy.py`, the token estimate in `token_estimate.py`, the URL checks
in `urls.py`.

The API key is read from the environment variable named by `api_key_env`, never from the config.
It lives only inside the openai client: `describe()`, `to_disk`, `repr` and error messages never
show it. Local servers (localhost, 127.0.0.1, ::1) usually check no key, so when the variable is
unset a placeholder is sent to them; a remote server without the key is a clear error.

Concurrency: each call sends its prompts through a thread pool of at most `max_concurrency`
workers sharing one synchronous client (the client and its connection pool are thread-safe).
Threads rather than the async client, because `__call__` is synchronous and is called from
spaCy's `pipe`, which may itself run inside an event loop (notebooks, async web servers), where
`asyncio.run` is not allowed. The requests wait on the network, so threads cost nothing here.
Failures (`spacy_medllm.generators.retry_policy`): the openai client is built with no retries of
its own; each request is retried here, with the client's backoff rule (0.5 s doubled up to 8 s,
or the server's Retry-After), when the failure is transient (timeout, connection reset, 408, 409,
429, 5xx, a body that is not a chat completion), at most `max_retries` times and never past its
`deadline`. A refused connection and 401/403/404 are not retried and mark the server down (the
circuit breaker), as do three requests in a row that failed after their retries: the requests that
follow fail at once for 30 s instead of each waiting for its timeout. The client's own retries do
not fit: they retry a refused connection, know no deadline and do not say how many retries they
made. When some prompts of a call fail, the others are still answered and `PartialGenerationError`
carries both (medllm_ner records the failures on their documents); error messages name what came
back (status, content type, the start of the body) and the retries actually made.

"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from spacy_medllm.generators.base import (
    ANSWER_BASE_TOKENS,
    ANSWER_TOKENS_PER_TEXT_TOKEN,
    OPENAI_GENERATOR,
    GenerationError,
    Prompt,
)
from spacy_medllm.generators.retry_policy import (
    CircuitBreaker,
    Failure,
    backoff_seconds,
    classify,
    read_completion,
)
from spacy_medllm.generators.token_estimate import estimate_prompt_tokens, estimate_text_tokens
from spacy_medllm.generators.urls import is_local_url, redact_url

logger = logging.getLogger("spacy_medllm")

CONFIG_FILE = "generator.json"
FACTORY_NAME = OPENAI_GENERATOR
OPENAI_BASE_URL = "https://api.openai.com/v1"
# Sent to local servers when the key's variable is unset: they do not check it, but the openai
# client refuses to run without some key.
LOCAL_PLACEHOLDER_KEY = "not-needed"


# The circuit breaker (retry_policy.CircuitBreaker): the server is marked down after this many
# requests in a row failed for transient reasons (after their retries), for this many seconds.
SERVER_DOWN_AFTER = 3
SERVER_DOWN_SECONDS = 30.0
# A connection that cannot be made within this many seconds will not be made (a host that drops
# packets): it does not wait for the whole `timeout`.
CONNECT_TIMEOUT = 10.0
# medllm_ner cuts documents into pieces whose answer fits max_new_tokens (answer_token_budget):
# at most max_new_tokens - 24 text tokens, and never fewer than this many.
MIN_PIECE_TEXT_TOKENS = 32


class PartialGenerationError(GenerationError):
    """Some prompts of a call failed: `responses[i]` is the answer to prompt i or None, `errors[i]`
    the GenerationError of prompt i or None. medllm_ner keeps the answers and records the errors
    on their documents."""

    def __init__(
        self,
        message: str,
        responses: Sequence[str | None],
        errors: Sequence[GenerationError | None],
    ) -> None:
        super().__init__(message)
        self.responses = list(responses)
        self.errors = list(errors)


SERVER_CONSTRAINED_MODES = ("off", "schema")


def answer_schema(labels: Sequence[str]) -> dict[str, Any]:
    """The JSON schema of an answer: a list of {"text": non-empty string, "label": one of
    `labels`} objects, in that key order, nothing else."""
    return {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "text": {"type": "string", "minLength": 1},
                "label": {"type": "string", "enum": list(labels)},
            },
            "required": ["text", "label"],
            "additionalProperties": False,
        },
    }


class OpenAIGenerator:
    """Chat completions from an OpenAI-compatible server; one request per prompt.

    model: the model name the server knows (vLLM: the served name; llama.cpp: any name works
        when it serves a single model).
    base_url: the API root including the version path, e.g. "http://127.0.0.1:8000/v1";
        None means OpenAI's own API. Put no credentials in it: pipelines save their config.
    api_key_env: the name of the environment variable holding the key (read when the client
        is built; unset is fine for a local server).
    batch_size: how many prompts the component hands over per call.
    max_concurrency: at most this many requests in flight at once.
    max_new_tokens, temperature: sent as `max_tokens` and `temperature` (0 = greedy).
    timeout: seconds per request attempt (a connection is given at most 10 s of it).
    max_retries: further attempts after a transient failure (see the module docstring).
    deadline: seconds one request may take in all, attempts and waits between them included
        (None: only timeout and max_retries bound it). A request that cannot finish before its
        deadline is not retried.
    max_prompt_tokens: the prompt budget (the server's context minus max_new_tokens), used to
        split long documents; None when unknown (no splitting).
    response_format_json: ask for `response_format={"type": "json_object"}` (JSON mode; OpenAI
        then answers an object, e.g. {"entities": [...]}, which the parser unwraps).
    extra_body: extra JSON fields for each request, for server-specific options
        (e.g. {"seed": 0, "top_k": 1} or vLLM's {"guided_json": ...}).
    health_check: in `initialize()`, list the server's models (GET /models) and fail early
        if the server cannot be reached.
    constrained: "off", or "schema": send the answer's JSON schema (a list of {"text", "label"}
        objects with the configured labels) as `response_format` of type json_schema, which
        llama.cpp's server and vLLM turn into a grammar the answer must follow. Copying from the
        text ("grounded") is not expressible as a schema; invented strings are rejected by the
        aligner as with any backend.
    labels: the labels of the schema (`medllm_ner` sets them with `set_labels`).
    sized_answers: ask for at most 24 + 3 tokens per (estimated) text token, as the transformers
        backend does, so a short text cannot ramble to max_new_tokens.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        batch_size: int = 8,
        max_concurrency: int = 4,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_prompt_tokens: int | None = None,
        response_format_json: bool = False,
        extra_body: dict[str, Any] | None = None,
        health_check: bool = False,
        constrained: str = "off",
        labels: Sequence[str] | None = None,
        sized_answers: bool = False,
        deadline: float | None = 120.0,
    ) -> None:
        if constrained not in SERVER_CONSTRAINED_MODES:
            raise ValueError(
                f"constrained must be one of {', '.join(SERVER_CONSTRAINED_MODES)} for an "
                f"OpenAI-compatible server, got {constrained!r}"
            )
        if constrained != "off" and response_format_json:
            raise ValueError("constrained and response_format_json both set response_format")
        if not model:
            raise ValueError("OpenAIGenerator needs a model: the name the server serves it under.")
        if base_url is not None:
            parts = urlsplit(base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    "base_url must be an http(s) URL such as 'http://127.0.0.1:8000/v1', "
                    f"got {redact_url(base_url)!r}"
                )
        if not api_key_env or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env):
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (such as "
                "'OPENAI_API_KEY'), not a key; got a value that is not a variable name."
            )
        for name, value in (
            ("batch_size", batch_size),
            ("max_concurrency", max_concurrency),
            ("max_new_tokens", max_new_tokens),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if deadline is not None and deadline <= 0:
            raise ValueError(f"deadline must be > 0 seconds or null, got {deadline}")
        if max_prompt_tokens is not None and max_prompt_tokens < 1:
            raise ValueError(
                f"max_prompt_tokens must be at least 1 or null, got {max_prompt_tokens}"
            )
        if extra_body is not None:
            try:
                json.dumps(extra_body)
            except (TypeError, ValueError) as error:
                raise ValueError(f"extra_body must be JSON-serialisable: {error}") from None
        self.model = str(model)
        self.base_url = str(base_url).rstrip("/") if base_url else OPENAI_BASE_URL
        self.api_key_env = api_key_env
        self.batch_size = int(batch_size)
        self.max_concurrency = int(max_concurrency)
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_prompt_tokens = int(max_prompt_tokens) if max_prompt_tokens is not None else None
        self.response_format_json = bool(response_format_json)
        self.extra_body: dict[str, Any] | None = dict(extra_body) if extra_body else None
        self.health_check = bool(health_check)
        self.constrained = constrained
        self.labels = list(labels) if labels else []
        self.sized_answers = bool(sized_answers)
        self.deadline = float(deadline) if deadline is not None else None
        self.breaker = CircuitBreaker(SERVER_DOWN_AFTER, SERVER_DOWN_SECONDS)
        # Per prompt of the last call: finish_reason and token usage as the server reported them.
        self.last_usage: list[dict[str, Any]] = []
        self._client: Any = None
        self._lock = threading.Lock()

    # -- the client ------------------------------------------------------------------------------

    @property
    def server(self) -> str:
        """The server's URL as shown in messages: no credentials."""
        return redact_url(self.base_url) or ""

    @property
    def is_local(self) -> bool:
        return is_local_url(self.base_url)

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if key:
            return key
        if self.is_local:
            return LOCAL_PLACEHOLDER_KEY
        raise GenerationError(
            f"The environment variable {self.api_key_env} is not set: it must hold the API key "
            f"for {self.server} (model {self.model!r}). Set it (export {self.api_key_env}=...) or "
            "name another variable with api_key_env."
        )

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import openai
                except ImportError as error:
                    raise ImportError(
                        "OpenAIGenerator needs the openai package: "
                        "pip install 'spacy-medllm[openai]'"
                    ) from error
                # No retries in the client: _complete retries (see the module docstring).
                self._client = openai.OpenAI(
                    api_key=self._api_key(),
                    base_url=self.base_url,
                    timeout=self.timeout,
                    max_retries=0,
                )
            return self._client

    def initialize(self) -> None:
        """Build the client now (checks the key); with health_check, also reach the server."""
        client = self._get_client()
        if self.health_check:
            try:
                served = [model.id for model in client.models.list()]
            except Exception as error:
                raise self._error("listing the models", classify(error)) from None
            logger.info("%s serves %s", self.server, served)
            if served and self.model not in served:
                logger.warning(
                    "%s does not list model %r (it lists %s); single-model servers answer anyway",
                    self.server,
                    self.model,
                    served,
                )

    def close(self) -> None:
        """Close the client's connections; the next call opens new ones."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- errors ----------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        keys = {os.environ.get(self.api_key_env), getattr(self._client, "api_key", None)}
        for key in sorted((k for k in keys if k and k != LOCAL_PLACEHOLDER_KEY), key=len)[::-1]:
            text = text.replace(key, "***")
        if self.base_url != self.server:
            text = text.replace(self.base_url, self.server)
        # Keys some servers echo back in part ("Incorrect API key provided: sk-ab...").
        return re.sub(r"\b(sk|key)-[A-Za-z0-9_*.\-]{4,}", r"\1-***", text)

    def _what_came_back(self, failure: Failure) -> str:
        """The failure as shown: its class, what the server sent (redacted) and a hint."""
        status = failure.status
        hint = ""
        if failure.kind == "timeout":
            hint = f"; no answer within timeout = {self.timeout:g} s"
        elif failure.kind == "refused":
            hint = "; is the server running and is base_url right?"
        elif failure.kind == "connection":
            hint = "; the server closed the connection (did it restart or crash?)"
        elif status in (401, 403):
            hint = f"; check the key in the environment variable {self.api_key_env}"
        elif status == 404:
            hint = "; does base_url end with the API version (e.g. /v1) and is the model served?"
        elif failure.kind == "malformed":
            hint = "; is base_url the server's OpenAI API (e.g. http://host:port/v1)?"
        name = f"{failure.name}: " if failure.name else ""
        return f"{name}{self._redact(failure.detail)}{hint}"

    def _error(
        self, what: str, failure: Failure, retries: int = 0, stopped: str = ""
    ) -> GenerationError:
        """A GenerationError naming the server, the model and what came back; nothing secret.
        "after N retries" only when there were retries."""
        attempts = f" after {retries} retries" if retries else ""
        return GenerationError(
            f"OpenAI-compatible server {self.server} (model {self.model!r}) failed {what}"
            f"{attempts}{stopped}: {self._what_came_back(failure)}"
        )

    # -- generation ------------------------------------------------------------------------------

    def set_labels(self, labels: Sequence[str]) -> None:
        """The labels a schema-constrained answer may use (`medllm_ner` calls this)."""
        self.labels = list(labels)

    def answer_limit(self, prompt: Prompt) -> int:
        """max_tokens for one prompt: max_new_tokens, or with `sized_answers` less for a short
        text (its last user message): 24 + 3 per estimated token, as in the transformers backend."""
        if not self.sized_answers:
            return self.max_new_tokens
        text = prompt[-1].get("content", "") if prompt else ""
        sized = ANSWER_BASE_TOKENS + ANSWER_TOKENS_PER_TEXT_TOKEN * estimate_text_tokens(text)
        return max(2, min(self.max_new_tokens, sized))

    def request_kwargs(self, prompt: Prompt) -> dict[str, Any]:
        """The arguments of `client.chat.completions.create` for one prompt."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in prompt],
            "max_tokens": self.answer_limit(prompt),
            "temperature": self.temperature,
        }
        if self.constrained == "schema":
            if not self.labels:
                raise GenerationError(
                    'constrained = "schema" needs the labels: medllm_ner sets them, or pass labels'
                )
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "entities", "schema": answer_schema(self.labels)},
            }
        elif self.response_format_json:
            kwargs["response_format"] = {"type": "json_object"}
        if self.extra_body:
            kwargs["extra_body"] = dict(self.extra_body)
        return kwargs

    def _attempt(self, client: Any, prompt: Prompt, timeout: float) -> Any:
        """One request; returns the completion or raises (MalformedResponse for a body that is
        not a chat completion)."""
        try:
            import openai

            limit: Any = openai.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT))
        except (ImportError, AttributeError):  # pragma: no cover - older clients
            limit = timeout
        raw = client.chat.completions.with_raw_response.create(
            **self.request_kwargs(prompt), timeout=limit
        )
        return read_completion(raw)

    def _complete(self, client: Any, index: int, prompt: Prompt) -> tuple[str, dict[str, Any]]:
        """Prompt `index`'s answer and usage, retried per the module docstring; raises a
        GenerationError saying what came back and how many retries were made."""
        started = time.monotonic()
        deadline_at = started + self.deadline if self.deadline is not None else math.inf
        retries = 0
        while True:
            refusal = self.breaker.check()
            if refusal is not None:
                raise GenerationError(
                    f"OpenAI-compatible server {self.server} (model {self.model!r}): prompt "
                    f"{index} {self._redact(refusal)}"
                )
            remaining = deadline_at - time.monotonic()
            try:
                completion = self._attempt(client, prompt, min(self.timeout, remaining))
            except Exception as error:
                failure = classify(error)
                if failure.kind == "other":  # not the server: a bug or a bad setting
                    raise self._error(f"on prompt {index}", failure, retries) from None
                stopped = ""
                if failure.retryable and retries < self.max_retries:
                    wait = failure.retry_after
                    if wait is None or wait <= 0:
                        wait = backoff_seconds(retries)
                    if time.monotonic() + wait < deadline_at:
                        logger.info(
                            "%s: prompt %d failed (%s); retry %d of %d in %.2f s",
                            self.server, index, failure.kind, retries + 1, self.max_retries, wait,
                        )  # fmt: skip
                        time.sleep(wait)
                        retries += 1
                        continue
                    stopped = f" (no time for another: deadline = {self.deadline:g} s)"
                self.breaker.failure(failure, said=self._what_came_back(failure))
                raise self._error(f"on prompt {index}", failure, retries, stopped) from None
            self.breaker.success()
            break
        choice = completion.choices[0]
        usage = getattr(completion, "usage", None)
        meta = {
            "finish_reason": getattr(choice, "finish_reason", None),
            "prompt_tokens": getattr(usage, "prompt_tokens", None),
            "completion_tokens": getattr(usage, "completion_tokens", None),
        }
        if retries:
            meta["retries"] = retries
        message = getattr(choice, "message", None)
        content = getattr(message, "content", None)
        if content is None:
            logger.warning(
                "%s (model %r) answered prompt %d without text (finish_reason %r)",
                self.server,
                self.model,
                index,
                meta["finish_reason"],
            )
            content = ""
        return str(content), meta

    def __call__(self, prompts: Sequence[Prompt]) -> list[str]:
        """One response per prompt, in the prompts' order.

        At most `max_concurrency` requests run at once. Every prompt is tried, also when others
        fail (a server marked down fails the rest at once); if any failed, PartialGenerationError
        (a GenerationError) carries the answers and the errors, prompt by prompt.
        """
        if not prompts:
            self.last_usage = []
            return []
        client = self._get_client()
        results: list[str | None] = [None] * len(prompts)
        errors: list[GenerationError | None] = [None] * len(prompts)
        metas: list[dict[str, Any]] = [{} for _ in prompts]

        def run(i: int) -> None:
            try:
                results[i], metas[i] = self._complete(client, i, prompts[i])
            except GenerationError as error:
                errors[i] = error
                metas[i] = {"error": str(error)}

        workers = min(self.max_concurrency, len(prompts))
        if workers == 1:
            for i in range(len(prompts)):
                run(i)
        else:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medllm-openai")
            try:
                futures: list[Future] = [pool.submit(run, i) for i in range(len(prompts))]
                for future in futures:
                    future.result()  # re-raises what is not a GenerationError (a bug)
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
        self.last_usage = metas
        failed = [error for error in errors if error is not None]
        if failed:
            if len(prompts) == 1:
                raise PartialGenerationError(str(failed[0]), results, errors) from None
            raise PartialGenerationError(
                f"{len(failed)} of {len(prompts)} requests failed; the first: {failed[0]}",
                results,
                errors,
            ) from None
        return [text if text is not None else "" for text in results]

    # -- budgeting -------------------------------------------------------------------------------

    def prompt_token_budget(self) -> int | None:
        """`max_prompt_tokens` as configured: the server's context is not asked for."""
        return self.max_prompt_tokens

    def answer_token_budget(self) -> int:
        """The most answer tokens a request may take (`max_new_tokens`): medllm_ner cuts
        documents into pieces whose list of entities fits it, and cuts a piece again when its
        answer still ran out."""
        return self.max_new_tokens

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        """An upper estimate of the prompt's tokens: the server's tokenizer is unknown.

        Words at 3 letters a token (abbreviations at 1.5), every digit and symbol one token,
        non-ASCII characters by their bytes, plus 8 tokens of chat markup per message and 32 for
        the answer header (`token_estimate`). Real counts are lower (by about a third on
        clinical e-mails), so long documents are split a little earlier than necessary rather
        than too late. Set max_prompt_tokens with the server's context and max_new_tokens in mind.
        """
        return estimate_prompt_tokens(prompt)

    # -- identity and serialisation --------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "openai-compatible",
            "base_url": self.server,
            "model": self.model,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "decoding": "greedy" if self.temperature == 0 else "sampling",
            "response_format_json": self.response_format_json,
            "extra_body": dict(self.extra_body) if self.extra_body else None,
            # Only when set, so response caches written before the options existed stay valid.
            **(
                {"constrained": self.constrained, "labels": self.labels}
                if self.constrained != "off"
                else {}
            ),
            **({"answer_limit": "sized to the text"} if self.sized_answers else {}),
        }

    def config(self) -> dict[str, Any]:
        """The factory's arguments as saved in generator.json (no key, only its variable's name)."""
        return {
            "@misc": FACTORY_NAME,
            "model": self.model,
            "base_url": self.server,
            "api_key_env": self.api_key_env,
            "batch_size": self.batch_size,
            "max_concurrency": self.max_concurrency,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "max_prompt_tokens": self.max_prompt_tokens,
            "response_format_json": self.response_format_json,
            "extra_body": dict(self.extra_body) if self.extra_body else None,
            "health_check": self.health_check,
            "constrained": self.constrained,
            "labels": self.labels or None,
            "sized_answers": self.sized_answers,
            "deadline": self.deadline,
        }

    def to_disk(self, path: Path) -> None:
        """Write generator.json with the settings; never the key (only the variable's name)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.config(), indent=2, ensure_ascii=False) + "\n"
        (path / CONFIG_FILE).write_text(text, encoding="utf8")

    def from_disk(self, path: Path) -> None:
        """Restore what determines the output: the model and the generation settings.

        The deployment's settings (base_url, api_key_env, batch_size, max_concurrency, timeout,
        max_retries, deadline, health_check) stay as this object was built: the server is found
        where this machine's config says.
        """
        state = json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf8"))
        if state.get("model") and state["model"] != self.model:
            logger.info("generator.json sets model %r (was %r)", state["model"], self.model)
        self.model = state.get("model") or self.model
        self.max_new_tokens = int(state.get("max_new_tokens", self.max_new_tokens))
        self.temperature = float(state.get("temperature", self.temperature))
        if "max_prompt_tokens" in state:
            value = state["max_prompt_tokens"]
            self.max_prompt_tokens = int(value) if value is not None else None
        self.response_format_json = bool(
            state.get("response_format_json", self.response_format_json)
        )
        if "extra_body" in state:
            self.extra_body = dict(state["extra_body"]) if state["extra_body"] else None
        self.constrained = state.get("constrained", self.constrained)
        self.labels = list(state.get("labels") or self.labels)
        self.sized_answers = bool(state.get("sized_answers", self.sized_answers))

    def __getstate__(self) -> dict[str, Any]:
        # For pickling (spaCy's multiprocessing): the client, its key and the lock stay behind.
        state = self.__dict__.copy()
        state["_client"] = None
        del state["_lock"]
        del state["breaker"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self.breaker = CircuitBreaker(SERVER_DOWN_AFTER, SERVER_DOWN_SECONDS)

    def __repr__(self) -> str:
        return (
            f"OpenAIGenerator(model={self.model!r}, base_url={self.server!r}, "
            f"api_key_env={self.api_key_env!r}, batch_size={self.batch_size}, "
            f"max_concurrency={self.max_concurrency}, max_new_tokens={self.max_new_tokens}, "
            f"temperature={self.temperature})"
        )
