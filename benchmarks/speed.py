"""Speed benchmark: `medllm_ner` against spacy-llm's NER task, same model and adapter, one machine.

Systems (all run the base model and LoRA adapter given, greedy, with the same max_new_tokens):

- `medllm_ner`: our component, batched (generator batch size `--batch-size`).
- `medllm_ner (batch 1)`: the same, one prompt at a time: our unbatched path.
- `spacy-llm NER.v3`: spacy-llm's `llm` component with its `spacy.NER.v3` task, the model through
  the registered spacy-llm model `medllm.HF.v1` (`spacy_medllm.pipeline.spacy_llm`), with the same
  batch size. NER.v3 writes its own chain-of-thought prompt, which the adapter was not trained on.
- `spacy-llm NER.v3 (batch 1)`: the same, one prompt per `generate` call, as spacy-llm's own
  Hugging Face models run.
- `spacy-llm JSONNER.v1` (optional): spacy-llm with `medllm.JSONNER.v1`, the task that prompts as
  the adapter was trained: separates what the framework costs from what the prompt costs.

Each system is scored with `spacy_medllm.evaluation.evaluate.evaluate_pipeline` (strict seqeval F1
and spaCy's scorer; words = non-space tokens; wall time of `nlp.pipe` over the texts, the model
loaded and one warm-up document run before the clock starts) on the seed test e-mails and the
ADE-Corpus-V2 test split. Writes `<output>.json`, `.md` and `.png`; results of earlier calls with
the same setup are kept, so systems and corpora can be run one call at a time.

    nice -n 19 .venv/bin/python -m benchmarks.speed --limit 10
    nice -n 19 .venv/bin/python -m benchmarks.speed                # everything (hours on CPU)
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spacy_medllm.util.formatting import fmt_mib, fmt_rate, fmt_score, json_default, markdown_table
from spacy_medllm.util.machine import machine_info
from spacy_medllm.util.memory import PeakMemory

REPO = Path(__file__).resolve().parents[1]

logger = logging.getLogger("spacy_medllm")

DEFAULT_ADAPTER = "training/seed_lora/adapter"
DEFAULT_OUTPUT = "training/reports/speed"
CORPORA = ("seed-ae-emails", "ade-corpus-v2")
SPLIT = "test"
OURS = "medllm_ner"
UNBATCHED = "medllm_ner (batch 1)"
INT8 = "medllm_ner int8"  # quantize="int8": our path with int8 Linear weights (CPU)
# dtype pinned to float32: what the default's bfloat16 (on a CPU with native bfloat16) buys.
FLOAT32 = "medllm_ner float32"
# Draft tokens (forced by the schema, copied from the document) off: one token per step.
NO_DRAFTS = "medllm_ner, no drafts"
# constrained = "schema": every answer in the trained JSON schema; with and without drafts.
SCHEMA = "medllm_ner schema"
SCHEMA_NO_DRAFTS = "medllm_ner schema, no drafts"
SPACY_LLM_NER = "spacy-llm NER.v3"
SPACY_LLM_NER_1 = "spacy-llm NER.v3 (batch 1)"
SPACY_LLM_JSON = "spacy-llm JSONNER.v1"
# Our trained prompt through spacy-llm, one prompt per generate call: spacy-llm's way of running a
# Hugging Face model with a task whose answers (and F1) are ours.
SPACY_LLM_JSON_1 = "spacy-llm JSONNER.v1 (batch 1)"
# The same in float32: the F1-equal baseline at the dtype of `medllm_ner float32`.
SPACY_LLM_JSON_1_FLOAT32 = "spacy-llm JSONNER.v1 (batch 1) float32"
SYSTEMS = (
    OURS,
    FLOAT32,
    NO_DRAFTS,
    SCHEMA,
    SCHEMA_NO_DRAFTS,
    INT8,
    UNBATCHED,
    SPACY_LLM_NER,
    SPACY_LLM_NER_1,
    SPACY_LLM_JSON,
    SPACY_LLM_JSON_1,
    SPACY_LLM_JSON_1_FLOAT32,
)
DEFAULT_SYSTEMS = (OURS, NO_DRAFTS, UNBATCHED, SPACY_LLM_NER, SPACY_LLM_NER_1)
GOAL_SPEEDUP = 5.0
WARM_UP_TEXT = "After starting aspirin I had a headache."
# What must match for results of an earlier call to be kept next to new ones.
SETUP_KEYS = ("model", "adapter_sha256", "batch_size", "max_new_tokens", "limit", "labels")


def adapter_settings(adapter: str | Path) -> dict[str, Any]:
    """The adapter's trained labels, definitions and prompt (its prompt_template.json)."""
    from spacy_medllm.core.adapter_settings import load_prompt_settings

    return load_prompt_settings(Path(adapter))


