"""Commands around a pipeline: `assemble` (save one), `extract` (run one over texts), `info`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from spacy_medllm.cli._app import app


def _read_texts(source: Path | None) -> Iterator[dict[str, Any]]:
    """Texts from a .jsonl file ({"text": ...} per line), a text file (one per line) or stdin."""
    stream = sys.stdin if source is None or str(source) == "-" else source.open(encoding="utf8")
    jsonl = source is not None and source.suffix == ".jsonl"
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        if jsonl:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise typer.BadParameter(f"{source}:{number} is not JSON: {error}") from error
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise typer.BadParameter(f'{source}:{number} has no "text" string')
            yield record
        else:
            yield {"text": line.rstrip("\n")}


@app.command()
def assemble(
    output: Path = typer.Argument(..., help="Folder to write the spaCy pipeline to."),
    adapter: str | None = typer.Option(
        None,
        help="Fine-tuning output folder or its adapter/ folder; with --base-url, the folder "
        "with the served model's prompt settings (an export-gguf folder).",
    ),
    model: str = typer.Option(
        "smollm2-135m-instruct",
        help="Base model: packaged alias, folder or hub id; with --base-url, the served name.",
    ),
    base_url: str | None = typer.Option(
        None, help="An OpenAI-compatible server (llama.cpp's, vLLM) instead: http://HOST:PORT/v1"
    ),
    api_key_env: str = typer.Option(
        "OPENAI_API_KEY", help="With --base-url: the environment variable holding the key."
    ),
    max_concurrency: int | None = typer.Option(
        None, help="With --base-url: requests in flight at once [default: 4]."
    ),
    lang: str = typer.Option("en", help="Language of the blank pipeline."),
    label: list[str] | None = typer.Option(
        None, help="Labels (repeat); default: from the adapter."
    ),
    batch_size: int = typer.Option(8, help="Prompts per generate call."),
    max_new_tokens: int = typer.Option(256, help="Longest answer in tokens."),
    few_shot: int = typer.Option(0, help="Few-shot examples to put in the prompt."),
    few_shot_from: Path | None = typer.Option(None, help="Training file to take them from."),
    constrained: str = typer.Option(
        "off",
        help='Constrained decoding: "off", "schema" (valid JSON, configured labels) or '
        '"grounded" (also every entity copied from the text; not with --base-url).',
    ),
    quantize: str = typer.Option(
        "none",
        help='"int8" (experimental): int8 Linear weights for cheaper CPU decoding steps; '
        "SmolLM2-135M lost most of its recall with it (README).",
    ),
    max_chunk_tokens: int | None = typer.Option(
        None,
        help="Prompt at most this many tokens of text at once (sentence-aligned pieces); "
        "default: the adapter's (finetune --max-chunk-tokens), else as much as the model's "
        "context allows.",
    ),
    empty_answer_threshold: float | None = typer.Option(
        None,
        help="Answer [] only when the model is at least this sure of it (see `calibrate`).",
    ),
) -> None:
    """Wrap a base model (+ LoRA adapter) as a `medllm_ner` pipeline and save it (`nlp.to_disk`)."""
    from spacy_medllm.generators.hf.automaton import CONSTRAINED_MODES
    from spacy_medllm.generators.hf.loading import QUANTIZE_MODES
    from spacy_medllm.pipeline.assemble import build_pipeline

    if constrained not in CONSTRAINED_MODES:
        raise typer.BadParameter(
            f"--constrained must be one of {', '.join(CONSTRAINED_MODES)}, not {constrained!r}"
        )
    if quantize not in QUANTIZE_MODES:
        raise typer.BadParameter(
            f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, not {quantize!r}"
        )
    nlp = build_pipeline(
        model,
        adapter,
        label,
        lang,
        batch_size,
        max_new_tokens,
        few_shot=few_shot,
        few_shot_from=few_shot_from,
        constrained=constrained,
        quantize=quantize,
        max_chunk_tokens=max_chunk_tokens,
        empty_answer_threshold=empty_answer_threshold,
        base_url=base_url,
        api_key_env=api_key_env,
        max_concurrency=max_concurrency,
    )
    nlp.to_disk(output)
    component = nlp.get_pipe("medllm_ner")
    where = f"served by {base_url}" if base_url else f"adapter saved inside: {bool(adapter)}"
    typer.echo(f"Saved {output} with labels {list(component.labels)}; {where}")


@app.command()
def extract(
    pipeline: Path | None = typer.Option(
        None, help="A saved pipeline (spacy.load); default: build one."
    ),
    input: Path | None = typer.Option(
        None, "--input", "-i", help=".jsonl, text file or - for stdin."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="JSONL output; default stdout."
    ),
    model: str = typer.Option(
        "smollm2-135m-instruct", help="Base model when no pipeline is given."
    ),
    adapter: str | None = typer.Option(None, help="Adapter when no pipeline is given."),
    base_url: str | None = typer.Option(None, help="Use an OpenAI-compatible server at this URL."),
    label: list[str] | None = typer.Option(None, help="Labels (repeat) when no pipeline is given."),
    save_io: bool = typer.Option(False, help="Include prompts and raw responses in the output."),
) -> None:
    """Extract entities from texts to JSONL: spans with offsets, and what the model said unused."""
    import spacy

    from spacy_medllm.pipeline.assemble import build_pipeline

    if pipeline is not None:
        # A saved pipeline brings its own model, adapter, server and labels: refuse options that
        # would be silently ignored.
        ignored = [
            option
            for option, given in (
                ("--label", bool(label)),
                ("--adapter", adapter is not None),
                ("--base-url", base_url is not None),
                ("--model", model != "smollm2-135m-instruct"),
            )
            if given
        ]
        if ignored:
            raise typer.BadParameter(
                f"{', '.join(ignored)} cannot apply with --pipeline: a saved pipeline keeps its "
                "own labels, model, adapter and server. Leave them out, or build a pipeline "
                "with them instead of --pipeline."
            )
        nlp = spacy.load(pipeline)
    else:
        nlp = build_pipeline(model, adapter, label, base_url=base_url)
    names = [name for name, pipe in nlp.pipeline if pipe.__class__.__name__ == "MedLLMNER"]
    for name in names:
        nlp.get_pipe(name).save_io = save_io
    records = list(_read_texts(input))
    sink = output.open("w", encoding="utf8") if output else sys.stdout
    from tqdm import tqdm

    try:
        docs = nlp.pipe(r["text"] for r in records)
        for record, doc in tqdm(
            zip(records, docs, strict=False), total=len(records), disable=output is None, unit="doc"
        ):
            result = {k: v for k, v in record.items() if k != "text"}
            result["text"] = doc.text
            result["entities"] = [
                {"start": e.start_char, "end": e.end_char, "label": e.label_, "text": e.text}
                for e in doc.ents
            ]
            result["spans"] = {
                key: [
                    {"start": s.start_char, "end": s.end_char, "label": s.label_, "text": s.text}
                    for s in group
                ]
                for key, group in doc.spans.items()
            }
            result["medllm"] = doc._.medllm
            sink.write(json.dumps(result, ensure_ascii=False) + "\n")
    finally:
        if output:
            sink.close()


@app.command()
def info(pipeline: Path = typer.Argument(..., help="A saved pipeline folder.")) -> None:
    """Show a saved pipeline's medllm_ner components: labels, base model, adapter, settings."""
    import spacy

    nlp = spacy.load(pipeline)
    for name, pipe in nlp.pipeline:
        if pipe.__class__.__name__ != "MedLLMNER":
            typer.echo(f"{name}: {pipe.__class__.__name__}")
            continue
        typer.echo(f"{name}: medllm_ner")
        typer.echo(f"  labels: {', '.join(pipe.labels)}")
        typer.echo(f"  output: {pipe.output} (spans_key={pipe.spans_key})")
        typer.echo(f"  generator: {json.dumps(pipe.generator.describe(), ensure_ascii=False)}")
        typer.echo(f"  prompt template: {pipe.prompt_builder.fingerprint}")
