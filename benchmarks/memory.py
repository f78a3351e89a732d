"""Memory benchmark: each pipeline scored on a corpus in a process of its own; peak RAM per system.

Runs `python -m spacy_medllm evaluate` once per pipeline (so no system inherits another's
memory), reads the peak resident memory each run recorded (`spacy_medllm.util.memory.PeakMemory`:
the pipeline's weights resident, running the texts) and the RSS of a bare interpreter that has
imported spaCy, torch and spacy_medllm (what any of these processes holds before it loads a
model), and writes `<output>/memory.json` and `memory.md` (one row per system: peak RSS, the
part above the bare interpreter, words/s and strict F1 from the same run). The per-system
evaluation reports stay in `<output>/runs/`.

`--loading-reference MODEL` adds what transformers alone costs to load that base model straight
in bfloat16 (no adapter, no float32 output head), in a process of its own: the floor under the
peak while `medllm_ner` loads (its float32 read, merge and cast).

    .venv/bin/python -m benchmarks.memory --corpus seed-ae-emails --split test \\
        --pipeline cnn=training/baselines/cnn-seed-ae-emails/model-best \\
        --pipeline medllm=training/seed_pipeline --output training/reports/memory
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spacy_medllm.util.formatting import (
    fmt_mib,
    fmt_rate,
    fmt_score,
    markdown_table,
    name_value_pairs,
)
from spacy_medllm.util.machine import machine_info

REPO = Path(__file__).resolve().parents[1]

# What every evaluation process holds before it loads a pipeline: the imports, nothing else.
FLOOR_IMPORTS = "import spacy, torch, spacy_medllm.evaluation.evaluate\n"
FLOOR_CODE = (
    FLOOR_IMPORTS + "from spacy_medllm.util.memory import current_rss_mib\nprint(current_rss_mib())"
)


def _env() -> dict[str, str]:
    """This checkout's spacy_medllm first on the subprocesses' path, as on this one's."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), path]))}


# transformers alone loading a base model in bfloat16 (argv[1]: a packaged alias, folder or hub id),
# after the floor's imports, so that its figures compare with the floor's
REFERENCE_CODE = (
    FLOOR_IMPORTS + "import json, sys\n"
    "from transformers import AutoModelForCausalLM\n"
    "from spacy_medllm.generators.hf.generator import HFGenerator\n"
    "from spacy_medllm.util.memory import PeakMemory\n"
    "path = HFGenerator(model=sys.argv[1]).resolved_model()\n"
    "with PeakMemory() as memory:\n"
    "    model = AutoModelForCausalLM.from_pretrained(\n"
    "        path, dtype=torch.bfloat16, use_safetensors=True, trust_remote_code=False)\n"
    "print(json.dumps(memory.to_dict()))"
)


def loading_reference(model: str) -> dict[str, Any]:
    """Peak and final RSS of a fresh interpreter loading `model` with transformers in bfloat16."""
    out = subprocess.run(
        [sys.executable, "-c", REFERENCE_CODE, model],
        check=True,
        capture_output=True,
        text=True,
        env=_env(),
    )
    return {"model": model, **json.loads(out.stdout.strip().splitlines()[-1])}


def floor_rss_mib() -> float:
    """RSS of a fresh interpreter after the imports an evaluation needs, in MiB."""
    out = subprocess.run(
        [sys.executable, "-c", FLOOR_CODE], check=True, capture_output=True, text=True, env=_env()
    )
    return float(out.stdout.strip().splitlines()[-1])


def run_one(
    name: str, path: str, corpus: str, split: str, output: Path, extra: Sequence[str]
) -> dict[str, Any]:
    """Score one pipeline in a subprocess; its summary (speed, scores, memory)."""
    runs = output / "runs"
    command = [
        sys.executable,
        "-m",
        "spacy_medllm",
        "evaluate",
        "--pipeline",
        f"{name}={path}",
        "--corpus",
        corpus,
        "--split",
        split,
        "--output",
        str(runs),
        "--stem",
        name,
        "--no-plot",
        *extra,
    ]
    subprocess.run(command, check=True, env=_env())
    summary = json.loads((runs / f"{name}.summary.json").read_text(encoding="utf8"))
    (system,) = summary["systems"]
    return system


