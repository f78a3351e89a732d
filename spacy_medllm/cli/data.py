"""Data commands: `scrape` (drug pages to facts), `synth offline|llm|split` (synthetic texts),
`label` and `annotator-report` (LLM and dictionary labels of the texts, scored on their gold)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from spacy_medllm.cli._app import app, csv, echo_json, name_value_pairs

synth_app = typer.Typer(help="Synthetic medical texts from drug facts.", no_args_is_help=True)
app.add_typer(synth_app, name="synth")


@app.command(no_args_is_help=True)
def scrape(
    sources: list[str] = typer.Argument(..., help="Saved HTML files, folders of them, or URLs."),
    output: Path = typer.Option(..., help="JSONL file of DrugFacts."),
    report: Path | None = typer.Option(None, help="JSON file with problems and skipped pages."),
    cache_dir: Path = typer.Option(Path(".cache/drug_pages"), help="The fetcher's page cache."),
    min_interval: float = typer.Option(1.0, help="Seconds between requests to one host."),
    user_agent: str | None = typer.Option(None, help="User-Agent header [default: the package's]."),
) -> None:
    """Drug information pages to structured facts (beautifulsoup4 + html2text)."""
    from spacy_medllm.data.scrape import DEFAULT_USER_AGENT, Fetcher, write_facts
    from spacy_medllm.data.scrape import scrape as run_scrape

    agent = user_agent or DEFAULT_USER_AGENT
    with Fetcher(cache_dir, user_agent=agent, min_interval=min_interval) as fetcher:
        result = run_scrape(sources, fetcher=fetcher)
    write_facts(result.facts, output)
    summary = result.summary()
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(summary, indent=2), encoding="utf8")
    typer.echo(
        f"{summary['n_facts']} drugs from {summary['n_sources']} sources "
        f"({summary['n_with_problems']} with problems, {len(result.skipped)} skipped) -> {output}"
    )
    if not result.facts:
        raise typer.Exit(1)


def _kinds(value: str | None) -> list[str] | None:
    """Styles to write (None: each language's own)."""
    from spacy_medllm.data.synth.offline import kinds_for

    kinds = csv(value)
    if kinds is None:
        return None
    known = set(kinds_for("en")) | set(kinds_for("et"))
    unknown = set(kinds) - known
    if unknown:
        raise typer.BadParameter(
            f"unknown text kinds {sorted(unknown)}; choose from {sorted(known)}"
        )
    return kinds


def _write_summary(summary: dict[str, Any], path: Path | None) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf8")
    typer.echo(json.dumps(summary, ensure_ascii=False)[:2000])
    if any(s.get("shortfall") for s in summary.get("langs", {}).values()):
        raise typer.Exit(1)


@synth_app.command(no_args_is_help=True)
def offline(
    facts: Path = typer.Option(..., help="JSONL of DrugFacts (scrape's output)."),
    output: Path = typer.Option(..., help="JSONL to append the texts to (resumes)."),
    n_en: int = typer.Option(600, help="English texts."),
    n_et: int = typer.Option(400, help="Estonian texts."),
    seed: int = typer.Option(0, help="Random seed (same seed, same texts)."),
    kinds: str | None = typer.Option(
        None, help="Comma-separated text kinds [default: every style of each language]."
    ),
    summary: Path | None = typer.Option(None, help="JSON file for the run's summary."),
) -> None:
    """Compose texts from templates with exact gold spans, no LLM."""
    from spacy_medllm.data.scrape import read_facts
    from spacy_medllm.data.synth.offline import compose_offline

    counts = {lang: n for lang, n in (("en", n_en), ("et", n_et)) if n > 0}
    result = compose_offline(read_facts(facts), output, counts, seed=seed, kinds=_kinds(kinds))
    _write_summary(result, summary)


@synth_app.command(no_args_is_help=True)
def llm(
    facts: Path = typer.Option(..., help="JSONL of DrugFacts (scrape's output)."),
    output: Path = typer.Option(..., help="JSONL to append the texts to (resumes)."),
    n_en: int = typer.Option(600, help="English texts."),
    n_et: int = typer.Option(400, help="Estonian texts."),
    seed: int = typer.Option(0, help="Random seed of the plan."),
    kinds: str | None = typer.Option(
        None, help="Comma-separated text kinds [default: every style of each language]."
    ),
    summary: Path | None = typer.Option(None, help="JSON file for the run's summary."),
    model: str = typer.Option("smollm2-135m-instruct", help="Model (alias, folder, hub id)."),
    adapter: str | None = typer.Option(None, help="A LoRA adapter folder."),
    base_url: str | None = typer.Option(None, help="An OpenAI-compatible server instead."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable of the key."),
    max_new_tokens: int = typer.Option(256, help="Longest text in tokens."),
    temperature: float = typer.Option(0.7, help="Sampling temperature (server only)."),
    batch_size: int = typer.Option(8, help="Prompts per call."),
) -> None:
    """Ask a generator to write free texts (labelled later by `label`)."""
    from spacy_medllm.data.scrape import read_facts
    from spacy_medllm.data.synth.llm import generate_with_llm, plan_llm_jobs

    generator: Any
    if base_url:
        from spacy_medllm.generators.openai_compat import OpenAIGenerator

        generator = OpenAIGenerator(
            model=model,
            base_url=base_url,
            api_key_env=api_key_env,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
        )
    else:
        from spacy_medllm.generators.hf.generator import HFGenerator

        generator = HFGenerator(
            model=model, adapter=adapter, batch_size=batch_size, max_new_tokens=max_new_tokens
        )
    counts = {lang: n for lang, n in (("en", n_en), ("et", n_et)) if n > 0}
    jobs = plan_llm_jobs(read_facts(facts), counts, seed=seed, kinds=_kinds(kinds))
    _write_summary(generate_with_llm(jobs, generator, output), summary)


@synth_app.command(no_args_is_help=True)
def split(
    input: Path = typer.Option(..., help="A texts JSONL."),
    first: Path = typer.Option(..., help="JSONL for the FRACTION side."),
    second: Path = typer.Option(..., help="JSONL for the rest."),
    fraction: float = typer.Option(0.5, help="Share of the texts in FIRST."),
    lang: str | None = typer.Option(None, help="Only the texts of this language."),
) -> None:
    """Split a texts JSONL in two by a hash of the ids (deterministic)."""
    from spacy_medllm.data.synth.records import split_texts

    result = split_texts(input, first, second, fraction=fraction, lang=lang)
    typer.echo(json.dumps(result, ensure_ascii=False))


def _records(input: Path) -> list[dict[str, Any]]:
    from spacy_medllm.data.synth.records import read_records

    records = read_records(input)
    if not records:
        raise ValueError(f"no records in {input}")
    return records


@app.command(no_args_is_help=True)
def label(
    input: Path = typer.Option(..., help="JSONL of texts (the synth step's output)."),
    output: Path = typer.Option(..., help="Folder for the DocBins and the log."),
    annotator: str = typer.Option("llm", help="'llm' (spacy-llm) or 'dictionary'."),
    facts: Path | None = typer.Option(None, help="DrugFacts JSONL (the dictionary annotator)."),
    langs: str = typer.Option("en,et", help="Comma-separated languages."),
    limit: int = typer.Option(0, help="Texts per language (0: all)."),
    model: str = typer.Option("smollm2-135m-instruct", help="Base model of the LLM annotator."),
    adapter: str | None = typer.Option(None, help="LoRA adapter folder (prompt included)."),
    base_url: str | None = typer.Option(None, help="An OpenAI-compatible server instead."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable of the key."),
    batch_size: int = typer.Option(8, help="Prompts per call."),
    max_new_tokens: int = typer.Option(192, help="Longest answer in tokens."),
) -> None:
    """Label texts with an annotator into silver DocBins, with a raw prompt/response log
    (resumes after an interruption)."""
    from spacy_medllm.data.labelling import label_records, labellers

    languages = csv(langs) or []
    annotators = labellers(
        annotator,
        languages,
        facts=facts,
        model=model,
        adapter=adapter,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        base_url=base_url,
        api_key_env=api_key_env,
    )
    summary = label_records(
        _records(input), annotators, output, annotator, batch_size=batch_size, limit=limit or None
    )
    echo_json(summary)


@app.command("annotator-report", no_args_is_help=True)
def annotator_report(
    input: Path = typer.Option(..., help="JSONL of texts with offline gold."),
    output: Path = typer.Option(..., help="Folder for the report."),
    facts: Path | None = typer.Option(None, help="DrugFacts JSONL: scores the dictionary."),
    silver: list[str] | None = typer.Option(
        None, metavar="NAME=DIR", help="Score the labels a finished `label` run logged in DIR."
    ),
    adapter: str | None = typer.Option(None, help="Score an LLM annotator with this adapter."),
    base_url: str | None = typer.Option(None, help="Score an LLM annotator on this server."),
    model: str = typer.Option("smollm2-135m-instruct", help="Base model of the LLM annotator."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable of the key."),
    langs: str = typer.Option("en,et", help="Comma-separated languages."),
    limit: int = typer.Option(0, help="Texts per language (0: all)."),
    batch_size: int = typer.Option(8, help="Prompts per call."),
    max_new_tokens: int = typer.Option(192, help="Longest answer in tokens."),
    stem: str = typer.Option("annotators", help="Output file stem."),
) -> None:
    """Strict and overlap F1 per label of the annotators against the texts' offline gold."""
    from spacy_medllm.data.labelling import annotator_report as run_report
    from spacy_medllm.data.labelling import labellers, replayed_annotators

    languages = csv(langs) or []
    annotators: dict[str, Any] = {}
    if facts:
        annotators["dictionary"] = labellers("dictionary", languages, facts=facts)
    if adapter or base_url:
        name = "spacy-llm " + (Path(adapter).parent.name if adapter else model)
        annotators[name] = labellers(
            "llm",
            languages,
            model=model,
            adapter=adapter,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            base_url=base_url,
            api_key_env=api_key_env,
        )
    annotators.update(
        replayed_annotators(name_value_pairs(silver, "--silver", "NAME=DIR"), languages)
    )
    if not annotators:
        raise typer.BadParameter("give --facts (dictionary), --silver NAME=DIR or --adapter (LLM)")
    report = run_report(_records(input), annotators, output, limit=limit or None, stem=stem)
    for system in report["systems"]:
        typer.echo(
            f"{system['name']}: strict F1 {system['strict']['micro']['f1']:.3f}, "
            f"overlap F1 {system['overlap']['micro']['f1']:.3f}"
        )


@app.command(no_args_is_help=True)
def gate(
    silver: Path = typer.Option(..., help="The folder of a finished `label` run (its log.jsonl)."),
    output: Path = typer.Option(..., help="Folder for gated.jsonl and gate.json / gate.md."),
    texts: Path | None = typer.Option(
        None, help="The texts JSONL that was labelled: its offline gold is the reference."
    ),
    second: Path | None = typer.Option(
        None, help="Another `label` run's folder: its labels are the reference where no gold."
    ),
    labels: str | None = typer.Option(None, help="Comma-separated labels the gate accepts."),
    compare: str | None = typer.Option(
        None, help="Labels whose spans must agree with the reference [default: --labels]."
    ),
    min_agreement: float = typer.Option(0.8, help="Strict span F1 with the reference to keep."),
    allow_unchecked: bool = typer.Option(
        False, help="Keep texts that have no reference (default: drop them)."
    ),
    name: str = typer.Option("LLM labels", help="The annotator's name in the report."),
) -> None:
    """Check LLM labels before training on them: spans in the text, known labels, no answer
    problem, agreement with the offline gold or a second annotator; what is kept and why."""
    from spacy_medllm.data.gate import gate_labels, gold_of, labels_of_log, read_log, write_gate
    from spacy_medllm.data.labelling import LOG_FILE
    from spacy_medllm.data.synth.records import read_records

    log = read_log(silver / LOG_FILE)
    kept, report = gate_labels(
        log,
        labels=csv(labels),
        gold=gold_of(read_records(texts)) if texts else None,
        second=labels_of_log(read_log(second / LOG_FILE)) if second else None,
        min_agreement=min_agreement,
        allow_unchecked=allow_unchecked,
        compare=csv(compare),
    )
    paths = write_gate(kept, report, output, name)
    typer.echo(paths["md"].read_text(encoding="utf8"))
