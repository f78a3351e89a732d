"""Batch invariance: does a pipeline give a document the same entities whatever it is batched with?

`benchmarks.batch` finds that the teacher's entities differ between plain `nlp.pipe` and Ray on a
few documents. The two runners group documents differently: `nlp.pipe` takes `--batch-size`
documents at a time from the start, `batch` cuts the input into parts (`--part-size` lines) and
each part into pieces of `--batch-size`. This runs the same pipeline, in one process, with the same
threads, over the same synthetic documents (`benchmarks.batch.synthetic_texts`) both ways and
counts the documents whose entities differ. A CNN gives 0; an LLM decoding a padded batch in
bfloat16 need not (its numbers depend on the batch's shape). Writes `<output>.json` and `.md`.

    .venv/bin/python -m benchmarks.batch_invariance --pipeline training/seed_pipeline
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from spacy_medllm.util.formatting import json_default
from spacy_medllm.util.machine import machine_info

DEFAULT_OUTPUT = "training/reports/batch/batch-invariance"

Entities = list[tuple[int, int, str]]


def entities_of(docs: Iterator[Any]) -> list[Entities]:
    return [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in docs]


def grouped_as_parts(texts: Sequence[str], part_size: int, batch_size: int) -> Iterator[list[str]]:
    """The groups `batch` hands its actors: each part cut into pieces of `batch_size`."""
    for start in range(0, len(texts), part_size):
        part = texts[start : start + part_size]
        for offset in range(0, len(part), batch_size):
            yield list(part[offset : offset + batch_size])


def compare(pipeline: str, n_docs: int, batch_size: int, part_size: int) -> dict[str, Any]:
    import spacy

    from benchmarks.batch import synthetic_texts

    texts = list(synthetic_texts(n_docs))
    nlp = spacy.load(pipeline)
    clock = time.perf_counter()
    straight = entities_of(nlp.pipe(texts, batch_size=batch_size))
    as_parts = [
        ents
        for group in grouped_as_parts(texts, part_size, batch_size)
        for ents in entities_of(nlp.pipe(group, batch_size=batch_size))
    ]
    seconds = time.perf_counter() - clock
    different = [i for i, (a, b) in enumerate(zip(straight, as_parts, strict=True)) if a != b]
    return {
        "pipeline": pipeline,
        "documents": n_docs,
        "batch_size": batch_size,
        "part_size": part_size,
        "documents_different": len(different),
        "entities_straight": sum(map(len, straight)),
        "entities_as_parts": sum(map(len, as_parts)),
        "examples": [
            {"document": i, "straight": straight[i], "as_parts": as_parts[i]}
            for i in different[:10]
        ],
        "seconds": seconds,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Batch invariance: the same documents, batched two ways, in one process",
        "",
        f"Pipeline `{report['pipeline']}`, {report['documents']} synthetic documents "
        f"(`benchmarks.batch`). Straight: `nlp.pipe` in batches of {report['batch_size']} from "
        f"the start. As parts: batches of {report['batch_size']} that restart every "
        f"{report['part_size']} documents, as `batch` groups them. Same process, same threads.",
        "",
        f"- documents whose entities differ: **{report['documents_different']}** of "
        f"{report['documents']}",
        f"- entities: {report['entities_straight']} straight, {report['entities_as_parts']} as "
        "parts",
        "",
    ]
    for example in report["examples"]:
        lines.append(
            f"- document {example['document']}: straight {example['straight']}, "
            f"as parts {example['as_parts']}"
        )
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", required=True, help="a saved pipeline")
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--part-size", type=int, default=100)
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="<output>.json and .md")
    args = parser.parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    report = compare(args.pipeline, args.docs, args.batch_size, args.part_size)
    report["command"] = shlex.join(["python", "-m", "benchmarks.batch_invariance", *argv_used])
    report["machine"] = machine_info()
    base = Path(args.output)
    base.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, ensure_ascii=False, default=json_default)
    base.with_suffix(".json").write_text(text + "\n", encoding="utf8")
    base.with_suffix(".md").write_text(markdown(report), encoding="utf8")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
