"""Label synthetic texts with an annotator: silver DocBins, a raw prompt/response log, a report.

Annotators:

- `llm`: a spacy-llm pipeline, our registered model (`medllm.HF.v1`, base model + LoRA adapter,
  or `medllm.OpenAICompatible.v1` for any server) with our task `medllm.JSONNER.v1`, which reads
  the adapter's `prompt_template.json` so the fine-tuned model gets the prompt it was trained on
  (spacy-llm's own `spacy.NER.v3` prompt would be a prompt it never saw).
- `dictionary`: a PhraseMatcher (`medllm_dictionary`) over the drug facts' names, side effects
  and conditions and the bilingual lexicon's lemmas: fast, and blind to Estonian inflection.

`label_records` writes one log line per document as soon as its batch is done (id, text, entities
as character offsets, the prompt and the raw response, the task's record of rejections) and
skips ids already in the log, so an interrupted run resumes without losing or repeating work.
The silver DocBins (`<lang>.spacy`) are rebuilt from the log at the end of every run.

`annotator_report` scores annotators against the offline composer's exact gold with
`spacy_medllm.evaluation.evaluate` (strict seqeval and partial-overlap F1 per label) and writes
Markdown, JSON and a PNG.

    python -m spacy_medllm label --input corpus/generated/synthetic.jsonl \
        --output corpus/generated/silver --annotator llm --adapter training/seed_lora/adapter
    python -m spacy_medllm annotator-report --input corpus/generated/synthetic.jsonl \
        --facts corpus/generated/drug_facts.jsonl --output training/reports --limit 20
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spacy.language import Language

from spacy_medllm.data.synth.lexicon import (
    CONDITION_ET,
    DRUG_ET,
    EFFECT_ET,
    PROCEDURES,
    plain_phrase,
)
from spacy_medllm.data.synth.records import read_records

if TYPE_CHECKING:
    from spacy_medllm.data.scrape import DrugFacts

logger = logging.getLogger("spacy_medllm")

ANNOTATORS = ("llm", "dictionary")
LLM_PIPE = "llm_ner"
LOG_FILE = "log.jsonl"
DEFAULT_LABELS = ("DRUG", "ADVERSE_EVENT", "DISEASE", "PROCEDURE")


# -- annotators ------------------------------------------------------------------------------------


def llm_labeller(
    lang: str,
    model: str = "smollm2-135m-instruct",
    adapter: str | None = None,
    labels: Sequence[str] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 192,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
) -> Language:
    """A blank `lang` pipeline with spacy-llm's `llm` component: our model and our JSON task."""
    import spacy

    from spacy_medllm.pipeline import spacy_llm as spacy_llm_models

    if base_url:
        model_config: dict[str, Any] = {
            "@llm_models": spacy_llm_models.OPENAI_MODEL_NAME,
            "model": model,
            "base_url": base_url,
            "api_key_env": api_key_env,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
        }
    else:
        model_config = {
            "@llm_models": spacy_llm_models.HF_MODEL_NAME,
            "model": model,
            "adapter": adapter,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
        }
    task_config: dict[str, Any] = {"@llm_tasks": spacy_llm_models.JSON_NER_TASK_NAME}
    if adapter and not base_url:
        task_config["adapter"] = adapter
    if labels:
        task_config["labels"] = list(labels)
    elif not task_config.get("adapter"):
        task_config["labels"] = list(DEFAULT_LABELS)
    nlp = spacy.blank(lang)
    nlp.add_pipe(
        "llm", name=LLM_PIPE, config={"task": task_config, "model": model_config, "save_io": True}
    )
    return nlp


def dictionary_patterns_for(facts: Iterable[DrugFacts], lang: str) -> list[dict[str, str]]:
    """Dictionary entries for `lang`: what the facts name (English) or the lexicon's lemmas."""
    patterns: list[dict[str, str]] = []
    if lang == "en":
        for fact in facts:
            patterns.append({"label": "DRUG", "pattern": fact.name})
            patterns += [{"label": "ADVERSE_EVENT", "pattern": e} for e in fact.side_effects]
        patterns += [{"label": "DISEASE", "pattern": c} for c in CONDITION_ET]
        patterns += [{"label": "PROCEDURE", "pattern": en} for en, _ in PROCEDURES]
    else:
        known = {fact.name.lower() for fact in facts}
        patterns += [{"label": "DRUG", "pattern": et} for en, et in DRUG_ET.items() if en in known]
        patterns += [
            {"label": "ADVERSE_EVENT", "pattern": plain_phrase(e)} for e in EFFECT_ET.values()
        ]
        patterns += [
            {"label": "DISEASE", "pattern": plain_phrase(c)} for c in CONDITION_ET.values()
        ]
        patterns += [{"label": "PROCEDURE", "pattern": plain_phrase(et)} for _, et in PROCEDURES]
    unique = {(p["label"], p["pattern"].lower()): p for p in patterns}
    return list(unique.values())


