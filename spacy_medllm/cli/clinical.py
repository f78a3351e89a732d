"""Commands over processed Docs: `index` (build a search index), `search`, `summarize`.

Docs come from DocBins (`--docbin`), from texts run through a saved pipeline (`--input` with
`--pipeline`), or from JSONL records that carry their entities (`--input` alone:
`{"id", "text", "entities": [{"start", "end", "label", "status"?}]}`). `--context` adds
medspaCy's ConText ("medllm" rules) so entities get a status.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from spacy_medllm.cli._app import app, echo_json


def _pipeline(pipeline: Path | None, lang: str, context: bool) -> Any:
    import spacy

    from spacy_medllm.clinical import add_context

    nlp = spacy.load(pipeline) if pipeline is not None else spacy.blank(lang)
    names = {nlp.get_pipe_meta(name).factory for name in nlp.pipe_names}
    if context and not names & {"medllm_context", "medspacy_context"}:
        add_context(nlp)
    return nlp


def _docs(
    nlp: Any, docbin: list[Path] | None, input: Path | None, pipeline: Path | None
) -> Iterator[Any]:
    """The Docs to work on, in order: each DocBin's, then the input's."""
    from spacy.tokens import DocBin

    from spacy_medllm.cli.pipeline import _read_texts
    from spacy_medllm.clinical.entities import docs_from_records

    if not docbin and input is None:
        raise typer.BadParameter("give --docbin and/or --input")
    has_context = any(
        nlp.get_pipe_meta(n).factory in ("medllm_context", "medspacy_context")
        for n in nlp.pipe_names
    )
    for path in docbin or ():
        for doc in DocBin().from_disk(path).get_docs(nlp.vocab):
            if has_context:
                for name, component in nlp.pipeline:
                    if nlp.get_pipe_meta(name).factory in (
                        "medllm_context",
                        "medspacy_context",
                        "sentencizer",
                    ):
                        doc = component(doc)
            yield doc
    if input is None:
        return
    records = list(_read_texts(input))
    if pipeline is not None:
        for doc, record in nlp.pipe(((r["text"], r) for r in records), as_tuples=True):
            doc.user_data["id"] = str(record.get("id") or "") or doc.user_data.get("id", "")
            yield doc
    else:
        yield from docs_from_records(nlp, records, run_pipeline=has_context)


_DOCBIN = typer.Option(None, "--docbin", help=".spacy DocBin of processed Docs (repeat).")
_INPUT = typer.Option(
    None, "--input", "-i", help="JSONL/text: texts (with --pipeline) or records with entities."
)
_PIPELINE = typer.Option(None, help="A saved pipeline to run on --input texts (spacy.load).")
_CONTEXT = typer.Option(
    True,
    "--context/--no-context",
    help="Add ConText (medllm rules) if the pipeline has none; --no-context keeps the statuses "
    "the records or Docs carry.",
)
_LANG = typer.Option("en", help="Language of the blank pipeline when no --pipeline is given.")
_SPANS_KEY = typer.Option(None, help="Read entities from doc.spans[KEY] instead of doc.ents.")


@app.command()
def index(
    database: Path = typer.Argument(..., help="SQLite file to write (created when missing)."),
    docbin: list[Path] | None = _DOCBIN,
    input: Path | None = _INPUT,
    pipeline: Path | None = _PIPELINE,
    context: bool = _CONTEXT,
    lang: str = _LANG,
    spans_key: str | None = _SPANS_KEY,
    overwrite: bool = typer.Option(False, help="Replace the file instead of adding to it."),
) -> None:
    """Index processed Docs (text, entities with label, normalised text, status) for `search`."""
    import time

    from spacy_medllm.clinical.search import ClinicalIndex

    if overwrite and database.exists():
        database.unlink()
    nlp = _pipeline(pipeline, lang, context)
    began = time.perf_counter()
    with ClinicalIndex(database) as store:
        added = store.add(_docs(nlp, docbin, input, pipeline), spans_key=spans_key)
        stats = store.stats()
    seconds = time.perf_counter() - began
    typer.echo(
        f"Indexed {added} documents in {seconds:.1f} s: {stats['documents']} documents, "
        f"{stats['entities']} entities in {database}"
    )


@app.command()
def search(
    database: Path = typer.Argument(..., help="An index written by `index`."),
    query: str = typer.Argument(
        ..., help='e.g. label=ADVERSE_EVENT drug="Lexapro" status=present (docs/clinical.md)'
    ),
    limit: int = typer.Option(20, help="Documents to show."),
    offset: int = typer.Option(0, help="Documents to skip."),
    html: Path | None = typer.Option(None, help="Write a displaCy page of the hits here."),
    all_entities: bool = typer.Option(False, help="In --html, show every entity of a hit."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Find documents: entity label, status, text, other entities, words (docs/clinical.md)."""
    from spacy_medllm.clinical.search import ClinicalIndex

    with ClinicalIndex(database, create=False) as store:
        results = store.search(query, limit=limit, offset=offset)
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(results.to_html(all_entities=all_entities), encoding="utf8")
    if as_json:
        echo_json(results.to_dict())
        return
    typer.echo(f"{results.total} documents ({results.elapsed_ms:.1f} ms)")
    for hit in results.hits:
        found = "; ".join(
            f"{m['text']} [{m['label']}{'' if m['status'] == 'present' else ', ' + m['status']}]"
            for m in hit.matches
        )
        typer.echo(f"{hit.key}\t{found}")


