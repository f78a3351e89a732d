"""`batch`: run a saved pipeline over JSONL or Parquet shards on Ray Data, resumable.

A thin command over `spacy_medllm.scale.batch.run_batch`; Ray (the `scale` extra) is imported only
when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import typer

from spacy_medllm.cli._app import app


@app.command(no_args_is_help=True)
def batch(
    pipeline: str = typer.Argument(
        ..., help="A saved pipeline folder or an installed pipeline package (spacy.load)."
    ),
    input: str = typer.Argument(
        ...,
        help="JSONL or Parquet input: a file, a folder (searched recursively) or a quoted glob. "
        'JSONL: one {"id": ..., "text": ...} object per line.',
    ),
    output: Path = typer.Argument(
        ...,
        help="Output folder: shards/*.parquet, errors.jsonl, summary.json. Rerun the same "
        "command to resume after an interruption.",
    ),
    address: str | None = typer.Option(
        None,
        help="Join a running Ray cluster (e.g. 'auto' on a cluster node, HOST:6379, "
        "ray://HOST:10001) [default: start a local Ray on this machine].",
        show_default=False,
    ),
    actors: int = typer.Option(1, help="Copies of the pipeline (Ray actors); each loads it once."),
    cpus_per_actor: float = typer.Option(1.0, help="CPUs Ray reserves for each actor."),
    num_gpus: float = typer.Option(
        0.0, help="GPUs per actor (an in-process transformers pipeline on GPU nodes)."
    ),
    num_cpus: int | None = typer.Option(
        None,
        help="Local Ray only: CPUs it may use [default: all of this machine's].",
        show_default=False,
    ),
    batch_size: int = typer.Option(
        64,
        help="Documents per actor call (and nlp.pipe batch): a few hundred for a fast pipeline "
        "(a CNN student), 8-64 for an LLM (docs/batch.md).",
    ),
    shard_size: int = typer.Option(
        1000, help="Input lines per output shard: the unit written exactly once."
    ),
    text_field: str = typer.Option("text", help="The field (column) holding the text."),
    id_field: str = typer.Option(
        "id", help="The field holding the document id; '' or a missing field: file:line."
    ),
    max_chars: int = typer.Option(
        1_000_000, help="Longer texts go to the errors file instead of the pipeline."
    ),
    text: bool = typer.Option(True, "--text/--no-text", help="Keep each text in the shards."),
    docbin: bool = typer.Option(False, "--docbin", help="Also write DocBin shards (docbin/)."),
    endpoint: list[str] | None = typer.Option(
        None,
        help="An OpenAI-compatible server (http://HOST:PORT/v1) for a served pipeline "
        "(assemble --base-url); repeat for several: each actor sends its batches to them in "
        "turn [default: the pipeline's own base_url].",
        show_default=False,
    ),
    max_retries: int = typer.Option(
        3, help="Retries of a batch whose actor died (then the run stops; rerun to resume)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress."),
) -> None:
    """Extract entities from many documents with a saved pipeline on Ray Data (local or cluster).

    Each document comes out once: in shards/ with its entities (offsets, labels, scores) and what
    medllm_ner rejected, or in errors.jsonl with the reason (not JSON, no text, empty, too long).
    """
    from spacy_medllm.scale.batch import BatchRunError, BatchSettings, run_batch

    settings = BatchSettings(
        pipeline=pipeline,
        input=input,
        output=str(output),
        address=address,
        actors=actors,
        cpus_per_actor=cpus_per_actor,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        batch_size=batch_size,
        part_size=shard_size,
        text_field=text_field,
        id_field=id_field or None,
        max_chars=max_chars,
        keep_text=text,
        docbin=docbin,
        max_retries=max_retries,
        endpoints=tuple(endpoint or ()),
        progress=progress,
    )
    try:
        summary = run_batch(settings)
    except ImportError as error:  # no Ray or pyarrow: the `scale` extra
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    except BatchRunError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    totals, run, check = summary["totals"], summary["run"], summary["check"]
    rate = run.get("words_per_second")
    typer.echo(
        f"{totals['documents']:,} documents and {totals['errors']:,} errors in "
        f"{check['parts_done']} shard(s) under {output}; this run: {run['documents']:,} "
        f"documents" + (f", {rate:,.0f} words/s" if rate else "") + f"; lost {check['lost']}, "
        f"duplicated {check['duplicated']}; summary: {output / 'summary.json'}"
    )
    if check["lost"] or check["duplicated"] or check["stray"]:
        typer.echo("error: the exactly-once check failed (see summary.json)", err=True)
        raise typer.Exit(1)