def dictionary_labeller(lang: str, facts: Sequence[DrugFacts]) -> Language:
    """A blank `lang` pipeline with a `medllm_dictionary` of the facts (matched on LOWER)."""
    import spacy

    from spacy_medllm.baselines import dictionary as baselines  # noqa: F401 - registers medllm_dictionary

    nlp = spacy.blank(lang)
    component = nlp.add_pipe("medllm_dictionary", config={"attr": "LOWER"})
    component.add_patterns(dictionary_patterns_for(facts, lang))
    return nlp


class LoggedEntities:
    """`medllm_logged_ents`: sets the entities a finished labelling run logged for each text.

    Scores an annotator's silver labels (`annotator_report`) without running its model again.
    A text the log does not hold raises a ValueError naming the log.
    """

    def __init__(self, log_path: str, lang: str) -> None:
        self.log_path = log_path
        lines = [line for line in read_log(log_path) if line.get("lang") == lang]
        self.by_text = {line["text"]: line["ents"] for line in lines}
        self.ids = {line["id"] for line in lines}

    def __call__(self, doc: Any) -> Any:
        if doc.text not in self.by_text:
            raise ValueError(f"{self.log_path} holds no labels for the text {doc.text[:60]!r}")
        doc.ents = [doc.char_span(s, e, label=label) for s, e, label in self.by_text[doc.text]]
        return doc


@Language.factory("medllm_logged_ents", default_config={"log_path": "", "lang": "en"})
def make_logged_ents(nlp: Language, name: str, log_path: str, lang: str) -> LoggedEntities:
    """The entities of a labelling log (see LoggedEntities)."""
    return LoggedEntities(log_path, lang)


def replay_labeller(lang: str, log_path: str | Path) -> tuple[Language, set[str]]:
    """A blank `lang` pipeline replaying a labelling log, and the ids the log covers."""
    import spacy

    nlp = spacy.blank(lang)
    pipe = nlp.add_pipe("medllm_logged_ents", config={"log_path": str(log_path), "lang": lang})
    return nlp, set(pipe.ids)


# -- labelling -------------------------------------------------------------------------------------


def initialize_models(nlp: Language) -> None:
    """Load the generators behind the pipeline's spacy-llm components now."""
    for _, pipe in nlp.pipeline:
        # spacy-llm's LLMWrapper keeps its model in `_model` (it has no public accessor).
        generator = getattr(getattr(pipe, "_model", None), "generator", None)
        if generator is not None:
            generator.initialize()


