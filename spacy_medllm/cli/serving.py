"""`export-gguf` (the fine-tuned model as GGUF files) and `serve` (llama.cpp's server on them)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import typer

from spacy_medllm.cli._app import app, csv


@app.command("export-gguf", no_args_is_help=True)
def export_gguf(
    source: Path = typer.Argument(
        ..., help="A medllm_ner pipeline folder, a fine-tuning output folder or an adapter folder."
    ),
    output: Path = typer.Option(..., help="Folder for the GGUF files and medllm-serving.json."),
    types: str = typer.Option(
        "f16,q8_0", help="Merged model types: f16, q8_0, q4_k_m (comma-separated; none: LoRA only)."
    ),
    lora: bool = typer.Option(True, help="Also the LoRA adapter as GGUF (llama.cpp --lora)."),
    base: bool = typer.Option(False, help="Also the base model as base-f16.gguf (for --lora)."),
    base_model: str | None = typer.Option(
        None, help="The base model [default: the one the adapter records]."
    ),
) -> None:
    """Write the fine-tuned model as GGUF with llama.cpp's own converters: the LoRA adapter, the
    merged model at each type, and the prompt settings a served pipeline needs."""
    from spacy_medllm.serving.gguf_export import export_gguf as export

    kinds = [] if types.strip().lower() == "none" else csv(types) or []
    manifest = export(source, output, types=kinds, lora=lora, base=base, base_model=base_model)
    for name, entry in manifest["files"].items():
        typer.echo(f"{name}: {output / entry['file']} ({entry['bytes'] / 2**20:.1f} MiB)")
    typer.echo(f"Prompt settings: {output / 'medllm-serving.json'}")


@app.command(no_args_is_help=True)
def serve(
    export: Path = typer.Argument(..., help="An export-gguf folder."),
    kind: str = typer.Option("merged-f16", help="Which file: merged-f16, merged-q8_0, ..."),
    base_gguf: Path | None = typer.Option(
        None, help="With --kind lora-f16: the base model's GGUF the LoRA is applied to."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8080, help="Port."),
    threads: int = typer.Option(2, help="CPU threads."),
    parallel: int = typer.Option(8, help="Slots: requests decoded together (continuous batching)."),
    ctx_per_slot: int = typer.Option(2048, help="Context tokens of each slot."),
    alias: str = typer.Option("medllm", help="The model name the server answers to."),
    log: Path | None = typer.Option(None, help="The server's log file [default: a temp file]."),
    server_arg: list[str] = typer.Option(
        [],
        "--server-arg",
        help="An extra llama-server argument, passed as it is (repeat; write "
        "--server-arg=--flag for a flag), e.g. --server-arg=--n-gpu-layers --server-arg=99.",
    ),
) -> None:
    """Serve an exported model with llama.cpp's OpenAI-compatible server until Ctrl-C; point a
    pipeline at it with `assemble --base-url http://HOST:PORT/v1 --adapter EXPORT --model ALIAS
    --constrained schema`."""
    from spacy_medllm.serving.llama_server import LlamaServer, settings_for_export

    options = {
        "host": host,
        "port": port,
        "threads": threads,
        "parallel": parallel,
        "ctx_per_slot": ctx_per_slot,
        "alias": alias,
        "log_path": log,
        "extra_args": list(server_arg),
    }
    if base_gguf is not None:
        options["model"] = base_gguf
    settings = settings_for_export(export, kind, **options)
    with LlamaServer.start(settings) as server:
        typer.echo(f"Serving {settings.model} as {alias!r} at {server.base_url}")
        typer.echo(f"  log: {server.log_path}")
        typer.echo(
            f"  assemble PIPELINE --base-url {server.base_url} --adapter {export} --model {alias} "
            "--constrained schema"
        )
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the server on TERM too
        try:
            while server.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            return
        raise RuntimeError(
            f"llama-server exited with code {server.process.returncode}:\n{server.log_tail()}"
        )
