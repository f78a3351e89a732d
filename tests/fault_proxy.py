"""A fault-injecting HTTP proxy for tests: it stands in front of an OpenAI-compatible server (the
real llama.cpp server, or tests.servers.FakeOpenAIServer) and spoils chosen requests.

Standard library only, threads, loopback only. Bounded: at most `max_requests` requests (later
ones get a 503), request bodies of at most 1 MB, socket timeouts on both sides, and it stops
itself after `lifetime` seconds even if the test forgets to.

    with FaultProxy(upstream="http://127.0.0.1:8000/v1", plan=["http_500", "pass"]) as proxy:
        proxy.base_url      # http://127.0.0.1:<port>/v1, to give the client
        proxy.injected      # Counter of the faults actually injected

`plan` says what happens to the n-th chat request (POST .../chat/completions; other requests
are passed through): a sequence (its last entry repeats) or a function of n (1-based). Faults:

    pass              forward to the server, its answer unchanged
    http_500          500 with a JSON error
    http_503_html     503 with an HTML page (what a load balancer sends while the server restarts)
    http_429          429 without Retry-After
    http_429_retry_after  429 with Retry-After: 1
    http_400          400 with a JSON error (the request itself refused: not retried)
    http_401          401 with a JSON error (the key refused: not retried)
    slow              wait `slow_seconds` (past the client's timeout), then forward
    truncated         forward, then send half of the server's body under the full Content-Length
                      and close: the connection drops mid-answer
    truncated_json    forward, send the first half of the body as the whole body: JSON cut off
    non_json          200 with a JSON content type and a body that is not JSON
    html_200          200 with an HTML page (base_url pointing at a web page, not the API)
    no_choices        200 with a JSON error object and no choices (some servers do this)
    reset             read the request, then reset the connection (TCP RST), no answer
    close             read the request, then close the connection, no answer
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = (
    "pass", "http_500", "http_503_html", "http_429", "http_429_retry_after", "http_400",
    "http_401", "slow", "truncated", "truncated_json", "non_json", "html_200", "no_choices",
    "reset", "close",
)  # fmt: skip
MAX_BODY = 1_000_000
HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head>"
    b"<body><h1>Service Unavailable</h1><p>The upstream server is restarting.</p></body></html>"
)
WEB_PAGE = b"<html><head><title>Welcome</title></head><body><h1>It works!</h1></body></html>"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:  # a spoiled connection is the point
        pass


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        plan: Sequence[str] | Callable[[int], str] = ("pass",),
        slow_seconds: float = 10.0,
        upstream_timeout: float = 120.0,
        max_requests: int = 10_000,
        lifetime: float = 900.0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy forwards to loopback servers only, not {upstream}")
        if not callable(plan):
            unknown = set(plan) - set(FAULTS)
            if unknown or not plan:
                raise ValueError(f"unknown faults {sorted(unknown)} (known: {', '.join(FAULTS)})")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.upstream_path = parts.path.rstrip("/")  # e.g. /v1
        self.plan = plan
        self.slow_seconds = slow_seconds
        self.upstream_timeout = upstream_timeout
        self.max_requests = max_requests
        self.lifetime = lifetime
        self.injected: Counter = Counter()
        self.log: list[tuple[int, str]] = []  # (chat request number, fault)
        self.requests = 0  # all requests, chat or not
        self.chat_requests = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self.port = int(self._server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}{self.upstream_path}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self._thread.join(timeout=5)

    # -- faults ----------------------------------------------------------------------------------

    def fault_for(self, number: int) -> str:
        if callable(self.plan):
            fault = self.plan(number)
        else:
            fault = self.plan[min(number, len(self.plan)) - 1]
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        return fault

    def _forward(
        self, method: str, path: str, body: bytes, headers: dict
    ) -> tuple[int, list, bytes]:
        connection = http.client.HTTPConnection(
            self.upstream_host, self.upstream_port, timeout=self.upstream_timeout
        )
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            kept = [
                (name, value)
                for name, value in response.getheaders()
                if name.lower() not in ("content-length", "connection", "transfer-encoding")
            ]
            return response.status, kept, data
        finally:
            connection.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60  # a client that stops sending is dropped

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _reply(self, status: int, body: bytes, content_type: str, extra=()) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                for name, value in extra:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def _error(self, status: int, message: str, extra=()) -> None:
                body = json.dumps({"error": {"message": message, "type": "injected"}}).encode()
                self._reply(status, body, "application/json", extra)

            def _read_body(self) -> bytes | None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._error(413, "request body too large for the fault proxy")
                    return None
                return self.rfile.read(length) if length else b""

            def _drop(self, reset: bool) -> None:
                """Close the connection without an answer (or the rest of one); with `reset`,
                as a TCP reset."""
                try:
                    if reset:
                        linger = struct.pack("ii", 1, 0)
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    else:
                        self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self.connection.close()
                self.close_connection = True

            def _pass(self, body: bytes, cut: str | None = None) -> None:
                headers = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() not in ("host", "connection", "content-length")
                }
                try:
                    status, kept, data = proxy._forward(self.command, self.path, body, headers)
                except OSError as error:
                    self._error(502, f"fault proxy: upstream unreachable ({error})")
                    return
                if cut == "truncated":  # the full length announced, half of it sent
                    self.send_response(status)
                    for name, value in kept:
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._drop(reset=False)
                    return
                if cut == "truncated_json":
                    data = data[: len(data) // 2]
                self.send_response(status)
                for name, value in kept:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            def _handle(self) -> None:
                with proxy._lock:
                    proxy.requests += 1
                    over = proxy.requests > proxy.max_requests
                if over:
                    self._error(503, "fault proxy: request limit reached")
                    return
                body = self._read_body()
                if body is None:
                    return
                if not (self.command == "POST" and self.path.endswith("/chat/completions")):
                    self._pass(body)
                    return
                with proxy._lock:
                    proxy.chat_requests += 1
                    number = proxy.chat_requests
                fault = proxy.fault_for(number)
                with proxy._lock:
                    proxy.log.append((number, fault))
                    if fault != "pass":
                        proxy.injected[fault] += 1
                if fault == "pass":
                    self._pass(body)
                elif fault == "http_500":
                    self._error(500, "injected internal server error")
                elif fault == "http_503_html":
                    self._reply(503, HTML_PAGE, "text/html; charset=utf-8")
                elif fault == "http_429":
                    self._error(429, "injected rate limit")
                elif fault == "http_429_retry_after":
                    self._error(429, "injected rate limit", [("Retry-After", "1")])
                elif fault == "http_400":
                    self._error(400, "injected bad request: prompt too long")
                elif fault == "http_401":
                    self._error(401, "injected: invalid API key")
                elif fault == "slow":
                    proxy._stopped.wait(proxy.slow_seconds)
                    try:
                        self._pass(body)
                    except OSError:  # the client gave up waiting: that was the point
                        self.close_connection = True
                elif fault in ("truncated", "truncated_json"):
                    self._pass(body, cut=fault)
                elif fault == "non_json":
                    self._reply(200, b"Internal error, please try again", "application/json")
                elif fault == "html_200":
                    self._reply(200, WEB_PAGE, "text/html")
                elif fault == "no_choices":
                    payload = {"error": {"message": "model is loading", "code": 503}}
                    self._reply(200, json.dumps(payload).encode(), "application/json")
                elif fault == "reset":
                    self._drop(reset=True)
                elif fault == "close":
                    self._drop(reset=False)

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            def finish(self) -> None:
                try:
                    super().finish()
                except (OSError, ValueError):
                    pass

        return Handler


class ChatServer:
    """A minimal OpenAI-compatible chat server whose answers come from `answer(messages,
    max_tokens)` -> (content, finish_reason): for tests that need answers a real small model will
    not give on demand (a lexicon's entities, cut off at max_tokens as a server would)."""

    def __init__(self, answer: Callable[[list, int], tuple[str, str]]) -> None:
        chat = self
        self.requests = 0
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(min(length, MAX_BODY)) or b"{}")
                with chat._lock:
                    chat.requests += 1
                content, finish = answer(request.get("messages", []), request.get("max_tokens"))
                body = json.dumps({
                    "id": "chatcmpl-0", "object": "chat.completion", "created": 0,
                    "model": request.get("model", "m"),
                    "choices": [{"index": 0, "finish_reason": finish,
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }).encode()  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
