"""`evaluate` (score pipelines), `calibrate` (the empty-answer threshold), `combine` (results side
by side), `report` (one page)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from spacy_medllm.cli._app import app, csv, name_value_pairs


@app.command(no_args_is_help=True)
def evaluate(
    pipeline: list[str] = typer.Option(
        ..., metavar="NAME=PATH", help="A pipeline to score (repeat): spaCy folder or package."
    ),
    output: Path = typer.Option(..., help="Folder for the report files."),
    corpus: str | None = typer.Option(None, help="A registered corpus (`corpus list`)."),
    gold: Path | None = typer.Option(
        None,
        help="Or a gold file or folder of your own: JSONL (character or token spans), BRAT, "
        "CoNLL, IOB or a DocBin (see `convert`).",
    ),
    gold_format: str | None = typer.Option(
        None, help="Format of --gold: jsonl, brat, conll, iob, spacy [default: guessed]."
    ),
    discontinuous: str = typer.Option(
        "cover", help="Discontinuous gold mentions in --gold: cover, fragments or drop."
    ),
    split: str = typer.Option("test", help="The corpus split to score on."),
    path: Path | None = typer.Option(None, help="The corpus folder (or file)."),
    limit: int | None = typer.Option(None, help="The first N documents only."),
    labels: str | None = typer.Option(None, help="Comma-separated labels to score."),
    label_map: list[str] | None = typer.Option(
        None, metavar="PREDICTED=GOLD", help="Score a predicted label as a gold one (repeat)."
    ),
    spans_key: str | None = typer.Option(None, help="Read doc.spans[KEY] instead of doc.ents."),
    batch_size: int | None = typer.Option(None, help="nlp.pipe batch size."),
    trained_on: list[str] | None = typer.Option(
        None,
        metavar="CORPUS[:SPLIT]",
        help="What the pipelines learned from (repeat): a contaminated test split is refused.",
    ),
    bertscore: bool = typer.Option(False, help="Also BERTScore F1 of the entity strings."),
    bertscore_model: Path | None = typer.Option(None, help="A local encoder folder for it."),
    stem: str | None = typer.Option(None, help="Output file stem [default: CORPUS-SPLIT]."),
    plot: bool = typer.Option(True, help="Write the per-label F1 plot."),
) -> None:
    """Score spaCy pipelines on a registered corpus or on a gold file: strict (seqeval) and
    overlap F1 per label, texts answered empty, words/s, peak memory; JSON, Markdown and PNG."""
    from spacy_medllm.evaluation.evaluate import evaluate_corpus, evaluate_examples
    from spacy_medllm.evaluation.tables import markdown_report

    if (corpus is None) == (gold is None):
        raise typer.BadParameter("give either --corpus NAME or --gold FILE")
    pipelines = name_value_pairs(pipeline, "--pipeline", "NAME=PATH")
    options = {
        "label_map": dict(name_value_pairs(label_map, "--label-map", "PREDICTED=GOLD")),
        "trained_on": list(trained_on or ()),
        "stem": stem,
        "plot": plot,
        "spans_key": spans_key,
        "batch_size": batch_size,
        "bertscore": bertscore,
        "bertscore_model": bertscore_model,
        "limit": limit,
    }
    if corpus is not None:
        report = evaluate_corpus(
            pipelines, corpus, split, output, path=path, labels=csv(labels), **options
        )
    else:
        examples = _gold_examples(
            None, gold, gold_format, split, path, labels, limit, discontinuous
        )
        source = {"corpus": gold.stem if gold.is_file() else gold.name, "split": "gold"}
        source["corpus_path"] = str(gold)
        options["stem"] = stem or source["corpus"]
        report = evaluate_examples(
            pipelines, examples, output, source=source, labels=csv(labels), **options
        )
    sys.stdout.write(markdown_report(report))


@app.command(no_args_is_help=True)
def calibrate(
    pipeline: Path = typer.Argument(..., help="A spaCy pipeline folder with medllm_ner."),
    corpus: str | None = typer.Option(None, help="A registered corpus (`corpus list`)."),
    gold: Path | None = typer.Option(None, help="Or a gold file or folder (see `evaluate`)."),
    gold_format: str | None = typer.Option(None, help="Format of --gold [default: guessed]."),
    split: str = typer.Option("dev", help="The corpus split (never the test split you report)."),
    path: Path | None = typer.Option(None, help="The corpus folder (or file)."),
    limit: int | None = typer.Option(None, help="The first N documents only."),
    labels: str | None = typer.Option(None, help="Comma-separated labels to score."),
    thresholds: str | None = typer.Option(
        None,
        help="Candidates, mildest first (none: no veto; the first wins a tie) "
        "[default: none, 0.05 to 0.95 by 0.05, 0.97, 0.99].",
    ),
    output: Path = typer.Option(..., help="JSON report to write (Markdown beside it)."),
    write: Path | None = typer.Option(
        None, help="Save the pipeline with the best threshold to this folder."
    ),
) -> None:
    """Choose the empty-answer threshold on held-out gold texts: two runs (greedy, recording
    each piece's P([]); then with `[]` vetoed on the pieces that answered it) give the documents
    of every candidate; the best strict F1 is verified by a third run. For adapters that answer
    `[]` too often or too seldom."""
    from spacy_medllm.evaluation.calibrate import (
        DEFAULT_THRESHOLDS,
        apply_threshold,
        calibrate_empty_threshold,
        calibration_markdown,
        write_calibration,
    )
    from spacy_medllm.evaluation.evaluate import load_pipeline

    if (corpus is None) == (gold is None):
        raise typer.BadParameter("give either --corpus NAME or --gold FILE")
    if corpus is not None and split == "test":
        raise typer.BadParameter("calibrate on a dev split: the test split is for the report")
    try:
        candidates = (
            list(DEFAULT_THRESHOLDS)
            if thresholds is None
            else [None if t.strip().lower() == "none" else float(t) for t in csv(thresholds)]
        )
    except ValueError as error:
        raise typer.BadParameter(f"--thresholds: {error}") from error
    examples = _gold_examples(corpus, gold, gold_format, split, path, labels, limit)
    nlp = load_pipeline(pipeline)
    result = calibrate_empty_threshold(nlp, examples, candidates, labels=csv(labels))
    result["pipeline"] = str(pipeline)
    result["data"] = str(gold) if gold is not None else f"{corpus}:{split}"
    write_calibration(result, output)
    sys.stdout.write(calibration_markdown(result))
    if write is not None:
        apply_threshold(nlp, result["best"])
        nlp.to_disk(write)
        typer.echo(f"Wrote {write} (empty_answer_threshold = {result['best']})")


def _gold_examples(
    corpus: str | None,
    gold: Path | None,
    gold_format: str | None,
    split: str,
    path: Path | None,
    labels: str | None,
    limit: int | None,
    discontinuous: str = "cover",
) -> list:
    """The examples of a registered corpus split, or of a gold file of one's own."""
    if corpus is not None:
        from spacy_medllm.corpora.registry import load_corpus

        return load_corpus(corpus, split, path, labels=csv(labels), limit=limit)
    from spacy_medllm.corpora.formats import load_annotations

    examples = load_annotations(gold, gold_format, discontinuous=discontinuous, labels=csv(labels))
    return examples[: limit or None]


@app.command(no_args_is_help=True)
def combine(
    results: list[Path] = typer.Argument(
        ..., help="Result files (<stem>.json or <stem>.summary.json)."
    ),
    output: Path | None = typer.Option(None, help="Markdown file to write."),
    plot: Path | None = typer.Option(None, help="F1 against words/s PNG to write."),
) -> None:
    """Put the systems of several evaluation results into one table (and plot)."""
    from spacy_medllm.evaluation.plots import plot_f1_vs_speed
    from spacy_medllm.evaluation.tables import combine_results

    table = combine_results(results)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(table + "\n", "utf8")
    if plot:
        plot_f1_vs_speed(results, plot)
    sys.stdout.write(table + "\n")


@app.command()
def report(
    reports: Path = typer.Argument(Path("training/reports"), help="The run's reports folder."),
    output: Path | None = typer.Option(None, help="Where to write [default: the reports folder]."),
    samples: int = typer.Option(4, help="displaCy documents per corpus (0: none)."),
) -> None:
    """Gather a run's results files into report.html and report.md."""
    from spacy_medllm.evaluation.report import build_report

    paths = build_report(reports, output, samples=samples)
    typer.echo(f"Wrote {paths['html']} and {paths['md']}")
