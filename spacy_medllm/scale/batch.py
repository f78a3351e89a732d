"""Batch extraction on Ray Data: a saved pipeline over JSONL or Parquet shards, resumable.

`run_batch(BatchSettings(pipeline, input, output))` plans the input's parts (`inputs`), skips the
parts whose shard the output folder already holds (`store`), and streams the rest through Ray
Data: the parts are read by light tasks, the documents run through `worker.PipelineWorker` in an
actor pool of `actors` copies of the pipeline (`map_batches`; each loads the pipeline once), and
the driver writes each part's shard the moment all its documents are back. With no `address` it
starts a local Ray on this machine (and stops it at the end); with one it joins a running cluster
(then the pipeline and the input must be readable at the same paths on every node). A Ray that
is already initialised in the process is used as it is (and left running).

Exactly once: a part's shard is written atomically and last, so a driver or worker killed at any
moment loses nothing that a rerun of the same command does not redo, and writes nothing twice.
Ray Data restarts a killed actor and retries its batch (`max_retries` times: a document that
kills its worker each time stops the run instead of looping). At the end, the run checks every
done part (lost, duplicated, stray records), gathers `errors.jsonl` and writes `summary.json`.

Ray is imported only inside the functions here: importing this module loads no Ray.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spacy_medllm.scale.inputs import Part, ReadSettings, list_inputs, plan_parts
from spacy_medllm.scale.store import OutputStore
from spacy_medllm.scale.worker import FAULTS_ENV, WorkerOptions
from spacy_medllm.util.progress import say

logger = logging.getLogger("spacy_medllm")


class BatchRunError(RuntimeError):
    """The run stopped before every part was done; rerunning the same command continues it."""


@dataclass
class BatchSettings:
    """Everything a batch run needs; the fields marked "resume" must stay the same on a rerun."""

    pipeline: str  # resume: a saved pipeline folder or an installed package
    input: str  # a JSONL/Parquet file, a folder or a glob
    output: str  # the output folder (see `store`)
    address: str | None = None  # a running Ray cluster; None: a local Ray on this machine
    actors: int = 1  # copies of the pipeline (Ray actors)
    cpus_per_actor: float = 1.0
    num_gpus: float = 0.0  # GPUs per actor
    num_cpus: int | None = None  # local Ray only: CPUs it may use (default: all)
    batch_size: int = 64  # documents per actor call
    part_size: int = 1000  # resume: input lines per part (per output shard)
    text_field: str = "text"  # resume
    id_field: str | None = "id"  # resume
    max_chars: int = 1_000_000  # resume: longer texts go to the errors file
    keep_text: bool = True  # resume: the text in the shards
    docbin: bool = False  # resume: DocBin shards too
    max_retries: int = 3  # times a batch is retried after its actor died
    endpoints: tuple[str, ...] = ()  # OpenAI-compatible servers for a served pipeline, in turn
    progress: bool = True

    def resume_settings(self, pipeline: str) -> dict[str, Any]:
        return {
            "pipeline": pipeline,
            "shard_size": self.part_size,
            "text_field": self.text_field,
            "id_field": self.id_field,
            "max_chars": self.max_chars,
            "keep_text": self.keep_text,
            "docbin": self.docbin,
        }

    def validate(self) -> None:
        for name in ("actors", "batch_size", "part_size", "max_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.cpus_per_actor <= 0 or self.num_gpus < 0 or self.max_retries < 0:
            raise ValueError("cpus_per_actor must be > 0, num_gpus and max_retries >= 0")


def resolve_pipeline(pipeline: str) -> str:
    """A saved pipeline folder (as an absolute path) or the name of an installed package."""
    path = Path(pipeline)
    if path.exists():
        if not (path / "config.cfg").is_file():
            raise FileNotFoundError(f"{pipeline} is not a saved spaCy pipeline (no config.cfg)")
        return str(path.resolve())
    import spacy

    if spacy.util.is_package(pipeline):
        return pipeline
    raise FileNotFoundError(f"Can't find the pipeline {pipeline!r}: no such folder or package")


def check_endpoints(pipeline: str) -> None:
    """Refuse --endpoint for a pipeline without an OpenAI-backend component, before Ray starts."""
    import spacy

    from spacy_medllm.scale.worker import openai_components

    path = Path(pipeline)
    config = spacy.util.load_config(path / "config.cfg") if path.is_dir() else None
    if config is not None and not openai_components(config):
        raise ValueError(
            f"--endpoint needs a pipeline whose medllm_ner uses an OpenAI-compatible server "
            f"(assemble --base-url); {pipeline} has none"
        )


def plan(settings: BatchSettings) -> tuple[list[Any], list[Part]]:
    """The input files and all their parts, in input order."""
    read = _read_settings(settings)
    files = list_inputs(settings.input)
    return files, [
        part
        for file in files
        for part in plan_parts(file, settings.part_size, read, piece_size=settings.batch_size)
    ]


def _read_settings(settings: BatchSettings) -> ReadSettings:
    return ReadSettings(settings.text_field, settings.id_field or None, settings.max_chars)


def _init_ray(settings: BatchSettings) -> None:
    import ray

    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if settings.address:
        ray.init(address=settings.address, **quiet)
    else:
        ray.init(
            address="local",
            num_cpus=settings.num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            **quiet,
        )


def _quiet_ray_data() -> None:
    """Ray Data's own console lines (plans, timings) off: the run shows its own progress and
    summary. Its log file in the Ray session folder keeps everything."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts documents, Ray's would count blocks
    context.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ == "PlainRayHandler" or (
            isinstance(handler, logging.StreamHandler)
            and not isinstance(handler, logging.FileHandler)
        ):
            handler.setLevel(logging.WARNING)


