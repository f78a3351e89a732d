"""Batch extraction on Ray Data (`spacy_medllm.scale`, `python -m spacy_medllm batch`).

Real parts only: spaCy pipelines saved to disk (an entity_ruler, and a `medllm_ner` on a tiny
random transformers model), a real local Ray (num_cpus=2) and the real command in a subprocess
that is killed with SIGKILL. Every test checks documents by id against plain `nlp.pipe`: each
document exactly once, with the same entities.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import spacy

pytest.importorskip("pyarrow")
ray = pytest.importorskip("ray")
# Ray Data's own DataContext warns about its deprecated settings.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from spacy_medllm.pipeline.component import get_record  # noqa: E402
from spacy_medllm.scale.batch import BatchRunError, BatchSettings, run_batch  # noqa: E402
from spacy_medllm.scale.inputs import (  # noqa: E402
    ReadSettings,
    list_inputs,
    plan_parts,
    read_part_rows,
)
from spacy_medllm.scale.store import OutputStore  # noqa: E402
from spacy_medllm.scale.worker import FAULTS_ENV, PipelineWorker, WorkerOptions  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DRUGS = ["aspirin", "metformin", "ibuprofen", "Abilify", "lisinopril"]
EVENTS = ["nausea", "headache", "rash", "dizziness", "dry cough"]
FILLER = ["I", "took", "and", "then", "had", "a", "after", "the", "dose", "mild", "today", "."]
# Bad records a corpus carries: (line content, reason in the errors file).
BAD = [
    ("this line is not JSON", "not_json"),
    (json.dumps({"id": "no-text", "body": "aspirin"}), "no_text"),
    (json.dumps({"id": "empty", "text": "   "}), "empty_text"),
    (json.dumps({"id": "huge", "text": "aspirin " * 400}), "too_long"),
    (json.dumps(["a", "list"]), "not_an_object"),
    (json.dumps({"id": {"nested": 1}, "text": "aspirin"}), "bad_id"),
]
MAX_CHARS = 2000


@pytest.fixture(scope="module")
def ruler_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, fast pipeline that sets Doc.ents: an entity_ruler with drug and AE patterns."""
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    patterns = [{"label": "DRUG", "pattern": d} for d in DRUGS]
    patterns += [
        {"label": "ADVERSE_EVENT", "pattern": [{"LOWER": w} for w in e.split()]} for e in EVENTS
    ]
    ruler.add_patterns(patterns)
    path = tmp_path_factory.mktemp("ruler") / "pipeline"
    nlp.to_disk(path)
    return path


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the in-process runs of this module (run_batch uses it and leaves it)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


def text_for(rng: random.Random) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(4, 18))]
    for mention in rng.sample(DRUGS, rng.randint(0, 2)) + rng.sample(EVENTS, rng.randint(0, 2)):
        words.insert(rng.randint(0, len(words)), mention)
    return " ".join(words)