def build_system(name: str, model: str, adapter: str, batch_size: int, max_new_tokens: int) -> Any:
    """A spaCy pipeline for one of SYSTEMS, nothing loaded yet."""
    import spacy

    if name in (OURS, FLOAT32, NO_DRAFTS, SCHEMA, SCHEMA_NO_DRAFTS, INT8, UNBATCHED):
        from spacy_medllm.pipeline.assemble import build_pipeline

        nlp = build_pipeline(
            model=model,
            adapter=adapter,
            batch_size=1 if name == UNBATCHED else batch_size,
            max_new_tokens=max_new_tokens,
            quantize="int8" if name == INT8 else "none",
            constrained="schema" if name in (SCHEMA, SCHEMA_NO_DRAFTS) else "off",
            jump_forward=name not in (NO_DRAFTS, SCHEMA_NO_DRAFTS),
            draft_tokens=0 if name in (NO_DRAFTS, SCHEMA_NO_DRAFTS) else 4,
        )
        if name == FLOAT32:
            pipeline_generator(nlp).dtype = "float32"
        return nlp
    spacy_llm_systems = (
        SPACY_LLM_NER,
        SPACY_LLM_NER_1,
        SPACY_LLM_JSON,
        SPACY_LLM_JSON_1,
        SPACY_LLM_JSON_1_FLOAT32,
    )
    if name not in spacy_llm_systems:
        raise ValueError(f"unknown system {name!r}; known: {list(SYSTEMS)}")
    try:
        import spacy_llm  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "the spacy-llm systems need spacy-llm: pip install 'spacy-medllm[data]'"
        ) from error
    from spacy_medllm.pipeline.spacy_llm import HF_MODEL_NAME, JSON_NER_TASK_NAME

    settings = adapter_settings(adapter)
    if name in (SPACY_LLM_NER, SPACY_LLM_NER_1):
        task = {
            "@llm_tasks": "spacy.NER.v3",
            "labels": list(settings["labels"]),
            "label_definitions": dict(settings["label_definitions"]),
        }
    else:
        task = {"@llm_tasks": JSON_NER_TASK_NAME, "adapter": str(adapter)}
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "llm",
        config={
            "task": task,
            "model": {
                "@llm_models": HF_MODEL_NAME,
                "model": model,
                "adapter": str(adapter),
                "batch_size": batch_size if name in (SPACY_LLM_NER, SPACY_LLM_JSON) else 1,
                "max_new_tokens": max_new_tokens,
                # transformers' generate, one token per step, as spacy-llm's own models decode
                "jump_forward": False,
                "draft_tokens": 0,
                "dtype": "float32" if name == SPACY_LLM_JSON_1_FLOAT32 else "auto",
            },
        },
    )
    return nlp


def pipeline_generator(nlp: Any) -> Any:
    """The HFGenerator inside a pipeline: medllm_ner's, or the one in a spacy-llm model."""
    for _, pipe in nlp.pipeline:
        generator = getattr(pipe, "generator", None)
        if generator is None:
            generator = getattr(getattr(pipe, "_model", None), "generator", None)
        if generator is not None:
            return generator
    raise ValueError(f"no generator in the pipeline {nlp.pipe_names}")


def run_system(
    name: str, nlp: Any, examples: Sequence[dict[str, Any]], labels: Sequence[str]
) -> dict[str, Any]:
    """Load the model, run one warm-up document, then time and score the pipeline."""
    from spacy_medllm.evaluation.evaluate import evaluate_pipeline

    generator = pipeline_generator(nlp)
    generator.initialize()
    nlp(WARM_UP_TEXT)
    before = dict(generator.stats)
    result = evaluate_pipeline(
        nlp, examples, name=name, labels=labels, include_docs=False, progress=False
    )
    stats = {key: generator.stats[key] - before[key] for key in before}
    speed = result["speed"]
    return {
        "name": name,
        "seconds": speed["seconds"],
        "n_docs": speed["n_docs"],
        "n_words": speed["n_words"],
        "docs_per_s": speed["docs_per_s"],
        "words_per_s": speed["words_per_s"],
        "generator_batch_size": generator.batch_size,
        "dtype": generator.describe()["dtype"],
        "answer_tokens": stats["generated_tokens"],
        "decode_steps": stats["decode_steps"],
        "generate_calls": stats["batches"],
        "f1": result["strict"]["micro"]["f1"],
        "precision": result["strict"]["micro"]["precision"],
        "recall": result["strict"]["micro"]["recall"],
        "spacy_f": result["spacy"]["ents_f"],
        "n_predicted": result["predicted"]["n_spans"],
        "n_gold": result["gold"]["n_spans"],
    }