def bench_memory(
    pipelines: Sequence[tuple[str, str]],
    corpus: str,
    split: str,
    output: str | Path,
    extra: Sequence[str] = (),
    command: str = "",
    reference_model: str | None = None,
) -> dict[str, Any]:
    """Run every pipeline alone and write `memory.json` / `memory.md` to `output`."""
    names = [name for name, _ in pipelines]
    if len(set(names)) != len(names):
        raise ValueError(f"pipeline names must be unique, got {names}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    floor = floor_rss_mib()
    rows = []
    for name, path in pipelines:
        system = run_one(name, path, corpus, split, output, extra)
        memory = system.get("memory") or {}
        peak = memory.get("peak_rss_mib")
        rows.append(
            {
                "name": name,
                "pipeline": path,
                "peak_rss_mib": peak,
                "above_floor_mib": None if peak is None else round(peak - floor, 1),
                "loading_peak_rss_mib": memory.get("loading_peak_rss_mib"),
                "loaded_rss_mib": memory.get("loaded_rss_mib"),
                "end_rss_mib": memory.get("end_rss_mib"),
                "method": memory.get("method"),
                "n_docs": system["speed"]["n_docs"],
                "words_per_s": system["speed"]["words_per_s"],
                "f1": system["strict"]["micro"]["f1"],
            }
        )
    report = {
        "corpus": corpus,
        "split": split,
        "floor_rss_mib": round(floor, 1),
        "systems": rows,
        "loading_reference": loading_reference(reference_model) if reference_model else None,
        "machine": machine_info(),
        "command": command,
    }
    (output / "memory.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    (output / "memory.md").write_text(markdown(report), encoding="utf8")
    return report


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    header = [
        "System",
        "peak RSS MiB",
        "above the bare process",
        "peak while loading",
        "loaded",
        "at the end",
        "words/s",
        "strict F1",
    ]
    rows = [
        [
            r["name"],
            fmt_mib(r["peak_rss_mib"]),
            fmt_mib(r["above_floor_mib"]),
            fmt_mib(r.get("loading_peak_rss_mib")),
            fmt_mib(r.get("loaded_rss_mib")),
            fmt_mib(r.get("end_rss_mib")),
            fmt_rate(r["words_per_s"]),
            fmt_score(r["f1"]),
        ]
        for r in report["systems"]
    ]
    n_docs = report["systems"][0]["n_docs"] if report["systems"] else 0
    reference = report.get("loading_reference")
    reference_lines = []
    if reference:
        reference_lines = [
            f"For reference: transformers alone loading `{reference['model']}` straight in "
            f"bfloat16 (no adapter, no float32 output head) peaks at "
            f"{fmt_mib(reference['peak_rss_mib'])} MiB "
            f"({fmt_mib(reference['peak_rss_mib'] - report['floor_rss_mib'])} above the bare "
            f"process) and holds {fmt_mib(reference['end_rss_mib'])} MiB once loaded.",
            "",
        ]
    return "\n".join(
        [
            f"# Memory: each system alone on {report['corpus']} ({report['split']}, {n_docs} docs)",
            "",
            markdown_table(header, rows),
            "",
            "peak RSS: the evaluation process's peak resident memory while the pipeline runs the "
            "texts, its weights resident (`spacy.load` reads a spaCy pipeline's before; "
            "`medllm_ner` loads its model inside the window) "
            "(`spacy_medllm.util.memory.PeakMemory`, "
            "method "
            f"{', '.join(sorted({str(r['method']) for r in report['systems']}))}); above the bare "
            f"process: minus {fmt_mib(report['floor_rss_mib'])} MiB, the RSS of an interpreter "
            "that has imported spaCy, torch and spacy_medllm and loaded nothing; while loading, "
            "loaded: the peak while `medllm_ner` models load (other pipelines load in `spacy.load`"
            ", before) and the RSS once they have; at the end: after the last text. One process "
            "per system; words/s and F1 from the same run.",
            "",
            *reference_lines,
            f"Machine: {machine.get('cpus_available', machine.get('cpu_count'))} CPU(s), torch "
            f"{machine.get('torch')} with {machine.get('torch_threads')} thread(s), spaCy "
            f"{machine.get('spacy')}, {machine.get('platform')}.",
            "",
            f"Reproduce: `{report['command']}`",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--path", default=None, help="the corpus folder (or file)")
    parser.add_argument("--limit", type=int, default=None, help="the first N documents only")
    parser.add_argument("--output", required=True, help="folder for memory.{json,md} and runs/")
    parser.add_argument(
        "--loading-reference",
        default=None,
        metavar="MODEL",
        help="also measure transformers alone loading this base model in bfloat16",
    )
    args = parser.parse_args(argv)
    pipelines = name_value_pairs(args.pipeline, "--pipeline", "NAME=PATH")
    extra = [
        *(["--path", args.path] if args.path else []),
        *(["--limit", str(args.limit)] if args.limit else []),
    ]
    argv_used = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", "benchmarks.memory", *argv_used])
    report = bench_memory(
        pipelines, args.corpus, args.split, args.output, extra, command, args.loading_reference
    )
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
