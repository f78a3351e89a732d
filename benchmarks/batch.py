"""Batch benchmark: `batch` on Ray Data against plain `nlp.pipe`, same pipeline and process count.

Both runners do the same end-to-end job on the same synthetic JSONL documents: start the
process(es) that hold the pipeline, import spaCy, load the pipeline, read the documents, run the
pipeline, turn each Doc into an output row (`spacy_medllm.scale.worker.doc_fields`: entities,
span groups, medllm records) and write Parquet. Plain: `nlp.pipe(texts, n_process=P)` in a fresh
spawned process, timed from the moment it is asked for (P > 1: spaCy's forked worker processes;
forking a process that has already run torch can crash). Ray: `run_batch` with P actors (new
processes that import spaCy and load the pipeline), each reserving its share of the machine's
CPUs, on a local Ray started once before the clocks (as a long-lived cluster would be; its start
time is reported apart). `--batch-size` is both runners' nlp.pipe batch and Ray's documents per
actor call: Ray's fixed cost per call (its read task and the hand-over; about 0.2 s here) wants a
few hundred documents per call for a fast pipeline such as the CNN student, a few dozen for an
LLM teacher. Each run starts from an empty output folder; the best of `--repeats` is kept. The
entities of both runners are compared document by document (`same_entities`).

The default pipeline is an entity_ruler with drug and adverse-event patterns, built here (a fast,
CNN-like cost per word); `--pipeline` runs a saved one instead, e.g. the CNN student or baseline
(`training/baselines/cnn-ade-corpus-v2-ae/model-best`) or a teacher `medllm_ner` pipeline (then
use a few hundred documents). Writes `<output>.json` and `<output>.md`.

    nice -n 19 .venv/bin/python -m benchmarks.batch --docs 200                 # a check
    .venv/bin/python -m benchmarks.batch --docs 10000                          # the benchmark
    .venv/bin/python -m benchmarks.batch --docs 10000 --batch-size 256 \\
        --pipeline training/baselines/cnn-ade-corpus-v2-ae/model-best --name cnn
    .venv/bin/python -m benchmarks.batch --docs 500 --pipeline training/my_pipeline --name teacher
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from spacy_medllm.util.formatting import fmt_rate, json_default, markdown_table
from spacy_medllm.util.machine import machine_info

DEFAULT_OUTPUT = "training/reports/batch/batch"
DRUGS = ["aspirin", "metformin", "ibuprofen", "Abilify", "lisinopril", "sertraline", "warfarin"]
EVENTS = ["nausea", "headache", "rash", "dizziness", "dry cough", "insomnia", "diarrhoea"]
SENTENCES = [
    "The patient started {drug} last week and reported {event} two days later.",
    "After the dose of {drug} was raised she had {event} and some fatigue.",
    "No {event} was noted while on {drug}, but the rash on the arm got worse.",
    "He stopped taking {drug} because of {event}.",
    "Follow-up in four weeks; continue {drug} and record any {event}.",
    "Blood pressure was stable and the wound healed well.",
]


def ruler_pipeline(path: Path) -> Path:
    """An entity_ruler pipeline with the drug and adverse-event patterns, saved to `path`."""
    import spacy

    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    patterns = [{"label": "DRUG", "pattern": drug} for drug in DRUGS]
    patterns += [
        {"label": "ADVERSE_EVENT", "pattern": [{"LOWER": w} for w in e.split()]} for e in EVENTS
    ]
    ruler.add_patterns(patterns)
    nlp.to_disk(path)
    return path


def synthetic_texts(n: int, seed: int = 0) -> Iterator[str]:
    """`n` synthetic clinical notes (3 to 8 sentences), the same for the same seed."""
    rng = random.Random(seed)
    for _ in range(n):
        yield " ".join(
            rng.choice(SENTENCES).format(drug=rng.choice(DRUGS), event=rng.choice(EVENTS))
            for _ in range(rng.randint(3, 8))
        )


def write_documents(path: Path, n: int, seed: int = 0) -> int:
    """`synthetic_texts` as JSONL records with ids doc-0, doc-1, ...; returns the characters."""
    chars = 0
    with path.open("w", encoding="utf8") as handle:
        for i, text in enumerate(synthetic_texts(n, seed)):
            chars += len(text)
            handle.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")
    return chars


def run_plain(
    pipeline: str, source: Path, output: Path, processes: int, batch_size: int, start: float
) -> dict[str, Any]:
    """Import, load, read, nlp.pipe(n_process=processes), rows, Parquet: one timed run.

    `start` is the wall clock (time.time) when the caller asked for the process that runs this:
    the clock counts its start and imports, as a Ray actor's start and imports are counted.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import spacy

    from spacy_medllm.scale.worker import doc_fields

    nlp = spacy.load(pipeline)
    with source.open(encoding="utf8") as handle:
        records = [json.loads(line) for line in handle]
    docs = nlp.pipe((r["text"] for r in records), batch_size=batch_size, n_process=processes)
    rows, first = [], None
    for record, doc in zip(records, docs, strict=True):
        rows.append({"id": record["id"], "text": record["text"], **doc_fields(doc)})
        if first is None:
            first = (time.time(), rows[0]["n_words"])
    pq.write_table(pa.Table.from_pylist(rows), output)
    end = time.time()
    seconds = end - start
    words = sum(row["n_words"] for row in rows)
    entities = {
        row["id"]: [(e["start"], e["end"], e["label"]) for e in row["entities"]] for row in rows
    }
    return {
        "seconds": seconds,
        "documents": len(rows),
        "words": words,
        "entities": entities,
        "first_rows_seconds": first[0] - start if first else None,
        "steady_words_per_second": (words - first[1]) / (end - first[0]) if first else None,
    }