def _retry_args(settings: BatchSettings) -> dict[str, Any]:
    """max_task_retries for the actor pool, where this Ray still takes it as a remote argument.

    Ray Data's default retries a batch without end after its actor died; a document that kills
    its worker every time would then loop forever, so the run stops after `max_retries` instead.
    """
    import inspect

    import ray.data

    parameters = inspect.signature(ray.data.Dataset.map_batches).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return {"max_task_retries": settings.max_retries}
    logger.warning("This Ray takes no max_task_retries: a batch is retried as Ray Data decides")
    return {}


def _check_resources(settings: BatchSettings) -> dict[str, float]:
    import ray

    resources = {k: float(v) for k, v in ray.cluster_resources().items() if "node" not in k}
    if settings.num_gpus and resources.get("GPU", 0.0) < settings.num_gpus:
        raise ValueError(
            f"--num-gpus {settings.num_gpus} per actor, but the Ray cluster has "
            f"{resources.get('GPU', 0.0):g} GPU(s)"
        )
    needed = settings.actors * settings.cpus_per_actor
    if not settings.address and resources.get("CPU", 0.0) < needed:
        raise ValueError(
            f"{settings.actors} actor(s) of {settings.cpus_per_actor:g} CPU need {needed:g} CPUs; "
            f"the local Ray has {resources.get('CPU', 0.0):g} (--num-cpus)"
        )
    return resources


def _fault_env() -> dict[str, Any]:
    """The tests' fault injection (worker.FAULTS_ENV), forwarded to the actors when it is set."""
    value = os.environ.get(FAULTS_ENV)
    return {"runtime_env": {"env_vars": {FAULTS_ENV: value}}} if value else {}