def write_corpus(path: Path, n: int, seed: int = 0, bad: bool = True) -> dict[str, str]:
    """A JSONL corpus of `n` documents (ids doc-0...), with the BAD records and blank lines mixed
    in when `bad`; returns {id: text} of the documents."""
    rng = random.Random(seed)
    documents = {f"doc-{i}": text_for(rng) for i in range(n)}
    lines = [
        json.dumps({"id": k, "text": t, "ward": i % 3})
        for i, (k, t) in enumerate(documents.items())
    ]
    if bad:
        for offset, (line, _) in enumerate(BAD):
            lines.insert(7 + offset * (n // len(BAD)), line)
        lines.insert(3, "")
        lines.insert(n // 2, "   ")
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    return documents


def plain_entities(pipeline: Path, documents: dict[str, str]) -> dict[str, list[tuple]]:
    """What plain nlp.pipe finds, by document id."""
    nlp = spacy.load(pipeline)
    docs = nlp.pipe(documents.values())
    return {
        key: [(e.start_char, e.end_char, e.label_, e.text) for e in doc.ents]
        for key, doc in zip(documents, docs, strict=True)
    }


def shard_rows(output: Path) -> list[dict]:
    tables = [pq.read_table(path) for path in sorted((output / "shards").glob("*.parquet"))]
    return pa.concat_tables(tables).to_pylist() if tables else []


def batch_entities(rows: list[dict]) -> dict[str, list[tuple]]:
    return {
        row["id"]: [(e["start"], e["end"], e["label"], e["text"]) for e in row["entities"]]
        for row in rows
    }


def error_lines(output: Path) -> list[dict]:
    text = (output / "errors.jsonl").read_text(encoding="utf8")
    return [json.loads(line) for line in text.splitlines()]


def assert_exactly_once(output: Path, pipeline: Path, documents: dict[str, str], bad: bool) -> None:
    """Every document once in the shards, with plain nlp.pipe's entities; every bad record once
    in errors.jsonl with its reason; the run's own check agrees."""
    rows = shard_rows(output)
    counts = Counter(row["id"] for row in rows)
    assert set(counts) == set(documents), set(counts) ^ set(documents)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    assert batch_entities(rows) == plain_entities(pipeline, documents)
    assert {row["id"]: row["text"] for row in rows} == documents
    reasons = Counter(line["reason"] for line in error_lines(output))
    assert reasons == (Counter(reason for _, reason in BAD) if bad else Counter())
    summary = json.loads((output / "summary.json").read_text(encoding="utf8"))
    assert summary["complete"] is True
    check = summary["check"]
    assert (check["lost"], check["duplicated"], check["stray"]) == (0, 0, 0)
    assert summary["totals"]["documents"] == len(documents)
    assert summary["totals"]["errors"] == (len(BAD) if bad else 0)
    assert [s["records"] for s in summary["shards"]] == [
        s["documents"] + s["errors"] for s in summary["shards"]
    ]


# -- inputs and the output folder, no Ray ----------------------------------------------------------


@pytest.mark.parametrize(
    "part_size, piece_size", [(1, None), (7, 3), (50, 7), (50, 50), (1000, 64)]
)
def test_parts_cover_every_record_once_with_the_reason_for_bad_ones(
    tmp_path, part_size, piece_size
) -> None:
    documents = write_corpus(tmp_path / "in.jsonl", 60)
    (file,) = list_inputs(tmp_path / "in.jsonl")
    read = ReadSettings(max_chars=MAX_CHARS)
    parts = plan_parts(file, part_size, read, piece_size=piece_size)
    rows = [row for part in parts for row in read_part_rows(part, read)]
    assert len({p.part_id for p in parts}) == len(parts)
    lines = [row["line"] for row in rows]
    assert len(lines) == len(set(lines)) == len(documents) + len(BAD)
    for part in parts:
        # read in pieces or whole, a part gives the same rows, all within its lines
        whole = read_part_rows(replace(part, pieces=()), read)
        assert read_part_rows(part, read) == whole
        assert all(part.first_line <= row["line"] <= part.last_line for row in whole)
        assert all(row["part_rows"] == part.n_records == len(whole) for row in whole)
        if piece_size and piece_size < part_size and part.n_records > piece_size:
            assert len(part.pieces) > 1
    good = {row["id"]: row["text"] for row in rows if row["error"] is None}
    assert good == documents
    assert Counter(row["error"] for row in rows if row["error"]) == Counter(r for _, r in BAD)
    assert json.loads(next(r for r in rows if r["id"] == "doc-4")["meta"]) == {"ward": 1}
    # the same input cut the same way gives the same parts (what resuming relies on)
    assert plan_parts(list_inputs(tmp_path)[0], part_size, read, piece_size=piece_size) == parts


def test_parquet_input_and_folder_and_glob(tmp_path) -> None:
    documents = write_corpus(tmp_path / "a.jsonl", 30, bad=False)
    table = pa.table({"doc_id": [f"p-{i}" for i in range(25)], "body": ["aspirin"] * 25})
    (tmp_path / "sub").mkdir()
    pq.write_table(table, tmp_path / "sub" / "b.parquet", row_group_size=4)
    files = list_inputs(tmp_path)
    assert [(f.source, f.kind) for f in files] == [
        ("a.jsonl", "jsonl"),
        ("sub/b.parquet", "parquet"),
    ]
    assert [f.source for f in list_inputs(f"{tmp_path}/**/*.parquet")] == ["sub/b.parquet"]
    read = ReadSettings(text_field="body", id_field="doc_id")
    parts = plan_parts(files[1], 10, read, piece_size=3)
    assert [(p.first_line, p.last_line, len(p.pieces)) for p in parts] == [
        (1, 10, 4),
        (11, 20, 4),
        (21, 25, 2),
    ]
    rows = [row for part in parts for row in read_part_rows(part, read)]
    assert [row["id"] for row in rows] == table.column("doc_id").to_pylist()
    assert [row["line"] for row in rows] == list(range(1, 26))
    with pytest.raises(ValueError, match="no column 'text'"):
        plan_parts(files[1], 10, ReadSettings())
    assert len(documents) == 30


def test_a_shard_is_whole_or_absent(tmp_path, monkeypatch, ruler_dir) -> None:
    """A write killed half-way leaves no shard under its final name; the next run removes it."""
    write_corpus(tmp_path / "in.jsonl", 20, bad=False)
    (file,) = list_inputs(tmp_path / "in.jsonl")
    (part,) = plan_parts(file, 100)
    worker = PipelineWorker(str(ruler_dir))
    rows = pa.Table.from_pylist(worker.process_rows(read_part_rows(part, ReadSettings())))
    store = OutputStore(tmp_path / "out")
    store.prepare(docbin=False)

    def half_then_die(table, where, *args, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(pq, "write_table", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        store.write_part(part, rows, keep_text=True, docbin=False)
    assert store.done_parts() == set()
    assert len(list(store.shards.glob(".*.tmp-*"))) == 1
    monkeypatch.undo()
    assert store.prepare(docbin=False) == 1
    store.write_part(part, rows, keep_text=True, docbin=False)
    assert store.done_parts() == {part.part_id}
    assert pq.read_table(store.shards / f"{part.part_id}.parquet").num_rows == 20


def test_a_resumed_run_must_keep_its_settings_and_inputs(tmp_path) -> None:
    write_corpus(tmp_path / "in.jsonl", 5, bad=False)
    files = list_inputs(tmp_path / "in.jsonl")
    store = OutputStore(tmp_path / "out")
    store.prepare(docbin=False)
    settings = BatchSettings("p", "in", "out").resume_settings("/abs/p")
    assert store.check_manifest(settings, files) == []
    assert store.check_manifest(settings, files) == []  # the same again: fine
    with pytest.raises(ValueError, match="shard_size: 1000 then, 10 now"):
        store.check_manifest({**settings, "shard_size": 10}, files)
    write_corpus(tmp_path / "in.jsonl", 6, bad=False)
    with pytest.raises(ValueError, match=r"in\.jsonl changed"):
        store.check_manifest(settings, list_inputs(tmp_path / "in.jsonl"))
    with store.lock(), pytest.raises(OSError, match="Another batch run"), store.lock():
        pass


def test_the_worker_isolates_a_document_the_pipeline_fails_on(tmp_path, ruler_dir) -> None:
    """One document that makes the pipeline raise costs only itself (reason pipeline_error)."""
    from spacy.language import Language

    @Language.component("test_batch_fail_on_boom")
    def fail_on_boom(doc):
        if "boom" in doc.text:
            raise ValueError("boom")
        return doc

    nlp = spacy.load(ruler_dir)
    nlp.add_pipe("test_batch_fail_on_boom")
    nlp.to_disk(tmp_path / "failing")
    worker = PipelineWorker(str(tmp_path / "failing"), WorkerOptions(keep_text=False))
    texts = {"a": "aspirin gave me a rash", "b": "boom aspirin", "c": "metformin and nausea"}
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in texts.items())
    )
    (part,) = plan_parts(list_inputs(tmp_path / "in.jsonl")[0], 10)
    rows = worker.process_rows(read_part_rows(part, ReadSettings()))
    assert [(r["id"], r["error"]) for r in rows] == [
        ("a", None),
        ("b", "pipeline_error"),
        ("c", None),
    ]
    assert rows[1]["detail"] == "ValueError: boom"
    assert [e["text"] for e in rows[0]["entities"]] == ["aspirin", "rash"]
    assert all(r["text"] is None for r in rows)


# -- on a real local Ray ---------------------------------------------------------------------------


def test_a_few_hundred_documents_each_once_with_the_entities_of_nlp_pipe(
    tmp_path, ruler_dir, local_ray
) -> None:
    documents = write_corpus(tmp_path / "notes.jsonl", 400)
    output = tmp_path / "out"
    settings = BatchSettings(
        str(ruler_dir),
        str(tmp_path / "notes.jsonl"),
        str(output),
        actors=2,
        batch_size=16,
        part_size=50,
        max_chars=MAX_CHARS,
        progress=False,
    )
    summary = run_batch(settings)
    assert_exactly_once(output, ruler_dir, documents, bad=True)
    assert summary["run"]["parts_written"] == len(summary["shards"]) == 9
    assert summary["run"]["words"] == summary["totals"]["words"] > 0
    assert summary["run"]["words_per_second"] > 0
    rows = shard_rows(output)
    assert all(json.loads(row["meta"])["ward"] in (0, 1, 2) for row in rows)
    assert sum(s["entities"] for s in summary["shards"]) == sum(len(r["entities"]) for r in rows)
    # Rerunning the finished command does nothing and rewrites nothing.
    stamps = {p.name: p.stat().st_mtime_ns for p in (output / "shards").iterdir()}
    again = run_batch(settings)
    assert again["run"]["parts_written"] == 0 and again["run"]["parts_skipped"] == 9
    assert {p.name: p.stat().st_mtime_ns for p in (output / "shards").iterdir()} == stamps
    assert len(again["runs"]) == 2


def test_parquet_in_docbin_out(tmp_path, ruler_dir, local_ray) -> None:
    from spacy.tokens import DocBin

    rng = random.Random(3)
    documents = {f"n{i}": text_for(rng) for i in range(60)}
    table = pa.table({"note_id": list(documents), "note": list(documents.values())})
    pq.write_table(table, tmp_path / "notes.parquet", row_group_size=16)
    output = tmp_path / "out"
    run_batch(
        BatchSettings(
            str(ruler_dir),
            str(tmp_path / "notes.parquet"),
            str(output),
            text_field="note",
            id_field="note_id",
            part_size=25,
            docbin=True,
            keep_text=False,
            progress=False,
        )
    )
    rows = shard_rows(output)
    assert "text" not in rows[0] and sorted(r["id"] for r in rows) == sorted(documents)
    assert batch_entities(rows) == plain_entities(ruler_dir, documents)
    nlp = spacy.blank("en")
    docs = [
        doc
        for path in sorted((output / "docbin").glob("*.spacy"))
        for doc in DocBin().from_disk(path).get_docs(nlp.vocab)
    ]
    by_text = {doc.text: [(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in docs}
    plain = plain_entities(ruler_dir, documents)
    assert len(docs) == len(documents)
    assert by_text == {documents[k]: [e[:3] for e in v] for k, v in plain.items()}


def test_a_worker_killed_mid_run_loses_and_repeats_nothing(
    tmp_path, ruler_dir, local_ray, monkeypatch
) -> None:
    """The actor that meets doc-150 exits at once (os._exit) the first time: Ray Data restarts
    it and retries its batch, the run completes, every document once."""
    documents = write_corpus(tmp_path / "notes.jsonl", 300)
    marker = tmp_path / "crashed"
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"crash_on_id": "doc-150", "marker": str(marker)}))
    output = tmp_path / "out"
    summary = run_batch(
        BatchSettings(
            str(ruler_dir),
            str(tmp_path / "notes.jsonl"),
            str(output),
            actors=2,
            batch_size=10,
            part_size=40,
            max_chars=MAX_CHARS,
            progress=False,
        )
    )
    assert marker.is_file()  # the worker really died
    assert summary["run"]["parts_written"] == len(summary["shards"])
    assert_exactly_once(output, ruler_dir, documents, bad=True)


def test_a_worker_that_dies_without_retries_stops_the_run_and_the_rerun_completes(
    tmp_path, ruler_dir, local_ray, monkeypatch
) -> None:
    documents = write_corpus(tmp_path / "notes.jsonl", 200, bad=False)
    marker = tmp_path / "crashed"
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"crash_on_id": "doc-120", "marker": str(marker)}))
    output = tmp_path / "out"
    settings = BatchSettings(
        str(ruler_dir),
        str(tmp_path / "notes.jsonl"),
        str(output),
        actors=1,
        batch_size=10,
        part_size=20,
        max_retries=0,
        progress=False,
    )
    with pytest.raises(BatchRunError, match="Rerun the same command"):
        run_batch(settings)
    stopped = json.loads((output / "summary.json").read_text(encoding="utf8"))
    assert stopped["complete"] is False and stopped["error"]
    assert stopped["check"]["lost"] == stopped["check"]["duplicated"] == 0
    assert stopped["check"]["parts_done"] < stopped["check"]["parts"]
    monkeypatch.delenv(FAULTS_ENV)
    summary = run_batch(settings)
    assert summary["run"]["parts_skipped"] == stopped["check"]["parts_done"]
    assert_exactly_once(output, ruler_dir, documents, bad=False)


