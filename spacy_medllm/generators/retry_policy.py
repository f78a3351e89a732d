"""What the OpenAI-compatible backend does when a request fails: which failures are worth another
attempt, how long to wait before it, and when to stop asking a server that is down.

Standard library only; the openai client's exceptions are recognised by their class names and
attributes, so this module imports nothing of it.

- Transient (retried with backoff, within the request's deadline): timeouts, connections reset or
  closed mid-answer, HTTP 408, 409, 429 and 5xx (a Retry-After or retry-after-ms header is
  honoured up to 60 s), bodies that are not a chat completion (an HTML error page, cut-off JSON).
- Not retried: a refused connection (nothing listens: the server is down or base_url is wrong),
  HTTP 401/403/404 (key, URL or model wrong: the same for every request), other 4xx (about this
  request, e.g. a prompt longer than the server's context).
- The circuit breaker: a refused connection or a 401/403/404 marks the server down at once, and
  so do `threshold` requests in a row that failed for transient reasons after their retries.
  While it is down, requests fail at once without being sent; after `cooldown` seconds they are
  sent again. So a server that dies mid-run costs seconds, not a timeout per document.
"""

from __future__ import annotations

import email.utils
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

REFUSED = "refused"  # nothing listens at the address
CONNECTION = "connection"  # reset, closed before or during the answer, DNS
TIMEOUT = "timeout"  # no answer within the attempt's timeout
RATE_LIMITED = "rate_limited"  # HTTP 429
SERVER_ERROR = "server_error"  # HTTP 408, 409, 5xx
MALFORMED = "malformed"  # a body that is not a chat completion
CONFIG = "config"  # HTTP 401, 403, 404: key, base_url or model wrong
REQUEST = "request"  # other 4xx: this request was refused
OTHER = "other"  # anything else (a bug, not the server)

TRANSIENT = (CONNECTION, TIMEOUT, RATE_LIMITED, SERVER_ERROR, MALFORMED)
SERVER_DOWN_AT_ONCE = (REFUSED, CONFIG)

INITIAL_RETRY_DELAY = 0.5  # seconds; doubled per retry, as the openai client does
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0  # a longer Retry-After is not waited for
EXCERPT_CHARS = 160


@dataclass
class Failure:
    """One failed attempt: its kind (the constants above), whether another attempt may help, and
    a description of what came back (status, content type, a start of the body)."""

    kind: str
    retryable: bool
    detail: str
    name: str = ""  # the exception's class name
    status: int | None = None
    retry_after: float | None = None  # what the server asked for, in seconds