def build_dataset(settings: BatchSettings, pipeline: str, parts: list[Part]) -> Any:
    """The Ray Data pipeline: part descriptors -> records (tasks) -> output rows (actor pool)."""
    import ray
    import ray.data

    from spacy_medllm.scale.inputs import read_pieces_batch
    from spacy_medllm.scale.worker import PipelineWorker

    _quiet_ray_data()
    # One block per piece (batch_size lines of a part), so that every actor gets work.
    items = [piece.to_dict() for part in parts for piece in part.piece_list()]
    actors = max(1, min(settings.actors, len(items)))
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    # Reading is light: no CPU reserved (so that the actors can hold every CPU), at most as many
    # reads at once as there are actors.
    dataset = dataset.map_batches(
        read_pieces_batch,
        fn_kwargs={"read": _read_settings(settings)},
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=actors),
    )
    options = WorkerOptions(
        keep_text=settings.keep_text,
        docbin=settings.docbin,
        nlp_batch_size=settings.batch_size,
        endpoints=tuple(settings.endpoints),
    )
    with warnings.catch_warnings():  # "ray_remote_args is deprecated": see _retry_args
        warnings.simplefilter("ignore", DeprecationWarning)
        return dataset.map_batches(
            PipelineWorker,
            fn_constructor_kwargs={"pipeline": pipeline, "options": options},
            batch_size=settings.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=settings.cpus_per_actor,
            num_gpus=settings.num_gpus or None,
            **_retry_args(settings),
            **_fault_env(),
        )


def _split_by_part(table: Any) -> list[tuple[str, Any]]:
    import pyarrow.compute as pc

    column = table.column("part")
    return [(name, table.filter(pc.equal(column, name))) for name in pc.unique(column).to_pylist()]


def _stream(settings: BatchSettings, dataset: Any, parts: list[Part], store: OutputStore) -> dict:
    """Consume the dataset; write each part when its last row is back. Returns the run's counts."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from tqdm import tqdm

    by_id = {part.part_id: part for part in parts}
    buffers: dict[str, list[Any]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    run = {"parts_written": 0, "documents": 0, "errors": 0, "words": 0, "rejections": 0}
    total = sum(part.n_records for part in parts)
    start = time.perf_counter()
    first: tuple[float, int] | None = None  # when the first rows came back, and their words
    bar = tqdm(total=total, unit="doc", disable=not settings.progress, dynamic_ncols=True)
    try:
        for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            if first is None:
                words = pc.sum(pc.fill_null(block.column("n_words"), 0)).as_py() or 0
                first = (time.perf_counter(), words)
            for part_id, rows in _split_by_part(block):
                buffers[part_id].append(rows)
                counts[part_id] += rows.num_rows
                part = by_id[part_id]
                if counts[part_id] < part.n_records:
                    continue
                stats = store.write_part(
                    part,
                    pa.concat_tables(buffers.pop(part_id)),
                    settings.keep_text,
                    settings.docbin,
                )
                run["parts_written"] += 1
                for key in ("documents", "errors", "words", "rejections"):
                    run[key] += stats[key]
            bar.update(block.num_rows)
            seconds = time.perf_counter() - start
            bar.set_postfix(words_s=f"{run['words'] / seconds:,.0f}", shards=run["parts_written"])
    finally:
        bar.close()
    end = time.perf_counter()
    seconds = end - start
    run["processing_seconds"] = seconds
    run["words_per_second"] = run["words"] / seconds if seconds > 0 else None
    run["documents_per_second"] = run["documents"] / seconds if seconds > 0 else None
    # Startup (actors loading the pipeline) apart from the rate once the first rows are back.
    run["first_rows_seconds"] = first[0] - start if first else None
    steady = end - first[0] if first else 0.0
    run["steady_words_per_second"] = (
        (run["words"] - first[1]) / steady if first and steady else None
    )
    unfinished = sorted(set(by_id) - set(store.done_parts()))
    if unfinished:
        raise BatchRunError(f"{len(unfinished)} part(s) did not come back, e.g. {unfinished[0]}")
    return run


def _run_on_ray(
    settings: BatchSettings, pipeline: str, parts: list[Part], store: OutputStore
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Process `parts` on Ray; returns the run's counts and a description of the Ray used."""
    import ray

    started_here = not ray.is_initialized()
    clock = time.perf_counter()
    if started_here:
        _init_ray(settings)
    try:
        ray_info: dict[str, Any] = {
            "address": settings.address or "local",
            "started_here": started_here,
            "start_seconds": time.perf_counter() - clock,
            "nodes": len([node for node in ray.nodes() if node.get("Alive")]),
            "resources": _check_resources(settings),
            "ray_version": ray.__version__,
        }
        dataset = build_dataset(settings, pipeline, parts)
        return _stream(settings, dataset, parts, store), ray_info
    finally:
        if started_here:
            ray.shutdown()


