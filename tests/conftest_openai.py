"""Pytest plugin: the session-scoped `llama_server` fixture, a real OpenAI-compatible server.

Register it in tests/conftest.py:

    pytest_plugins = ["tests.conftest_openai"]

`llama_server` starts `python -m llama_cpp.server` on the packaged SmolLM2-135M-Instruct GGUF
(127.0.0.1, a free port, n_ctx 2048, 2 threads) once per test session, waits until GET /v1/models
answers (at most 120 s), yields the base URL ("http://127.0.0.1:<port>/v1") and stops the server
at the end of the session, also when tests fail or the session is interrupted. The server's
output goes to server.log in a pytest temporary folder (named in any failure message). The model
name to send is `tests.servers.LLAMA_SERVER_MODEL` (any name works: the server serves one model).

Tests using it are skipped, with the reason, when llama-cpp-python (with its server extra) or the
packaged model is not installed, unless MEDLLM_REQUIRE_LLAMA_SERVER=1 (then they fail: for CI,
where a missing server must not pass silently). MEDLLM_LLAMA_SERVER_URL=http://host:port/v1 uses
a server that is already running instead of starting one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.servers import ServerError, llama_server_missing, running_llama_server, served_models


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a running llama.cpp OpenAI-compatible server (ends with /v1)."""
    external = os.environ.get("MEDLLM_LLAMA_SERVER_URL")
    if external:
        external = external.rstrip("/")
        try:
            served_models(external, timeout=5.0)
        except (OSError, ValueError) as error:
            pytest.fail(f"MEDLLM_LLAMA_SERVER_URL={external} does not answer GET /models: {error}")
        yield external
        return
    reason = llama_server_missing()
    if reason:
        if os.environ.get("MEDLLM_REQUIRE_LLAMA_SERVER") == "1":
            pytest.fail(f"MEDLLM_REQUIRE_LLAMA_SERVER=1 but {reason}")
        pytest.skip(reason)
    try:
        log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
        with running_llama_server(
            ready_timeout=120.0, n_ctx=2048, n_threads=2, log_path=log_path
        ) as server:
            yield server.base_url
    except ServerError as error:
        pytest.fail(str(error), pytrace=False)