def test_medllm_ner_records_come_out_in_the_rows(tmp_path, tiny_model_dir, local_ray) -> None:
    """A real medllm_ner (tiny random Llama, float32): entities, rejections, parse errors and the
    whole record per document are the ones plain nlp.pipe gives."""
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "medllm_ner",
        config={
            "labels": ["DRUG", "ADVERSE_EVENT"],
            "generator": {
                "@misc": "medllm.HFGenerator.v1",
                "model": str(tiny_model_dir),
                "dtype": "float32",
                "max_new_tokens": 12,
                "batch_size": 4,
                "num_threads": 1,
            },
        },
    )
    nlp.to_disk(tmp_path / "medllm")
    rng = random.Random(5)
    documents = {f"m{i}": text_for(rng) for i in range(6)}
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in documents.items())
    )
    output = tmp_path / "out"
    run_batch(
        BatchSettings(
            str(tmp_path / "medllm"), str(tmp_path / "in.jsonl"), str(output), progress=False
        )
    )
    rows = {row["id"]: row for row in shard_rows(output)}
    assert sorted(rows) == sorted(documents)
    plain = spacy.load(tmp_path / "medllm")
    seen_problems = 0
    for key, doc in zip(documents, plain.pipe(documents.values()), strict=True):
        record = get_record(doc)
        row = rows[key]
        assert json.loads(row["medllm"])["medllm_ner"] == json.loads(json.dumps(record))
        assert [(r["text"], r["label"], r["reason"]) for r in row["rejected"]] == [
            (r["text"], r["label"], r["reason"]) for r in record["rejected"]
        ]
        assert row["parse_errors"] == len(record["parse_errors"])
        assert [(e["start"], e["end"], e["label"]) for e in row["entities"]] == [
            (e.start_char, e.end_char, e.label_) for e in doc.ents
        ]
        seen_problems += len(record["rejected"]) + len(record["parse_errors"])
    assert seen_problems > 0  # the random model's answers are rejected or unreadable: recorded
    summary = json.loads((output / "summary.json").read_text(encoding="utf8"))
    assert summary["totals"]["parse_errors"] == sum(r["parse_errors"] for r in rows.values())
    assert summary["totals"]["rejections"] == sum(len(r["rejected"]) for r in rows.values())


