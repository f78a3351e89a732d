"""The batch worker: a saved pipeline over one batch of documents, as output rows (Arrow).

`PipelineWorker` is the callable class Ray Data's `map_batches` runs in an actor pool: the
pipeline loads once per actor (`spacy.load` in `__init__`), and each call turns a batch of rows
from `inputs.read_part_rows` into output rows. Bad records pass through untouched (they go to the
errors file); a batch on which the pipeline raises is run again one document at a time, so one
bad document costs only itself (reason `pipeline_error`). `doc_fields` is the one place where a
Doc becomes a row: the entities with offsets, labels and scores, other span groups, and what
`medllm_ner` recorded (rejected entities, parse errors, a per-document error).

Fault injection for the tests (`FAULTS_ENV`, a JSON object in the environment of the workers):
`{"sleep_per_batch": 0.2}` slows every batch down; `{"crash_on_id": "doc-17", "marker": PATH}`
makes the actor that meets document "doc-17" exit at once (os._exit, as a SIGKILL would), the
first time only (the marker file records that it happened).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from spacy_medllm.pipeline.component import RECORD_ATTR, get_record
from spacy_medllm.scale.inputs import PIPELINE_ERROR, read_schema

FAULTS_ENV = "SPACY_MEDLLM_BATCH_FAULTS"
CONFIDENCE_ATTR = "medllm_confidence"


@dataclass(frozen=True)
class WorkerOptions:
    """What the worker returns besides the entities."""

    keep_text: bool = True  # the text in the output rows
    docbin: bool = False  # each Doc serialised (a one-Doc DocBin) for the DocBin shards
    nlp_batch_size: int = 64  # nlp.pipe's batch size inside a batch
    # OpenAI-compatible servers that replace the base_url of the pipeline's OpenAI-backend
    # medllm_ner components; an actor sends its batches to them in turn.
    endpoints: tuple[str, ...] = ()


def output_schema() -> Any:
    """The Arrow schema of the rows a worker returns: the read columns and the results."""
    import pyarrow as pa

    def spans_type(*extra: tuple[str, Any]) -> Any:
        return pa.list_(
            pa.struct(
                [
                    *extra,
                    ("start", pa.int64()),
                    ("end", pa.int64()),
                    ("label", pa.string()),
                    ("text", pa.string()),
                    ("score", pa.float64()),
                ]
            )
        )

    rejected = pa.list_(
        pa.struct(
            [
                ("component", pa.string()),
                ("text", pa.string()),
                ("label", pa.string()),
                ("reason", pa.string()),
                ("detail", pa.string()),
            ]
        )
    )
    return pa.schema(
        [
            *read_schema(),
            ("n_words", pa.int64()),
            ("entities", spans_type()),
            ("spans", spans_type(("key", pa.string()))),
            ("rejected", rejected),
            ("parse_errors", pa.int64()),
            ("doc_error", pa.string()),
            ("medllm", pa.string()),
            ("docbin", pa.binary()),
        ]
    )


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _confidence(span: Any) -> float | None:
    if span.has_extension(CONFIDENCE_ATTR):
        value = span._.get(CONFIDENCE_ATTR)
        return None if value is None else float(value)
    return None


def doc_fields(doc: Any) -> dict[str, Any]:
    """A processed Doc as output fields: entities, span groups, what medllm_ner recorded."""
    entities = [
        {
            "start": e.start_char,
            "end": e.end_char,
            "label": e.label_,
            "text": e.text,
            "score": _confidence(e),
        }
        for e in doc.ents
    ]
    spans = []
    for key, group in doc.spans.items():
        scores = group.attrs.get("scores") if hasattr(group, "attrs") else None
        for i, span in enumerate(group):
            score = _confidence(span)
            if score is None and scores is not None and i < len(scores):
                score = float(scores[i])
            spans.append(
                {
                    "key": key,
                    "start": span.start_char,
                    "end": span.end_char,
                    "label": span.label_,
                    "text": span.text,
                    "score": score,
                }
            )
    store = doc._.get(RECORD_ATTR) if doc.has_extension(RECORD_ATTR) else None
    rejected, parse_errors, errors = [], 0, []
    for name in sorted(store or {}):
        record = get_record(doc, name) or {}
        for item in record.get("rejected") or []:
            rejected.append(
                {
                    "component": name,
                    "text": _as_text(item.get("text")),
                    "label": _as_text(item.get("label")),
                    "reason": item.get("reason"),
                    "detail": item.get("detail") or "",
                }
            )
        parse_errors += len(record.get("parse_errors") or [])
        if record.get("error"):
            errors.append(f"{name}: {record['error']}")
    return {
        "n_words": sum(1 for token in doc if not token.is_space),
        "entities": entities,
        "spans": spans,
        "rejected": rejected,
        "parse_errors": parse_errors,
        "doc_error": "; ".join(errors) or None,
        "medllm": json.dumps(store, ensure_ascii=False, default=str) if store else None,
    }


class Faults:
    """Test-only fault injection, read from `FAULTS_ENV` (see the module docstring)."""

    def __init__(self, spec: str | None) -> None:
        settings = json.loads(spec) if spec else {}
        self.sleep = float(settings.get("sleep_per_batch", 0.0))
        self.crash_on_id = settings.get("crash_on_id")
        self.marker = settings.get("marker")

    def before(self, ids: list[str]) -> None:
        if self.sleep:
            time.sleep(self.sleep)
        if self.crash_on_id is not None and self.crash_on_id in ids and self.marker:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os._exit(13)


def openai_components(config: Any) -> list[str]:
    """The components of a pipeline config whose generator is an OpenAI-compatible client."""
    return [
        name
        for name, block in config.get("components", {}).items()
        if isinstance(block.get("generator"), dict)
        and str(block["generator"].get("@misc", "")).startswith("medllm.OpenAIGenerator")
    ]


def load_pipelines(pipeline: str, endpoints: tuple[str, ...] = ()) -> list[Any]:
    """The pipeline, or with `endpoints` one copy per endpoint (its OpenAI-backend components
    pointed there: a served pipeline holds no model, so copies are cheap)."""
    import spacy

    nlp = spacy.load(pipeline)
    if not endpoints:
        return [nlp]
    names = openai_components(nlp.config)
    if not names:
        raise ValueError(
            f"--endpoint needs a pipeline whose medllm_ner uses an OpenAI-compatible server "
            f"(assemble --base-url); {pipeline} has none"
        )
    return [
        spacy.load(pipeline, config={f"components.{n}.generator.base_url": url for n in names})
        for url in endpoints
    ]


class PipelineWorker:
    """Runs a saved pipeline over batches of rows; the pipeline loads once, in the constructor."""

    def __init__(self, pipeline: str, options: WorkerOptions | None = None) -> None:
        self.options = options or WorkerOptions()
        self.pipelines = load_pipelines(pipeline, self.options.endpoints)
        self.nlp = self.pipelines[0]
        # Actors start at different endpoints (by process id) and then take them in turn.
        self.calls = os.getpid() % len(self.pipelines)
        self.faults = Faults(os.environ.get(FAULTS_ENV))

    def _docs(self, texts: list[str]) -> list[Any]:
        """The processed Docs, or for a document the pipeline raised on, the exception."""
        try:
            return list(self.nlp.pipe(texts, batch_size=self.options.nlp_batch_size))
        except Exception:
            results: list[Any] = []
            for text in texts:  # one at a time: find the document that fails, keep the others
                try:
                    results.append(self.nlp(text))
                except Exception as error:
                    results.append(error)
            return results

    def process_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Output rows for input rows (same order): results for documents, bad rows as they are."""
        todo = [i for i, row in enumerate(rows) if row["error"] is None]
        self.faults.before([rows[i]["id"] for i in todo])
        self.nlp = self.pipelines[self.calls % len(self.pipelines)]
        self.calls += 1
        docs = self._docs([rows[i]["text"] for i in todo])
        out = [dict(row) for row in rows]
        for i, doc in zip(todo, docs, strict=True):
            row = out[i]
            if isinstance(doc, Exception):
                row.update(error=PIPELINE_ERROR, detail=f"{type(doc).__name__}: {doc}"[:500])
                continue
            row.update(doc_fields(doc))
            if self.options.docbin:
                from spacy.tokens import DocBin

                row["docbin"] = DocBin(store_user_data=True, docs=[doc]).to_bytes()
        if not self.options.keep_text:
            for row in out:
                row["text"] = None
        return out

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        return pa.Table.from_pylist(self.process_rows(batch.to_pylist()), schema=output_schema())
