"""`nlp.add_pipe("medllm_ner")` with no config, as a new user meets it: loading time, the time
of one 25-word sentence, strict F1 on the seed test e-mails and the out-of-style set, and the size
of the wheel with the packaged adapter inside. Writes `default_component.json` and `.md`.

    python -m benchmarks.default_component --output training/reports/default_component

Times are wall-clock on this machine with nothing else running; the model's one-time conversion
from the packaged GGUF (first use on a machine) is timed apart from a normal load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from spacy_medllm.corpora.registry import load_corpus
from spacy_medllm.evaluation.evaluate import evaluate_pipeline
from spacy_medllm.generators.packaged import resolve_base_model
from spacy_medllm.util.formatting import fmt_score, markdown_table
from spacy_medllm.util.machine import machine_info

REPO = Path(__file__).resolve().parents[1]
SENTENCE = (
    "I started taking Lexapro last week and since then I have terrible headaches and nausea. "
    "My doctor also gave me ibuprofen."
)
TEST_SETS = (("seed-ae-emails", "test"), ("out-of-style", "test"))


def default_pipeline():
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("medllm_ner")
    return nlp


def time_loading() -> dict[str, Any]:
    """Seconds to build the default pipeline and load its model (conversion cached first)."""
    start = time.perf_counter()
    resolve_base_model("smollm2-135m-instruct")  # converts once per machine; timed apart
    conversion = time.perf_counter() - start
    start = time.perf_counter()
    nlp = default_pipeline()
    nlp.get_pipe("medllm_ner").generator.initialize()
    loading = time.perf_counter() - start
    return {"conversion_or_cache_check_s": conversion, "load_s": loading, "nlp": nlp}


def time_sentence(nlp: Any, runs: int = 5) -> dict[str, Any]:
    """Median seconds of one call on a 25-word sentence (the response cache is off)."""
    nlp(SENTENCE)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        doc = nlp(SENTENCE)
        times.append(time.perf_counter() - start)
    return {
        "sentence": SENTENCE,
        "n_words": len(SENTENCE.split()),
        "median_s": statistics.median(times),
        "max_s": max(times),
        "runs": runs,
        "entities": [(e.text, e.label_) for e in doc.ents],
    }


def wheel_size() -> dict[str, Any]:
    """Build the wheel (no dependencies) and report its size in MB."""
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", folder, str(REPO)],
            check=True,
            capture_output=True,
        )
        (wheel,) = Path(folder).glob("*.whl")
        return {"name": wheel.name, "mb": wheel.stat().st_size / 1e6}


def run(output: Path, limit: int | None = None) -> dict[str, Any]:
    loading = time_loading()
    nlp = loading.pop("nlp")
    component = nlp.get_pipe("medllm_ner")
    report: dict[str, Any] = {
        "labels": list(component.labels),
        "generator": component.generator.describe(),
        "loading": loading,
        "sentence": time_sentence(nlp),
        "machine": machine_info(),
        "scores": {},
    }
    for corpus, split in TEST_SETS:
        examples = load_corpus(corpus, split, limit=limit)
        result = evaluate_pipeline(nlp, examples, name="default", include_docs=False)
        report["scores"][f"{corpus}:{split}"] = {
            "n_docs": len(examples),
            "strict": result["strict"]["micro"],
            "per_label": {k: v["f1"] for k, v in result["strict"]["per_label"].items()},
            "words_per_s": result["speed"]["words_per_s"],
            "texts": result["texts"],
            "unannotated": result.get("unannotated"),
        }
    report["wheel"] = wheel_size()
    output.mkdir(parents=True, exist_ok=True)
    (output / "default_component.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False, default=str), encoding="utf8"
    )
    (output / "default_component.md").write_text(markdown(report), encoding="utf8")
    return report


def markdown(report: dict[str, Any]) -> str:
    rows = []
    for name, score in report["scores"].items():
        strict = score["strict"]
        per_label = ", ".join(f"{k} {fmt_score(v)}" for k, v in score["per_label"].items())
        rows.append(
            [
                name,
                str(score["n_docs"]),
                fmt_score(strict["precision"]),
                fmt_score(strict["recall"]),
                fmt_score(strict["f1"]),
                per_label,
                f"{score['words_per_s']:.0f}",
            ]
        )
    sentence = report["sentence"]
    lines = [
        "## The default `medllm_ner` (no config)",
        "",
        markdown_table(
            ["Test set", "Texts", "Strict P", "Strict R", "Strict F1", "F1 per label", "words/s"],
            rows,
        ),
        "",
        f"Loading (build the pipeline, load SmolLM2 and the adapter): "
        f"{report['loading']['load_s']:.1f} s; a {sentence['n_words']}-word sentence: "
        f"{sentence['median_s']:.2f} s (median of {sentence['runs']}, max "
        f"{sentence['max_s']:.2f} s) -> {sentence['entities']}; wheel with the adapter: "
        f"{report['wheel']['mb']:.1f} MB. Labels {', '.join(report['labels'])}; "
        f"generator {report['generator'].get('model')} with adapter "
        f"{report['generator'].get('adapter_sha256', '')[:12]}, constrained "
        f"{report['generator'].get('constrained')}. Machine: {report['machine'].get('cpu_count')} "
        f"CPUs, torch threads {report['machine'].get('torch_threads')}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("training/reports/default_component"))
    parser.add_argument("--limit", type=int, default=None, help="the first N texts of each set")
    args = parser.parse_args(argv)
    report = run(args.output, args.limit)
    sys.stdout.write(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
