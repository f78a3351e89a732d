"""`corpus list|stats|convert`: the registered public corpora."""

from __future__ import annotations

from pathlib import Path

import typer

from spacy_medllm.cli._app import app, csv, echo_json

corpus_app = typer.Typer(
    help="The registered public corpora: list, stats, convert.", no_args_is_help=True
)
app.add_typer(corpus_app, name="corpus")


def _known(name: str) -> str:
    from spacy_medllm.corpora.registry import CORPORA

    if name not in CORPORA:
        raise typer.BadParameter(f"unknown corpus {name!r}; registered: {', '.join(CORPORA)}")
    return name


@corpus_app.command("list")
def list_corpora() -> None:
    """The registered corpora, their splits and labels."""
    from spacy_medllm.corpora.registry import CORPORA

    for name, info in CORPORA.items():
        typer.echo(f"{name}: splits {', '.join(info.splits)}; labels {info.labels}")


@corpus_app.command()
def stats(
    name: str = typer.Argument(..., callback=_known, help="A registered corpus."),
    path: Path | None = typer.Option(None, help="The corpus folder (or file)."),
    labels: str | None = typer.Option(None, help="Comma-separated labels to keep."),
) -> None:
    """What was read, dropped and resolved per split."""
    from spacy_medllm.corpora.registry import corpus_stats

    echo_json(corpus_stats(name, path, labels=csv(labels)))


@corpus_app.command()
def convert(
    name: str = typer.Argument(..., callback=_known, help="A registered corpus."),
    output: Path = typer.Option(..., help="Folder for {split}.spacy, {split}.jsonl, stats.json."),
    path: Path | None = typer.Option(None, help="The corpus folder (or file)."),
    labels: str | None = typer.Option(None, help="Comma-separated labels to keep."),
    lang: str | None = typer.Option(None, help="spacy.blank language [default: the corpus's]."),
) -> None:
    """Write a corpus's splits as DocBins (for `spacy train`) and JSONL (for `finetune`)."""
    from spacy_medllm.corpora.docs import convert_corpus

    echo_json(convert_corpus(name, output, path, labels=csv(labels), lang=lang))
