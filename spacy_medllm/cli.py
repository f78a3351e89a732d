"""The `spacy-medllm` command line (typer): extract, assemble, inspect; project.yml calls these."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from spacy_medllm.core.adapter_settings import PROMPT_TEMPLATE_FILE, load_prompt_settings

app = typer.Typer(
    name="spacy-medllm",
    help="Fine-tuned generative LLMs as a spaCy component for medical entity extraction.",
    no_args_is_help=True,
    add_completion=False,
)


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


def few_shot_examples(path: Path, n: int, labels: list[str] | None = None) -> list[dict[str, Any]]:
    """`n` few-shot examples from a training file: the shortest texts with an entity of each label.

    Deterministic (ties broken by text) and short, so that the prompt stays within a small model's
    context. Examples come in the PromptTemplate format `{"text", "entities": [{"text", "label"}]}`.
    """
    from spacy_medllm.core.examples import answer_text, deduplicate, read_examples
    from spacy_medllm.core.prompts import PromptBuilder

    examples = deduplicate(read_examples(path))
    candidates = []
    for example in examples:
        entities = json.loads(answer_text(PromptBuilder, example))
        if labels:
            entities = [e for e in entities if e["label"] in labels]
        if not entities or (labels and {e["label"] for e in entities} != set(labels)):
            continue
        candidates.append({"text": example["text"], "entities": entities})
    candidates.sort(key=lambda e: (len(e["text"]), e["text"]))
    if len(candidates) < n:
        raise typer.BadParameter(f"{path} has only {len(candidates)} usable few-shot examples")
    return candidates[:n]


def build_pipeline(
    model: str = "smollm2-135m-instruct",
    adapter: str | None = None,
    labels: list[str] | None = None,
    lang: str = "en",
    batch_size: int = 8,
    max_new_tokens: int = 256,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    few_shot: int = 0,
    few_shot_from: Path | None = None,
    constrained: str = "off",
    quantize: str = "none",
    jump_forward: bool = True,
    draft_tokens: int = 4,
    max_chunk_tokens: int | None = None,
):
    """A blank pipeline with one `medllm_ner`; labels and prompt come from the adapter's folder.

    A fine-tuning run writes `prompt_template.json` inside `<output>/adapter/`; when `adapter`
    points to the run's output folder or to its `adapter/` folder, the component is configured
    exactly as the model was trained (labels, prompt, and the `max_chunk_tokens` of an adapter
    trained on pieces, unless `max_chunk_tokens` is given here). Otherwise the default prompt and
    the given labels are used.
    """
    import spacy

    config: dict[str, Any] = {}
    if base_url and constrained != "off":
        raise typer.BadParameter(
            "--constrained needs the transformers backend (medllm.HFGenerator.v1); with --base-url "
            "use the serving engine's own structured output instead"
        )
    if base_url and quantize != "none":
        raise typer.BadParameter(
            "--quantize needs the transformers backend (medllm.HFGenerator.v1); with --base-url "
            "the serving engine chooses the weights (a quantized GGUF for llama.cpp's server)"
        )
    if base_url:
        config["generator"] = {
            "@misc": "medllm.OpenAIGenerator.v1",
            "model": model,
            "base_url": base_url,
            "api_key_env": api_key_env,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
        }
    else:
        adapter_dir = None
        if adapter:
            adapter_path = Path(adapter)
            adapter_dir = (
                adapter_path / "adapter" if (adapter_path / "adapter").is_dir() else adapter_path
            )
            if (adapter_dir / PROMPT_TEMPLATE_FILE).exists():
                trained = load_prompt_settings(adapter_dir)
                config["labels"] = trained["labels"]
                config["label_definitions"] = trained["label_definitions"]
                if trained["max_chunk_tokens"] is not None:
                    # trained on pieces: read documents in the same pieces
                    config["max_chunk_tokens"] = trained["max_chunk_tokens"]
                template = trained["template"].to_dict()
                config["prompt"] = {
                    "@misc": "medllm.PromptTemplate.v1",
                    "instruction": template["instruction"],
                    "examples": list(template.get("examples", [])),
                }
        config["generator"] = {
            "@misc": "medllm.HFGenerator.v1",
            "model": model,
            "adapter": str(adapter_dir) if adapter_dir else None,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "constrained": constrained,
            "quantize": quantize,
            "jump_forward": jump_forward,
            "draft_tokens": draft_tokens,
        }
    if labels:
        config["labels"] = labels
    if max_chunk_tokens is not None:
        config["max_chunk_tokens"] = max_chunk_tokens
    if few_shot:
        if few_shot_from is None:
            raise typer.BadParameter("--few-shot needs --few-shot-from (a training data file)")
        shots = few_shot_examples(few_shot_from, few_shot, config.get("labels"))
        prompt = config.setdefault("prompt", {"@misc": "medllm.PromptTemplate.v1"})
        prompt["examples"] = list(prompt.get("examples", [])) + shots
    nlp = spacy.blank(lang)
    nlp.add_pipe("medllm_ner", config=config)
    return nlp


@app.command()
def assemble(
    output: Path = typer.Argument(..., help="Folder to write the spaCy pipeline to."),
    adapter: str | None = typer.Option(
        None, help="Fine-tuning output folder or its adapter/ folder."
    ),
    model: str = typer.Option(
        "smollm2-135m-instruct", help="Base model: packaged alias, folder or hub id."
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
        '"grounded" (also every entity copied from the text).',
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
) -> None:
    """Wrap a base model (+ LoRA adapter) as a `medllm_ner` pipeline and save it (`nlp.to_disk`)."""
    from spacy_medllm.generators.hf.generator import CONSTRAINED_MODES
    from spacy_medllm.generators.hf.loading import QUANTIZE_MODES

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
    )
    nlp.to_disk(output)
    component = nlp.get_pipe("medllm_ner")
    typer.echo(
        f"Saved {output} with labels {list(component.labels)}; "
        f"adapter saved inside: {bool(adapter)}"
    )


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

    if pipeline is not None:
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


_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def finetune(ctx: typer.Context) -> None:
    """Fine-tune a LoRA adapter (all options of `python -m spacy_medllm.training.finetune --help`)."""
    from spacy_medllm.training.cli_args import main as finetune_main

    raise typer.Exit(finetune_main(ctx.args))


@app.command("evaluate", context_settings=_PASS_THROUGH, add_help_option=False)
def evaluate(ctx: typer.Context) -> None:
    """Score spaCy pipelines on a corpus: seqeval, spaCy scorer, overlap F1 (`--help`: options)."""
    from spacy_medllm.evaluation.cli_args import main as evaluate_main

    raise typer.Exit(evaluate_main(ctx.args))


@app.command("report", context_settings=_PASS_THROUGH, add_help_option=False)
def report(ctx: typer.Context) -> None:
    """Gather a run's results into report.html and report.md (`--help` for options)."""
    from spacy_medllm.evaluation.report import main as report_main

    raise typer.Exit(report_main(ctx.args))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
