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


@app.command("convert", no_args_is_help=True)
def convert_files(
    input: Path | None = typer.Argument(
        None, help="Annotated file or folder to split into train/dev/test by document id."
    ),
    output: Path = typer.Option(..., help="Folder for {split}.jsonl, {split}.spacy, report.*"),
    train: Path | None = typer.Option(None, help="Or: the training split as it is."),
    dev: Path | None = typer.Option(None, help="The dev split as it is."),
    test: Path | None = typer.Option(None, help="The test split as it is."),
    format: str | None = typer.Option(
        None, help="jsonl, brat, conll, iob or spacy [default: guessed from the path]."
    ),
    discontinuous: str = typer.Option(
        "cover",
        help="A discontinuous mention becomes its covering span (cover), one span per fragment "
        "(fragments), or is dropped (drop).",
    ),
    labels: str | None = typer.Option(None, help="Comma-separated labels to keep [default: all]."),
    lang: str = typer.Option("en", help="spacy.blank language of the DocBins' tokens."),
    split: str = typer.Option("0.8,0.1,0.1", help="train,dev,test shares for a single INPUT."),
) -> None:
    """Your annotations (JSONL, BRAT, CoNLL, IOB, DocBin) as training JSONL and DocBins, with a
    report: texts and mentions per label, empty texts, discontinuous and overlapping mentions
    and what was done with them, repeated texts, leaks between splits."""
    from spacy_medllm.corpora.formats import convert_annotations

    given = {name: path for name, path in (("train", train), ("dev", dev), ("test", test)) if path}
    if (input is None) == (not given):
        raise typer.BadParameter("give one INPUT to split, or --train/--dev/--test files")
    try:
        fractions = [float(x) for x in split.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--split takes three shares, got {split!r}") from None
    result = convert_annotations(
        {"all": input} if input is not None else given,
        output,
        format=format,
        discontinuous=discontinuous,
        labels=csv(labels),
        lang=lang,
        fractions=fractions,
    )
    typer.echo((Path(output) / "report.md").read_text(encoding="utf8"))
    if not any(s["n_texts"] for s in result["splits"].values()):
        raise typer.Exit(1)