def served_pipeline(path: Path, base_url: str, model: str = "served") -> Path:
    """A medllm_ner pipeline on an OpenAI-compatible server, saved to `path`."""
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "medllm_ner",
        config={
            "labels": ["DRUG", "ADVERSE_EVENT"],
            "generator": {
                "@misc": "medllm.OpenAIGenerator.v1",
                "model": model,
                "base_url": base_url,
                "max_new_tokens": 32,
                "max_concurrency": 2,
                "max_prompt_tokens": 1500,
            },
        },
    )
    nlp.to_disk(path)
    return path


def test_a_served_pipeline_spreads_its_batches_over_the_endpoints(
    tmp_path, ruler_dir, local_ray
) -> None:
    """Two OpenAI-compatible endpoints (scripted HTTP servers that echo the text back): every
    piece of every document is sent once, both servers get a share, and what medllm_ner recorded
    (the echo is no JSON: a parse error per piece) is in each row."""
    from tests.servers import FakeOpenAIServer

    rng = random.Random(9)
    documents = {f"s{i}": text_for(rng) for i in range(40)}
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in documents.items())
    )
    pipeline = served_pipeline(tmp_path / "served", "http://127.0.0.1:9/v1")  # not a server
    with FakeOpenAIServer() as one, FakeOpenAIServer() as two:
        run_batch(
            BatchSettings(
                str(pipeline),
                str(tmp_path / "in.jsonl"),
                str(tmp_path / "out"),
                batch_size=5,  # one actor, 8 batches: it takes the two servers in turn
                endpoints=(one.base_url, two.base_url),
                progress=False,
            )
        )
        sent = [m["messages"][-1]["content"] for m in one.requests + two.requests]
        shares = (len(one.requests), len(two.requests))
    rows = shard_rows(tmp_path / "out")
    assert sorted(row["id"] for row in rows) == sorted(documents)
    chunks = {row["id"]: json.loads(row["medllm"])["medllm_ner"]["chunks"] for row in rows}
    pieces = [documents[key][c["start"] : c["end"]] for key, cs in chunks.items() for c in cs]
    assert sorted(sent) == sorted(pieces)  # each piece of each document once, to one server
    assert min(shares) >= 5, shares
    assert all(row["parse_errors"] == len(chunks[row["id"]]) > 0 for row in rows)
    assert all(row["entities"] == [] and row["doc_error"] is None for row in rows)
    with pytest.raises(ValueError, match="--endpoint needs"):
        run_batch(
            BatchSettings(
                str(ruler_dir), str(tmp_path / "in.jsonl"), str(tmp_path / "o2"), endpoints=("x",)
            )
        )