@app.command()
def summarize(
    docbin: list[Path] | None = _DOCBIN,
    input: Path | None = _INPUT,
    pipeline: Path | None = _PIPELINE,
    context: bool = _CONTEXT,
    lang: str = _LANG,
    spans_key: str | None = _SPANS_KEY,
    output: Path | None = typer.Option(None, "--output", "-o", help="JSONL; default stdout."),
    model: str | None = typer.Option(
        None,
        help="Write free-text summaries with this model (packaged alias, folder or hub id; with "
        "--base-url the served name); default: the template summary from the items.",
    ),
    base_url: str | None = typer.Option(None, help="An OpenAI-compatible server for --model."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="With --base-url: the key's variable."),
    checker: Path | None = typer.Option(
        None,
        help="With --model: a pipeline whose entities are the drugs and events a summary names "
        "(default: --pipeline).",
    ),
    on_ungrounded: str = typer.Option(
        "remove", help='"remove" sentences naming non-entities, or "reject" the summary.'
    ),
    html: Path | None = typer.Option(None, help="Write a displaCy page of the items here."),
) -> None:
    """Structured summary per document (items linked to spans) and a free-text summary."""
    import spacy

    from spacy_medllm.clinical.render import render_spans
    from spacy_medllm.clinical.summary import (
        ON_UNGROUNDED,
        SummaryResult,
        llm_summaries,
        structured_summary,
        template_summary,
    )

    if on_ungrounded not in ON_UNGROUNDED:
        raise typer.BadParameter(f"--on-ungrounded must be one of {', '.join(ON_UNGROUNDED)}")
    nlp = _pipeline(pipeline, lang, context)
    docs = list(_docs(nlp, docbin, input, pipeline))
    if model is not None:
        if checker is None and pipeline is None:
            raise typer.BadParameter("--model needs --checker or --pipeline to check its names")
        generator = _generator(model, base_url, api_key_env)
        detector = spacy.load(checker if checker is not None else pipeline)
        results = llm_summaries(docs, generator, detector, on_ungrounded, spans_key)
    else:
        results = [
            SummaryResult(template_summary(structured_summary(d, spans_key)), "template")
            for d in docs
        ]
    sink = output.open("w", encoding="utf8") if output else sys.stdout
    pages = []
    try:
        for doc, result in zip(docs, results, strict=True):
            structured = structured_summary(doc, spans_key)
            record = {
                "id": doc.user_data.get("id", ""),
                "structured": structured,
                "summary": result.to_dict(),
            }
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            spans = [
                {"start": s, "end": e, "label": item["label"], "status": item["status"]}
                for by_status in structured.values()
                for items in by_status.values()
                for item in items
                for s, e in item["spans"]
            ]
            pages.append((f"{record['id']}: {result.text}", doc.text, spans))
    finally:
        if output:
            sink.close()
    if html is not None:
        html.write_text(render_spans(pages, heading="Summaries"), encoding="utf8")


def _generator(model: str, base_url: str | None, api_key_env: str) -> Any:
    """A plain-text generator: no adapter, no JSON constraint, no answer sizing."""
    from spacy_medllm.generators.registry import make_hf_generator, make_openai_generator

    if base_url:
        return make_openai_generator(
            model=model, base_url=base_url, api_key_env=api_key_env, max_new_tokens=160
        )
    return make_hf_generator(
        model=model, max_new_tokens=160, stop_at_json_end=False, sized_answers=False
    )