class MalformedResponse(Exception):
    """The server answered, but not with a chat completion: says what came back."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.status = status


def excerpt(text: Any, limit: int = EXCERPT_CHARS) -> str:
    """The start of a body for a message: white space collapsed, at most `limit` characters."""
    flat = " ".join(str(text).split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def describe_body(status: int | None, content_type: str | None, body: Any) -> str:
    """ "HTTP 502 (text/html): '<html>...'": what a response was, for error messages."""
    kind = (content_type or "no content type").split(";")[0].strip() or "no content type"
    text = body if isinstance(body, str) else "" if body is None else str(body)
    shown = excerpt(text) if text.strip() else "an empty body"
    if kind.endswith("html") or text.lstrip().lower().startswith(("<!doctype", "<html")):
        shown = f"an HTML page {shown}"
    return f"HTTP {status if status is not None else '?'} ({kind}): {shown}"


def retry_after_seconds(
    headers: Mapping[str, str] | None, now: float | None = None
) -> float | None:
    """The wait a response asks for: retry-after-ms, or retry-after in seconds or as an HTTP date.
    None when absent or unreadable."""
    if not headers:
        return None
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        return max(0.0, email.utils.mktime_tz(parsed) - (time.time() if now is None else now))
    except (TypeError, ValueError, OverflowError):
        return None


def backoff_seconds(retry: int, rng: Callable[[], float] = random.random) -> float:
    """The wait before retry number `retry` (0-based): 0.5 s doubled per retry up to 8 s, less a
    random 0-25 % so that parallel requests do not come back at once (the openai client's rule)."""
    return min(INITIAL_RETRY_DELAY * 2.0 ** min(retry, 30), MAX_RETRY_DELAY) * (1 - 0.25 * rng())


def read_completion(raw: Any) -> Any:
    """The chat completion in a raw openai response (`with_raw_response`), or MalformedResponse
    saying what came instead: an HTML page, JSON cut off or not JSON, an error object or a JSON
    body without choices (some servers answer errors with status 200)."""
    status = getattr(raw, "status_code", None)
    headers = getattr(raw, "headers", None)
    content_type = headers.get("content-type") if headers is not None else None
    try:
        completion = raw.parse()
    except Exception as error:  # a JSON content type with a body that is not JSON
        raise MalformedResponse(
            f"{describe_body(status, content_type, raw.text)} is not valid JSON "
            f"({type(error).__name__}: {error})",
            status,
        ) from None
    if isinstance(completion, str) or not getattr(completion, "choices", None):
        body = completion if isinstance(completion, str) else raw.text
        said = ""
        if not isinstance(completion, str):
            said = " and has no choices"
            server_error = getattr(completion, "error", None)
            if server_error:
                said += f"; the server said {excerpt(server_error)}"
        raise MalformedResponse(
            f"{describe_body(status, content_type, body)}: not a chat completion{said}", status
        )
    return completion


def _causes(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _status_failure(error: BaseException, name: str, status: int) -> Failure:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    try:
        body = response.text if response is not None else getattr(error, "body", None)
    except Exception:  # a streamed or closed response
        body = getattr(error, "body", None)
    content_type = headers.get("content-type") if headers is not None else None
    detail = describe_body(status, content_type, body)
    if status in (408, 409, 429) or status >= 500:
        kind = RATE_LIMITED if status == 429 else SERVER_ERROR
        wait = retry_after_seconds(headers)
        if wait is not None and wait > MAX_RETRY_AFTER:
            detail += f"; asked to wait {wait:g} s (Retry-After), more than {MAX_RETRY_AFTER:g} s"
            return Failure(kind, False, detail, name, status, wait)
        if wait is not None:
            detail += f"; asked to wait {wait:g} s (Retry-After)"
        return Failure(kind, True, detail, name, status, wait)
    if status in (401, 403, 404):
        return Failure(CONFIG, False, detail, name, status)
    return Failure(REQUEST, False, detail, name, status)


def classify(error: BaseException) -> Failure:
    """What kind of failure `error` (raised by the openai client or by reading its answer) is."""
    name = type(error).__name__
    if isinstance(error, MalformedResponse):
        return Failure(MALFORMED, True, str(error), name, error.status)
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        return _status_failure(error, name, status)
    chain = _causes(error)
    names = {type(e).__name__ for e in chain}
    if name == "APITimeoutError" or any("Timeout" in n for n in names):
        return Failure(TIMEOUT, True, "timed out", name)
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or any(
        "refused" in str(e).lower() for e in chain
    ):
        return Failure(REFUSED, False, "connection refused", name)
    if name == "APIConnectionError" or any(
        isinstance(e, (ConnectionError, EOFError)) for e in chain
    ):
        reason = str(chain[-1]) if len(chain) > 1 else str(error)
        return Failure(
            CONNECTION, True, f"connection lost ({reason or type(chain[-1]).__name__})", name
        )
    if name in ("JSONDecodeError", "APIResponseValidationError", "UnicodeDecodeError"):
        return Failure(MALFORMED, True, f"an answer that is not a chat completion: {error}", name)
    return Failure(OTHER, False, str(error), name)


class CircuitBreaker:
    """Marks a server down after a refusal or `threshold` transient failures in a row, so that the
    requests that follow fail at once for `cooldown` seconds; a success resets it. Thread-safe."""

    def __init__(self, threshold: int = 3, cooldown: float = 30.0) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.consecutive = 0
        self.down_until = 0.0
        self.reason = ""
        self.opened = 0  # how many times the server was marked down
        self._lock = threading.Lock()

    def check(self, now: float | None = None) -> str | None:
        """Why no request may be sent now (the server is marked down), or None."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if now < self.down_until:
                return (
                    f"not sent: the server was marked down {self.reason}; it is asked again in "
                    f"{self.down_until - now:.0f} s"
                )
            return None

    def success(self) -> None:
        with self._lock:
            self.consecutive = 0
            self.down_until = 0.0

    def failure(self, failure: Failure, now: float | None = None, said: str = "") -> None:
        """Count a request that failed for good (after its retries); `said`: what to tell the
        requests refused while the server is down (default: the failure's detail)."""
        now = time.monotonic() if now is None else now
        said = said or failure.detail
        with self._lock:
            if failure.kind in SERVER_DOWN_AT_ONCE:
                self._open(now, f"after {said}")
            elif failure.kind in TRANSIENT:
                self.consecutive += 1
                if self.consecutive >= self.threshold:
                    self._open(now, f"after {self.consecutive} failed requests in a row (last: "
                               f"{said})")  # fmt: skip

    def _open(self, now: float, reason: str) -> None:
        if now >= self.down_until:
            self.opened += 1
        self.down_until = now + self.cooldown
        self.reason = reason