@pytest.mark.slow
def test_a_pipeline_served_by_llama_cpp(tmp_path, llama_server, local_ray) -> None:
    """The real llama.cpp server with SmolLM2: each document once, with the entities and records
    that medllm_ner gives in-process against the same server."""
    from tests.servers import LLAMA_SERVER_MODEL

    documents = {
        "a": "After starting Abilify I have nausea.",
        "b": "Aspirin gave me a rash and a headache.",
        "c": "Metformin 500 mg twice daily caused diarrhoea.",
        "d": "No side effects were reported after the knee surgery.",
    }
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in documents.items())
    )
    pipeline = served_pipeline(tmp_path / "served", llama_server, LLAMA_SERVER_MODEL)
    run_batch(
        BatchSettings(
            str(pipeline), str(tmp_path / "in.jsonl"), str(tmp_path / "out"), progress=False
        )
    )
    rows = {row["id"]: row for row in shard_rows(tmp_path / "out")}
    assert sorted(rows) == sorted(documents)
    plain = spacy.load(pipeline)
    for key, doc in zip(documents, plain.pipe(documents.values()), strict=True):
        row = rows[key]
        record = json.loads(row["medllm"])["medllm_ner"]
        assert row["doc_error"] is None and record["chunks"]
        responses = [c.get("n_emitted") for c in record["chunks"]]
        assert responses == [c.get("n_emitted") for c in get_record(doc)["chunks"]]
        assert [(e["start"], e["end"], e["label"]) for e in row["entities"]] == [
            (e.start_char, e.end_char, e.label_) for e in doc.ents
        ]