def comparisons(results: dict[str, dict[str, Any]], base: str = OURS) -> dict[str, dict[str, Any]]:
    """Per other system: how many times `base`'s docs/s, and the F1 difference."""
    ours = results.get(base)
    if not ours:
        return {}
    out = {}
    for name, other in results.items():
        if name == base or not other.get("docs_per_s"):
            continue
        speedup = ours["docs_per_s"] / other["docs_per_s"]
        f1_delta = (ours["f1"] or 0.0) - (other["f1"] or 0.0)
        out[name] = {
            "speedup": speedup,
            "f1_delta": f1_delta,
            "goal_met": speedup >= GOAL_SPEEDUP and f1_delta >= 0,
        }
    return out


def _load_examples(corpus: str, path: str | None, labels: Sequence[str], limit: int | None):
    from spacy_medllm.corpora.registry import load_corpus

    return load_corpus(corpus, SPLIT, path, labels=labels, limit=limit)


def run_speed_benchmark(
    *,
    model: str = "smollm2-135m-instruct",
    adapter: str | Path = DEFAULT_ADAPTER,
    systems: Sequence[str] = DEFAULT_SYSTEMS,
    corpora: Sequence[str] = CORPORA,
    corpus_paths: dict[str, str] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    output: str | Path | None = DEFAULT_OUTPUT,
    command: str = "",
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run `systems` on the test split of `corpora`; write the report after each run."""
    from spacy_medllm.generators.hf.loading import check_adapter_dir
    from spacy_medllm.generators.packaged import file_sha256

    adapter_dir = check_adapter_dir(adapter)
    labels = list(adapter_settings(adapter_dir)["labels"])
    report: dict[str, Any] = {
        "model": model,
        "adapter": str(adapter),
        "adapter_sha256": file_sha256(adapter_dir / "adapter_model.safetensors"),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "limit": limit,
        "labels": labels,
        "split": SPLIT,
        "goal_speedup": GOAL_SPEEDUP,
        "machine": machine_info(),
        "command": command,
        "corpora": {},
    }
    out = Path(output) if output is not None else None
    if out is not None and out.with_suffix(".json").is_file():
        earlier = json.loads(out.with_suffix(".json").read_text(encoding="utf8"))
        if all(earlier.get(key) == report[key] for key in SETUP_KEYS):
            report["corpora"] = earlier.get("corpora", {})
    for corpus in corpora:
        path = (corpus_paths or {}).get(corpus)
        examples = _load_examples(corpus, path, labels, limit)
        entry = report["corpora"].setdefault(corpus, {"results": {}})
        entry["n_docs"] = len(examples)
        for name in systems:
            progress(f"{name} on {corpus}:{SPLIT} ({len(examples)} documents)")
            # memory: building and loading the system, the warm-up and the run
            with PeakMemory() as memory:
                nlp = build_system(name, model, str(adapter_dir), batch_size, max_new_tokens)
                result = run_system(name, nlp, examples, labels)
            result["memory"] = memory.to_dict()
            result["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            entry["results"][name] = result
            del nlp
            gc.collect()  # one model in memory at a time
            entry["results"] = {k: entry["results"][k] for k in SYSTEMS if k in entry["results"]}
            entry["comparisons"] = comparisons(entry["results"])
            # The goal is checked for the constrained variant too (it is a setting of the same
            # component, not another system).
            entry["comparisons_schema"] = comparisons(entry["results"], SCHEMA)
            # float32 against float32: the comparison with bfloat16's rounding taken out.
            entry["comparisons_float32"] = comparisons(entry["results"], FLOAT32)
            progress(
                f"  {fmt_rate(result['docs_per_s'])} docs/s, {fmt_rate(result['words_per_s'])} "
                f"words/s, F1 {fmt_score(result['f1'])}"
            )
            if out is not None:
                write_speed_report(report, out)
    return report


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    sample = f"the first {report['limit']} documents of " if report["limit"] else ""
    lines = [
        "# Speed: medllm_ner against spacy-llm, same model and adapter",
        "",
        f"Model {report['model']} + LoRA adapter `{report['adapter']}` (sha256 "
        f"{report['adapter_sha256'][:12]}), greedy, max_new_tokens {report['max_new_tokens']}, "
        f"batch size {report['batch_size']}; {sample}each corpus's {report['split']} split. "
        f"Machine: {machine.get('cpus_available', machine.get('cpu_count'))} CPU(s), torch "
        f"{machine.get('torch')} with {machine.get('torch_threads')} thread(s), native "
        f"bfloat16 {'yes' if machine.get('cpu_bf16') else 'no'}, "
        f"transformers {machine.get('transformers')}, spaCy {machine.get('spacy')}, "
        f"{machine.get('platform')}.",
        "",
    ]
    header = [
        "corpus",
        "system",
        "dtype",
        "docs",
        "docs/s",
        "words/s",
        "answer tokens",
        "decode steps",
        "generate calls",
        "peak RSS MiB",
        "F1 (strict)",
        "P",
        "R",
        "x medllm_ner is faster",
    ]
    rows = []
    for corpus, entry in report["corpora"].items():
        for name, r in entry["results"].items():
            comparison = entry.get("comparisons", {}).get(name)
            rows.append(
                [
                    corpus,
                    name,
                    r.get("dtype", "float32"),
                    str(r["n_docs"]),
                    fmt_rate(r["docs_per_s"]),
                    fmt_rate(r["words_per_s"]),
                    str(r["answer_tokens"]),
                    str(r.get("decode_steps", "")),
                    str(r["generate_calls"]),
                    fmt_mib((r.get("memory") or {}).get("peak_rss_mib")),
                    fmt_score(r["f1"]),
                    fmt_score(r["precision"]),
                    fmt_score(r["recall"]),
                    f"{comparison['speedup']:.2f}" if comparison else "",
                ]
            )
    lines.append(markdown_table(header, rows))
    lines += [
        "",
        f"Goal (issue 7): medllm_ner at least {report['goal_speedup']:g} times spacy-llm's "
        "documents/s with an F1 no lower.",
        "",
    ]
    for corpus, entry in report["corpora"].items():
        pairs = (
            (OURS, "comparisons", (SPACY_LLM_NER, SPACY_LLM_NER_1, SPACY_LLM_JSON_1)),
            (SCHEMA, "comparisons_schema", (SPACY_LLM_NER, SPACY_LLM_NER_1, SPACY_LLM_JSON_1)),
            (FLOAT32, "comparisons_float32", (SPACY_LLM_JSON_1_FLOAT32,)),
        )
        for base, key, goal_systems in pairs:
            for name, c in entry.get(key, {}).items():
                if name in goal_systems:
                    verdict = "met" if c["goal_met"] else "not met"
                    lines.append(
                        f"- {corpus}: {base} {c['speedup']:.2f} x {name}'s docs/s, F1 "
                        f"difference {c['f1_delta']:+.3f}: goal {verdict}."
                    )
                elif name == SPACY_LLM_JSON and base == OURS:
                    lines.append(
                        f"- {corpus}: {c['speedup']:.2f} x {name}'s docs/s (our prompt and "
                        f"generator inside spacy-llm: what the framework costs), F1 difference "
                        f"{c['f1_delta']:+.3f}."
                    )
    lines += [
        "",
        "docs/s and words/s: wall time of `nlp.pipe` over the texts, the model loaded and one "
        "warm-up document run before the clock starts; words are non-space spaCy tokens. "
        "F1/P/R: strict exact spans (seqeval IOB2, micro) from `spacy_medllm.evaluation.evaluate`. "
        "answer tokens: tokens kept in the responses; decode steps: rounds in which the model "
        "chooses the next token of every row of a batch (one per new token, fewer with "
        "drafts), summed over batches; generate calls: batches. peak RSS: the process's peak "
        "resident memory from building the system to the end of its run (`memory.PeakMemory`; "
        "it includes what the process held before, so run one system per call for a clean "
        "figure; n/a: not measured).",
        "medllm_ner decodes with draft tokens (the tokens the schema forces, and inside entity "
        "texts the document's continuation, read in the same forward pass as the model's next "
        "choice and kept where they are its choice); no drafts: one token per step "
        '(`generate`); schema: `constrained = "schema"` (every answer in the trained JSON '
        'schema). dtype: the weights\' (the default "auto" is bfloat16 on a CPU with native '
        "bfloat16, for every system here, with the logits computed in float32 by a float32 "
        "output head; results from before it was recorded: float32); "
        "medllm_ner float32: the default pipeline with dtype pinned to float32.",
        'medllm_ner int8 (if shown): the same pipeline with `quantize = "int8"` (int8 Linear '
        "weights, from a float32 model).",
        "spacy-llm NER.v3 prompts with its own chain-of-thought template, which the adapter was "
        "not trained on (it answers in JSON, which NER.v3 cannot read); (batch 1): one prompt per "
        "`generate` call, as spacy-llm's own Hugging Face models run; spacy-llm JSONNER.v1 (if "
        "shown) runs the trained prompt through spacy-llm ((batch 1) float32: with dtype float32, "
        "compared with medllm_ner float32). The spacy-llm systems decode with "
        "transformers' `generate` (no drafts), as spacy-llm's own Hugging Face models do.",
        "",
        f"Reproduce: `{report['command']}`",
        "",
    ]
    return "\n".join(lines)


def plot_speed(report: dict[str, Any], path: str | Path) -> Path:
    """Bars: documents/s per system for each corpus (log scale), F1 written on each bar."""
    from spacy_medllm.evaluation.plots import _pyplot

    plt = _pyplot()
    corpora = list(report["corpora"])
    systems = [s for s in SYSTEMS if any(s in e["results"] for e in report["corpora"].values())]
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.5 * len(corpora) + 2) + 3.0, 4.2))
    for k, name in enumerate(systems):
        xs, values, f1s = [], [], []
        for i, corpus in enumerate(corpora):
            result = report["corpora"][corpus]["results"].get(name)
            if result and result["docs_per_s"]:
                xs.append(i + (k - (len(systems) - 1) / 2) * width)
                values.append(result["docs_per_s"])
                f1s.append(result["f1"])
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, labels=[f"F1 {fmt_score(f)}" for f in f1s], fontsize=7, padding=1)
    ax.set_xticks(range(len(corpora)))
    ax.set_xticklabels([f"{c} (n={report['corpora'][c]['n_docs']})" for c in corpora])
    ax.set_yscale("log")
    ax.set_ylabel("documents per second (log)")
    ax.set_title(f"{report['model']} + LoRA, batch size {report['batch_size']}")
    # Outside the axes: with many systems an inside legend hides the bars.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_speed_report(report: dict[str, Any], output: str | Path) -> dict[str, Path]:
    """`<output>.json`, `.md` and `.png`."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": output.with_suffix(".json"),
        "md": output.with_suffix(".md"),
        "png": output.with_suffix(".png"),
    }
    paths["json"].write_text(
        json.dumps(report, indent=2, ensure_ascii=False, default=json_default) + "\n", "utf8"
    )
    paths["md"].write_text(markdown(report), "utf8")
    plot_speed(report, paths["png"])
    return paths


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--adapter", default=DEFAULT_ADAPTER)
    parser.add_argument("--systems", nargs="+", default=list(DEFAULT_SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=CORPORA)
    parser.add_argument("--seed-path", default=None, help="folder of the seed e-mails")
    parser.add_argument("--ade-path", default=None, help="folder of ADE-Corpus-V2")
    parser.add_argument("--limit", type=int, default=None, help="the first N documents")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="path without suffix")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    given = list(sys.argv[1:] if argv is None else argv)
    import torch

    # The thread count decides the figures (one prompt per call hardly gains from a second
    # thread; a batch does), so the command that reproduces them states it.
    command = (
        f"OMP_NUM_THREADS={torch.get_num_threads()} nice -n 19 .venv/bin/python "
        "python -m benchmarks.speed " + shlex.join(given)
    )
    report = run_speed_benchmark(
        model=args.model,
        adapter=args.adapter,
        systems=args.systems,
        corpora=args.corpora,
        corpus_paths={"seed-ae-emails": args.seed_path, "ade-corpus-v2": args.ade_path},
        limit=args.limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        output=args.output,
        command=command.strip(),
    )
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