def in_fresh_process(function: Any, *args: Any) -> Any:
    """`function(*args)` in a new (spawned) Python process. nlp.pipe's worker processes are
    forked, and a process forked from one that has already run torch (its OpenMP thread pool
    started) can crash in GOMP_parallel: each plain run starts from a process that has not."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def run_ray(
    pipeline: str, source: Path, output: Path, actors: int, batch_size: int, part_size: int
) -> dict[str, Any]:
    """`run_batch` with `actors` actors on the running local Ray: one timed run."""
    import pyarrow.parquet as pq

    from spacy_medllm.scale.batch import BatchSettings, run_batch

    start = time.perf_counter()
    summary = run_batch(
        BatchSettings(
            pipeline,
            str(source),
            str(output),
            actors=actors,
            # the machine's cores shared out, as nlp.pipe's processes share them (Ray sets
            # OMP_NUM_THREADS to an actor's CPUs: torch's threads in a teacher pipeline)
            cpus_per_actor=max(1, (os.cpu_count() or 1) // actors),
            batch_size=batch_size,
            part_size=part_size,
            progress=False,
        )
    )
    seconds = time.perf_counter() - start
    table = pq.read_table(output / "shards", columns=["id", "entities"])
    entities = {
        row["id"]: [(e["start"], e["end"], e["label"]) for e in row["entities"]]
        for row in table.to_pylist()
    }
    return {
        "seconds": seconds,
        "documents": summary["totals"]["documents"],
        "words": summary["totals"]["words"],
        "entities": entities,
        "check": summary["check"],
        # run_batch's own clock starts after planning; the first rows wait for the actors.
        "first_rows_seconds": seconds
        - summary["run"]["processing_seconds"]
        + summary["run"]["first_rows_seconds"],
        "steady_words_per_second": summary["run"]["steady_words_per_second"],
    }


def best_of(repeats: int, run: Any, workdir: Path, name: str) -> dict[str, Any]:
    results = []
    for i in range(repeats):
        target = workdir / f"{name}-{i}"
        shutil.rmtree(target, ignore_errors=True)
        results.append(run(target))
    return min(results, key=lambda r: r["seconds"])


def bench_batch(
    pipeline: str | None,
    name: str,
    n_docs: int,
    processes: Sequence[int],
    batch_size: int,
    part_size: int,
    repeats: int,
    output: str,
    command: str,
) -> dict[str, Any]:
    import ray

    from spacy_medllm.scale.batch import resolve_pipeline

    workdir = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        pipe_path = resolve_pipeline(pipeline) if pipeline else str(ruler_pipeline(workdir / "p"))
        source = workdir / "documents.jsonl"
        chars = write_documents(source, n_docs)
        clock = time.perf_counter()
        cpus = max(*processes, os.cpu_count() or 1)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="error")
        ray_start = time.perf_counter() - clock
        rows = []
        try:
            for p in processes:
                plain = best_of(
                    repeats,
                    lambda t, p=p: in_fresh_process(
                        run_plain,
                        pipe_path,
                        source,
                        t.with_suffix(".parquet"),
                        p,
                        batch_size,
                        time.time(),
                    ),
                    workdir,
                    f"plain{p}",
                )
                on_ray = best_of(
                    repeats,
                    lambda t, p=p: run_ray(pipe_path, source, t, p, batch_size, part_size),
                    workdir,
                    f"ray{p}",
                )
                for runner, result in (("nlp.pipe", plain), ("Ray Data", on_ray)):
                    rows.append(
                        {
                            "runner": runner,
                            "processes": p,
                            "seconds": result["seconds"],
                            "documents": result["documents"],
                            "words": result["words"],
                            "words_per_second": result["words"] / result["seconds"],
                            "documents_per_second": result["documents"] / result["seconds"],
                            "first_rows_seconds": result["first_rows_seconds"],
                            "steady_words_per_second": result["steady_words_per_second"],
                            "check": result.get("check"),
                        }
                    )
                rows[-1]["ratio_to_plain"] = plain["seconds"] / on_ray["seconds"]
                rows[-1]["same_entities"] = plain["entities"] == on_ray["entities"]
                rows[-1]["documents_different"] = sum(
                    plain["entities"].get(key) != value for key, value in on_ray["entities"].items()
                )
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    scaling = {}
    for runner in ("nlp.pipe", "Ray Data"):
        by_p = {r["processes"]: r["words_per_second"] for r in rows if r["runner"] == runner}
        if 1 in by_p and len(by_p) > 1:
            scaling[runner] = {str(p): rate / by_p[1] for p, rate in by_p.items()}
    report = {
        "pipeline": pipeline or "entity_ruler (built by the benchmark)",
        "name": name,
        "documents": n_docs,
        "characters": chars,
        "batch_size": batch_size,
        "part_size": part_size,
        "repeats": repeats,
        "ray_start_seconds": ray_start,
        "ray_version": ray.__version__,
        "rows": rows,
        "scaling": scaling,
        "machine": machine_info(),
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    base = Path(output)
    base.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, ensure_ascii=False, default=json_default)
    base.with_suffix(".json").write_text(text + "\n", encoding="utf8")
    base.with_suffix(".md").write_text(markdown(report) + "\n", encoding="utf8")
    return report


def markdown(report: dict[str, Any]) -> str:
    table = markdown_table(
        [
            "Runner",
            "Processes",
            "Seconds",
            "words/s",
            "docs/s",
            "Ray / nlp.pipe",
            "First rows (s)",
            "words/s after",
            "Same entities",
        ],
        [
            [
                row["runner"],
                str(row["processes"]),
                f"{row['seconds']:.2f}",
                fmt_rate(row["words_per_second"]),
                fmt_rate(row["documents_per_second"]),
                f"{row['ratio_to_plain']:.2f}x" if "ratio_to_plain" in row else "",
                f"{row['first_rows_seconds']:.2f}",
                fmt_rate(row["steady_words_per_second"]),
                {True: "yes", False: "NO"}.get(row.get("same_entities"), ""),
            ]
            for row in report["rows"]
        ],
    )
    scaling = "; ".join(
        f"{runner}: " + ", ".join(f"{p} -> {factor:.2f}x" for p, factor in by_p.items())
        for runner, by_p in report["scaling"].items()
    )
    cpus = report["machine"].get("cpu_count", "?")
    return "\n".join(
        [
            f"# Batch extraction: Ray Data against plain nlp.pipe ({report['name']})",
            "",
            f"{report['documents']:,} synthetic documents ({report['characters']:,} characters), "
            f"pipeline `{report['pipeline']}`, batch size {report['batch_size']}, "
            f"{report['part_size']} documents per shard, best of {report['repeats']}; "
            f"{cpus} CPUs; Ray {report['ray_version']}.",
            "Each time is end to end: start the process(es), import spaCy, load the pipeline, "
            "read JSONL, run, rows, write Parquet. "
            f"Ray's start ({report['ray_start_seconds']:.1f} s, once) is not in the times. "
            "First rows: seconds until the first results are back (pipeline loaded in every "
            "process); words/s after: the rate from then on.",
            "",
            table,
            "",
            f"Scaling over processes (words/s against 1): {scaling or 'n/a'}.",
            "",
            f"Command: `{report['command']}`",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=None, help="a saved pipeline (default: a ruler)")
    parser.add_argument("--name", default="entity_ruler", help="the pipeline's name in the report")
    parser.add_argument("--docs", type=int, default=10_000, help="synthetic documents")
    parser.add_argument("--processes", default="1,2", help="process / actor counts, e.g. 1,2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--part-size", type=int, default=1000, help="documents per Ray shard")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting (best kept)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="<output>.json and .md")
    args = parser.parse_args(argv)
    processes = [int(p) for p in args.processes.split(",") if p.strip()]
    argv_used = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", "benchmarks.batch", *argv_used])
    report = bench_batch(
        args.pipeline,
        args.name,
        args.docs,
        processes,
        args.batch_size,
        args.part_size,
        args.repeats,
        args.output,
        command,
    )
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