# -- the command, killed -------------------------------------------------------------------------


def session_processes(session: int) -> list[int]:
    """The live processes of a session (the killed driver's local Ray: GCS, raylet, workers)."""
    listing = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True)
    found = []
    for line in listing.stdout.splitlines():
        pid, sid, stat = line.split()[:3]
        if int(sid) == session and not stat.startswith("Z"):
            found.append(int(pid))
    return found


def stop_session(session: int, grace: float = 10.0) -> None:
    """Give Ray's processes `grace` seconds to follow their killed driver, then SIGKILL the rest
    (two agents of a local Ray outlive a SIGKILLed driver); only this session's processes."""
    deadline = time.monotonic() + grace
    while session_processes(session) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in session_processes(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def batch_command(pipeline: Path, source: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "spacy_medllm",
        "batch",
        str(pipeline),
        str(source),
        str(output),
        "--actors",
        "2",
        "--num-cpus",
        "2",
        "--max-chars",
        str(MAX_CHARS),
        *extra,
    ]


def test_ray_is_not_imported_by_the_package_or_the_cli() -> None:
    code = "import sys, spacy_medllm, spacy_medllm.cli; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.slow
def test_the_driver_killed_mid_run_then_the_same_command_finishes_the_job(
    tmp_path, ruler_dir
) -> None:
    """SIGKILL to `python -m spacy_medllm batch` after a few shards: the rerun of the same
    command keeps those shards, does the rest, and every document is there once."""
    documents = write_corpus(tmp_path / "notes.jsonl", 300)
    output = tmp_path / "out"
    command = batch_command(
        ruler_dir, tmp_path / "notes.jsonl", output, "--shard-size", "20", "--batch-size", "5"
    )
    env = {**os.environ, FAULTS_ENV: json.dumps({"sleep_per_batch": 0.3})}
    log = (tmp_path / "killed.log").open("w")
    driver = subprocess.Popen(
        command, env=env, stdout=log, stderr=log, cwd=ROOT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while len(list((output / "shards").glob("*.parquet"))) < 3:
            assert driver.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "no shard written in time"
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        stop_session(driver.pid)
        log.close()
    kept = {p.name: p.stat().st_mtime_ns for p in (output / "shards").glob("*.parquet")}
    assert 3 <= len(kept) < 16
    for path in (output / "shards").glob("*.parquet"):
        assert pq.read_table(path).num_rows > 0  # whole files only under the final name
    assert not (output / "summary.json").exists()

    result = subprocess.run([*command, "--no-progress"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lost 0, duplicated 0" in result.stdout
    summary = json.loads((output / "summary.json").read_text(encoding="utf8"))
    assert summary["run"]["parts_skipped"] == len(kept)
    assert summary["run"]["parts_written"] == 16 - len(kept)
    assert {n: (output / "shards" / n).stat().st_mtime_ns for n in kept} == kept
    assert_exactly_once(output, ruler_dir, documents, bad=True)
