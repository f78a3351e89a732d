"""llama.cpp's own OpenAI-compatible server (`llama-server`) on an exported model.

    with LlamaServer.start(ServerSettings(model="export/merged-f16.gguf")) as server:
        server.base_url  # http://127.0.0.1:<port>/v1, for assemble --base-url

It listens on 127.0.0.1 unless told otherwise, with `parallel` slots sharing the context and
continuous batching (requests join the running batch as slots free up), the chat template of the
GGUF (`--jinja`), and its log in a file, never a pipe. It is stopped at the end of the block, also
when the caller fails; on Linux it also dies with the process that started it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spacy_medllm.serving.tools import binary


class ServerError(RuntimeError):
    """The server could not be started or did not become ready."""


@dataclass
class ServerSettings:
    """What `llama-server` is started with.

    model: a GGUF file (an exported merged model, or the base model with `lora`).
    lora: LoRA GGUF files applied to it (`--lora`).
    alias: the model name the server answers to (the pipeline's `model`).
    parallel: slots: requests decoded together in one batch; ctx_per_slot: context of each slot
    (the server's --ctx-size is parallel x ctx_per_slot).
    threads: CPU threads; batch_size: prompt tokens per evaluation step (--batch-size).
    """

    model: str | Path
    lora: list[str | Path] = field(default_factory=list)
    alias: str = "medllm"
    host: str = "127.0.0.1"
    port: int | None = None
    threads: int = 2
    parallel: int = 8
    ctx_per_slot: int = 2048
    batch_size: int = 512
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)

    def command(self, port: int) -> list[str]:
        args = [
            str(binary("llama-server")),
            "--model", str(self.model),
            "--alias", self.alias,
            "--host", self.host,
            "--port", str(port),
            "--threads", str(self.threads),
            "--threads-batch", str(self.threads),
            "--parallel", str(self.parallel),
            "--ctx-size", str(self.parallel * self.ctx_per_slot),
            "--batch-size", str(self.batch_size),
            "--cont-batching",
            "--jinja",
            "--no-webui",
        ]  # fmt: skip
        for path in self.lora:
            args += ["--lora", str(path)]
        return args + list(self.extra_args)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel send SIGTERM to the server when its parent dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class LlamaServer:
    """A running `llama-server`; `base_url` ends with /v1."""

    def __init__(self, process: subprocess.Popen, settings: ServerSettings, port: int) -> None:
        self.process = process
        self.settings = settings
        self.port = port
        self.log_path = Path(settings.log_path) if settings.log_path else None
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        self.root = f"http://{host}:{port}"
        self.base_url = f"{self.root}/v1"

    @classmethod
    def start(cls, settings: ServerSettings) -> LlamaServer:
        """Start the server (not yet ready: use it as a context manager, or `wait_until_ready`)."""
        if not Path(settings.model).is_file():
            raise FileNotFoundError(f"the GGUF model {settings.model} does not exist")
        for path in settings.lora:
            if not Path(path).is_file():
                raise FileNotFoundError(f"the LoRA GGUF {path} does not exist")
        port = settings.port or free_port(settings.host)
        if settings.log_path is None:
            handle, name = tempfile.mkstemp(prefix=f"llama_server_{port}_", suffix=".log")
            os.close(handle)
            settings.log_path = Path(name)
        env = {**os.environ, "OMP_NUM_THREADS": str(settings.threads)}
        with open(settings.log_path, "wb") as log:
            process = subprocess.Popen(
                settings.command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        return cls(process, settings, port)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return "(no log)"
        try:
            text = self.log_path.read_text(encoding="utf8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def health(self, timeout: float = 2.0) -> dict[str, Any]:
        """GET /health (raises OSError while the model loads or if nothing answers)."""
        with urllib.request.urlopen(f"{self.root}/health", timeout=timeout) as response:
            return json.loads(response.read().decode("utf8") or "{}")

    def wait_until_ready(self, timeout: float = 120.0) -> float:
        """Poll /health until the model is loaded; returns the seconds waited."""
        start = time.monotonic()
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerError(
                    f"llama-server exited with code {code} before it was ready "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            try:
                self.health()
                return time.monotonic() - start
            except (OSError, ValueError):
                pass
            if time.monotonic() - start > timeout:
                self.stop()
                raise ServerError(
                    f"llama-server at {self.root} was not ready after {timeout:g} s "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns once the process is gone."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=grace)

    def __enter__(self) -> LlamaServer:
        try:
            self.wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def settings_for_export(
    folder: str | Path, kind: str = "merged-f16", **options: Any
) -> ServerSettings:
    """Server settings for one file of an export folder (`export_gguf`): a merged model, or
    "lora-f16" on the base model given as `model=` (e.g. the packaged Q4_1 GGUF) or exported
    beside it (`base-f16`)."""
    from spacy_medllm.serving.gguf_export import load_manifest

    manifest = load_manifest(folder)
    files = manifest["files"]
    if kind not in files:
        raise ValueError(f"{folder} has no {kind!r}; it has {', '.join(files) or 'nothing'}")
    path = Path(folder) / files[kind]["file"]
    if files[kind]["kind"] == "lora":
        if options.get("model") is None and "base-f16" in files:
            options["model"] = Path(folder) / files["base-f16"]["file"]
        if options.get("model") is None:
            raise ValueError(
                "serving a LoRA GGUF needs the base model's GGUF: export with --base, or give "
                "it (for the packaged SmolLM2, its Q4_1 GGUF the adapter was trained on)"
            )
        return ServerSettings(lora=[path], **options)
    return ServerSettings(model=path, **options)