def _io_of(doc: Any) -> tuple[Any, Any]:
    """The prompt (as chat messages) and raw response spacy-llm stored on the doc, if any."""
    from spacy_medllm.pipeline.spacy_llm import decode_prompt

    io = (doc.user_data.get("llm_io") or {}).get(LLM_PIPE)
    if not io:
        return None, None
    prompts, responses = io["prompt"], io["response"]
    prompts = prompts if isinstance(prompts, list) else [prompts]
    responses = responses if isinstance(responses, list) else [responses]
    messages = [decode_prompt(p) for p in prompts]
    return (messages[0] if len(messages) == 1 else messages), (
        responses[0] if len(responses) == 1 else responses
    )


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Log lines; a line cut by an interruption is dropped (its document is labelled again)."""
    return read_records(path)


def label_records(
    records: Sequence[Mapping[str, Any]],
    labellers: Mapping[str, Language],
    output_dir: str | Path,
    annotator: str,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Label `records` ({id, text, lang, ...}) with the labeller of their language.

    `limit`: label at most the first `limit` records of each language (counting those already
    done). Writes `log.jsonl` (appended per batch) and `<lang>.spacy` to `output_dir`.
    """
    from spacy.util import minibatch
    from tqdm import tqdm

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / LOG_FILE
    _cut_partial_line(log_path)
    done = {line["id"] for line in read_log(log_path)}
    chosen: list[Mapping[str, Any]] = []
    per_lang: dict[str, int] = {}
    missing_lang: set[str] = set()
    for record in records:
        lang = record["lang"]
        if lang not in labellers:
            missing_lang.add(lang)
            continue
        per_lang[lang] = per_lang.get(lang, 0) + 1
        if limit is None or per_lang[lang] <= limit:
            chosen.append(record)
    todo = [r for r in chosen if r["id"] not in done]
    for lang in {r["lang"] for r in todo}:
        initialize_models(labellers[lang])  # model loading is not labelling time
    start = time.perf_counter()
    n_labelled = 0
    with tqdm(
        total=len(chosen),
        initial=len(chosen) - len(todo),
        desc=f"label ({annotator})",
        unit="doc",
        disable=not progress,
    ) as bar:
        for lang, nlp in labellers.items():
            mine = [r for r in todo if r["lang"] == lang]
            for batch in minibatch(mine, size=batch_size):
                docs = list(nlp.pipe([r["text"] for r in batch]))
                lines = []
                for record, doc in zip(batch, docs, strict=True):
                    prompt, response = _io_of(doc)
                    task_record = (
                        (doc._.get("medllm") or {}).get("llm")
                        if doc.has_extension("medllm")
                        else None
                    )
                    lines.append(
                        {
                            "id": record["id"],
                            "lang": lang,
                            "kind": record.get("kind"),
                            "annotator": annotator,
                            "text": record["text"],
                            "ents": [[e.start_char, e.end_char, e.label_] for e in doc.ents],
                            "prompt": prompt,
                            "response": response,
                            "record": task_record,
                        }
                    )
                with log_path.open("a", encoding="utf8") as file_:
                    file_.write("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
                    file_.flush()
                n_labelled += len(lines)
                bar.update(len(lines))
    seconds = time.perf_counter() - start
    docbins = write_docbins(log_path, output_dir)
    summary = {
        "annotator": annotator,
        "output": str(output_dir),
        "n_selected": len(chosen),
        "n_labelled_now": n_labelled,
        "n_already_done": len(chosen) - len(todo),
        "seconds": round(seconds, 2),
        "docs_per_s": round(n_labelled / seconds, 3) if seconds > 0 and n_labelled else None,
        "docbins": docbins,
        "languages_without_labeller": sorted(missing_lang),
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf8")
    return summary


def _cut_partial_line(path: Path) -> None:
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def write_docbins(log_path: str | Path, output_dir: str | Path) -> dict[str, dict[str, Any]]:
    """`<lang>.spacy` for each language of the log: the texts with their logged entities."""
    import spacy
    from spacy.tokens import DocBin

    by_lang: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for line in read_log(log_path):
        if line["id"] in seen:
            continue  # never two docs for one id, even if a log was merged by hand
        seen.add(line["id"])
        by_lang.setdefault(line["lang"], []).append(line)
    written: dict[str, dict[str, Any]] = {}
    for lang, lines in sorted(by_lang.items()):
        nlp = spacy.blank(lang)
        docbin = DocBin(store_user_data=True)
        n_ents = 0
        for line in lines:
            doc = nlp.make_doc(line["text"])
            # The same tokenizer made the spans, so they fall on token boundaries exactly.
            doc.ents = [doc.char_span(s, e, label=label) for s, e, label in line["ents"]]
            doc.user_data["id"] = line["id"]
            doc.user_data["kind"] = line.get("kind")
            docbin.add(doc)
            n_ents += len(doc.ents)
        path = Path(output_dir) / f"{lang}.spacy"
        tmp = path.with_suffix(".tmp")
        docbin.to_disk(tmp)
        tmp.replace(path)
        written[lang] = {"path": str(path), "n_docs": len(lines), "n_ents": n_ents}
    return written


# -- annotator report ------------------------------------------------------------------------------


def gold_examples(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The offline records as the evaluation harness's examples: {id, text, spans}."""
    return [
        {
            "id": r["id"],
            "text": r["text"],
            "spans": [(s["start"], s["end"], s["label"]) for s in r["spans"]],
        }
        for r in records
        if r.get("spans") is not None
    ]


def sample_per_lang(
    records: Sequence[Mapping[str, Any]], n: int | None
) -> dict[str, list[Mapping[str, Any]]]:
    """The first `n` records with gold of each language (all if n is None), kinds interleaved
    as the composer wrote them."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        if record.get("spans") is None:
            continue
        mine = out.setdefault(record["lang"], [])
        if n is None or len(mine) < n:
            mine.append(record)
    return out


def annotator_report(
    records: Sequence[Mapping[str, Any]],
    annotators: Mapping[str, Mapping[str, Language]],
    output: str | Path,
    limit: int | None = 20,
    labels: Sequence[str] = DEFAULT_LABELS,
    stem: str = "annotators",
) -> dict[str, Any]:
    """Score each annotator ({name: {lang: nlp}}) on the same sample of offline gold per language.

    One system per (annotator, language). A pipeline that replays a labelling log
    (`replay_labeller`) is scored on the sample's documents the log holds, and its words/s
    column means nothing (see the run's summary.json for the labelling speed).
    Scores come from `evaluate.evaluate_pipeline`:
    strict (seqeval IOB2) and overlap (partial) P/R/F1, per label. Writes
    `<stem>.json/.md/.png` to `output`.
    """
    from spacy_medllm.evaluation.evaluate import evaluate_pipeline, write_report
    from spacy_medllm.util.machine import machine_info

    samples = sample_per_lang(records, limit)
    systems = []
    for name, by_lang in annotators.items():
        for lang, nlp in by_lang.items():
            examples = gold_examples(samples.get(lang, []))
            label = f"{name} ({lang})"
            if "medllm_logged_ents" in nlp.pipe_names:
                # Silver labels from a log: the sample's documents that the run labelled.
                covered = nlp.get_pipe("medllm_logged_ents").ids
                examples = [e for e in examples if e["id"] in covered]
                label = f"{name} ({lang}, n={len(examples)})"
            if not examples:
                continue
            result = evaluate_pipeline(
                nlp, examples, name=label, labels=list(labels), include_docs=False
            )
            result["lang"] = lang
            result["annotator"] = name
            systems.append(result)
    n_docs = {lang: len(v) for lang, v in samples.items()}
    report = {
        "corpus": "Synthetic texts, offline composer's gold",
        "split": ", ".join(f"{lang}: first {n}" for lang, n in sorted(n_docs.items())),
        "n_docs": sum(n_docs.values()),
        "n_docs_per_lang": n_docs,
        "limit": None,
        "labels": list(labels),
        "licence": "generated by this project (MIT)",
        "machine": machine_info(),
        "systems": systems,
    }
    # the annotator report is small and kept whole in git: no separate summary
    write_report(report, output, stem=stem, summary=False)
    return report


# -- command line ----------------------------------------------------------------------------------


def labellers(
    annotator: str,
    langs: Iterable[str],
    *,
    facts: str | Path | None = None,
    model: str = "smollm2-135m-instruct",
    adapter: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 192,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
) -> dict[str, Language]:
    """One labelling pipeline per language: the dictionary annotator (needs `facts`, the scrape
    step's JSONL) or the LLM annotator through spacy-llm (a local model + adapter, or a server)."""
    if annotator not in ANNOTATORS:
        raise ValueError(f"annotator must be one of {ANNOTATORS}, got {annotator!r}")
    if annotator == "dictionary":
        from spacy_medllm.data.scrape import read_facts

        if not facts:
            raise ValueError("the dictionary annotator needs --facts (the scrape step's JSONL)")
        drug_facts = read_facts(facts)
        return {lang: dictionary_labeller(lang, drug_facts) for lang in langs}
    return {
        lang: llm_labeller(
            lang,
            model=model,
            adapter=adapter,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            base_url=base_url,
            api_key_env=api_key_env,
        )
        for lang in langs
    }


def replayed_annotators(
    silver: Iterable[tuple[str, str | Path]], langs: Iterable[str]
) -> dict[str, dict[str, Language]]:
    """Annotators that replay the labels finished `label` runs logged (no model is run)."""
    annotators = {}
    for name, folder in silver:
        log_path = Path(folder) / LOG_FILE
        if not log_path.is_file():
            raise FileNotFoundError(
                f"{name}={folder}: {log_path} does not exist; run `label` first"
            )
        annotators[name] = {lang: replay_labeller(lang, log_path)[0] for lang in langs}
    return annotators