def _totals(shards: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {
        key: sum(s[key] for s in shards)
        for key in ("records", "documents", "errors", "words", "entities", "rejections")
    }
    totals["parse_errors"] = sum(s["parse_errors"] for s in shards)
    totals["doc_errors"] = sum(s["doc_errors"] for s in shards)
    for key in ("errors_by_reason", "rejections_by_reason"):
        merged: dict[str, int] = defaultdict(int)
        for shard in shards:
            for reason, n in shard[key].items():
                merged[reason] += n
        totals[key] = dict(sorted(merged.items()))
    return totals


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else "no message"


def run_batch(settings: BatchSettings) -> dict[str, Any]:
    """Run (or resume) a batch extraction; returns the summary also written to summary.json.

    Raises BatchRunError when the run stopped early (the summary says how far it got).
    """
    settings.validate()
    for module in ("ray", "pyarrow"):
        if importlib.util.find_spec(module) is None:
            raise ImportError(
                f"batch needs Ray Data and pyarrow ({module} is missing): "
                "pip install 'spacy-medllm[scale]'"
            )
    began, clock = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    pipeline = resolve_pipeline(settings.pipeline)
    if settings.endpoints:
        check_endpoints(pipeline)
    files, parts = plan(settings)
    store = OutputStore(settings.output)
    with store.lock():
        removed = store.prepare(settings.docbin)
        missing_inputs = store.check_manifest(settings.resume_settings(pipeline), files)
        done = store.done_parts()
        pending = [part for part in parts if part.part_id not in done]
        say(
            f"{len(files)} input file(s), {len(parts)} part(s) of up to {settings.part_size} "
            f"lines: {len(parts) - len(pending)} done before, {len(pending)} to run"
            + (f"; removed {removed} half-written file(s)" if removed else ""),
            settings.progress,
        )
        run: dict[str, Any] = {"parts_written": 0, "documents": 0, "errors": 0, "words": 0}
        ray_info: dict[str, Any] | None = None
        failure: BaseException | None = None
        if pending:
            try:
                run, ray_info = _run_on_ray(settings, pipeline, pending, store)
            except Exception as error:  # the summary records how far the run got
                failure = error
        run.update(
            parts_skipped=len(parts) - len(pending),
            temp_files_removed=removed,
            started=began,
            seconds=time.perf_counter() - clock,
        )
        n_errors = store.gather_errors(parts)
        check = store.verify(parts)
        shards = store.shard_stats(parts)
        complete = failure is None and check["parts_done"] == len(parts)
        summary = {
            "complete": complete,
            "error": None if failure is None else f"{type(failure).__name__}: {failure}",
            "pipeline": pipeline,
            "input": settings.input,
            "output": str(Path(settings.output).resolve()),
            "settings": asdict(settings),
            "ray": ray_info,
            "run": run,
            "totals": _totals(shards),
            "check": check,
            "errors_file_lines": n_errors,
            "missing_inputs": missing_inputs,
            "shards": shards,
        }
        summary["runs"] = [*store.previous_runs(), {**run, "complete": complete}]
        path = store.write_summary(summary)
    if failure is not None:
        raise BatchRunError(
            f"The run stopped ({type(failure).__name__}: {_first_line(failure)}); "
            f"{check['parts_done']} of {len(parts)} parts are done. Rerun the same command to "
            f"continue (summary: {path})"
        ) from failure
    return summary
