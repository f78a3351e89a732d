"""The output folder of a batch run: shards written atomically, the manifest, errors, the summary.

    OUTPUT/
      shards/<part>.parquet    one per input part: its documents with entities (the commit mark)
      errors/<part>.jsonl      the part's bad records with the reason (only if it has any)
      docbin/<part>.spacy      the part's Docs (with --docbin)
      errors.jsonl             every bad record of the run, gathered at the end
      manifest.json            the settings and input fingerprints a resumed run must keep
      summary.json             documents, words/s, errors and rejections per shard
      .lock                    held while a run writes (a second run on the folder stops)

Every file is written to a temporary name beside it and moved into place with `os.replace`, so a
file is either whole or absent. A part is done exactly when its Parquet shard exists: the shard is
written last, after the part's errors and DocBin, so a run killed at any moment leaves each part
either done or redone by the next run (which overwrites anything the killed run left).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spacy_medllm.scale.inputs import InputFile, Part

SHARDS_DIR = "shards"
ERRORS_DIR = "errors"
DOCBIN_DIR = "docbin"
ERRORS_FILE = "errors.jsonl"
MANIFEST_FILE = "manifest.json"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
STATS_KEY = b"spacy_medllm.batch"
# Columns of a shard, in order (text only with keep_text).
SHARD_COLUMNS = (
    "id",
    "source",
    "line",
    "text",
    "meta",
    "n_words",
    "entities",
    "spans",
    "rejected",
    "parse_errors",
    "doc_error",
    "medllm",
)


class OutputLocked(OSError):
    """Another run is writing to the same output folder."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and os.replace: whole or absent."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def atomic_write_table(path: Path, table: Any) -> None:
    """Write an Arrow table as Parquet through a temporary file and os.replace."""
    import pyarrow.parquet as pq

    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, temporary)
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class OutputStore:
    """The output folder of one batch run (see the module docstring for its layout)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.shards = self.root / SHARDS_DIR
        self.errors = self.root / ERRORS_DIR
        self.docbins = self.root / DOCBIN_DIR

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock (released by the OS when the process dies, even by SIGKILL)."""
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / LOCK_FILE, "w")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputLocked(
                    f"Another batch run is writing to {self.root}; wait for it or choose "
                    "another output folder"
                ) from None
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            handle.close()

    def prepare(self, docbin: bool) -> int:
        """Create the folders and delete temporary files a killed run left; returns how many."""
        removed = 0
        for folder in (self.root, self.shards, self.errors, self.docbins):
            if folder is self.docbins and not docbin:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            for leftover in folder.glob(".*.tmp-*"):
                leftover.unlink()
                removed += 1
        return removed

    # -- the manifest ------------------------------------------------------------------------------

    def check_manifest(self, settings: dict[str, Any], files: Sequence[InputFile]) -> list[str]:
        """Refuse to resume with other settings or changed inputs; record new inputs.

        Returns the sources of earlier runs that are no longer among the inputs.
        """
        path = self.root / MANIFEST_FILE
        previous: dict[str, Any] = {}
        if path.is_file():
            previous = json.loads(path.read_text(encoding="utf8"))
            changed = sorted(
                key
                for key in set(settings) | set(previous.get("settings", {}))
                if previous.get("settings", {}).get(key) != settings.get(key)
            )
            if changed:
                detail = ", ".join(
                    f"{key}: {previous['settings'].get(key)!r} then, {settings.get(key)!r} now"
                    for key in changed
                )
                raise ValueError(
                    f"{self.root} holds a run with other settings ({detail}); rerun with the "
                    "same settings to resume, or choose another output folder"
                )
        known = dict(previous.get("inputs", {}))
        for file in files:
            seen = known.get(file.source)
            if seen is not None and seen["fingerprint"] != file.fingerprint:
                raise ValueError(
                    f"The input {file.source} changed since {self.root} was started (size or "
                    "content); its shards would no longer match it. Use another output folder, "
                    "or restore the file"
                )
            known[file.source] = {"size": file.size, "fingerprint": file.fingerprint}
        missing = sorted(set(known) - {file.source for file in files})
        manifest = {"version": 1, "settings": settings, "inputs": known}
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        atomic_write_bytes(path, text.encode("utf8"))
        return missing

    # -- parts -------------------------------------------------------------------------------------

    def done_parts(self) -> set[str]:
        """The parts whose shard exists."""
        if not self.shards.is_dir():
            return set()
        return {path.name[: -len(".parquet")] for path in self.shards.glob("[!.]*.parquet")}

    def write_part(
        self,
        part: Part,
        rows: Any,
        keep_text: bool,
        docbin: bool,
    ) -> dict[str, Any]:
        """Write one part from the worker's rows (an Arrow table): errors, DocBin, then the shard.

        Returns the part's statistics (also stored in the shard's Parquet metadata).
        """
        import pyarrow.compute as pc

        rows = rows.sort_by("line")
        lines = rows.column("line").to_pylist()
        if len(lines) != part.n_records or len(set(lines)) != len(lines):
            raise RuntimeError(
                f"Part {part.part_id} came back with {len(lines)} rows ({len(set(lines))} lines) "
                f"for {part.n_records} records; not written"
            )
        failed = rows.filter(pc.is_valid(rows.column("error")))
        documents = rows.filter(pc.is_null(rows.column("error")))
        error_path = self.errors / f"{part.part_id}.jsonl"
        if failed.num_rows:
            lines_out = [
                json.dumps(
                    {
                        "id": row["id"],
                        "source": row["source"],
                        "line": row["line"],
                        "reason": row["error"],
                        "detail": row["detail"],
                    },
                    ensure_ascii=False,
                )
                for row in failed.select(["id", "source", "line", "error", "detail"]).to_pylist()
            ]
            atomic_write_bytes(error_path, ("\n".join(lines_out) + "\n").encode("utf8"))
        elif error_path.exists():
            error_path.unlink()  # from a killed run whose part failed differently (a crash)
        if docbin:
            from spacy.tokens import DocBin

            merged = DocBin(store_user_data=True)
            for data in documents.column("docbin").to_pylist():
                merged.merge(DocBin(store_user_data=True).from_bytes(data))
            atomic_write_bytes(self.docbins / f"{part.part_id}.spacy", merged.to_bytes())
        columns = [c for c in SHARD_COLUMNS if keep_text or c != "text"]
        shard = documents.select(columns)
        stats = part_stats(part, documents, failed)
        metadata = {STATS_KEY: json.dumps(stats).encode("utf8")}
        shard = shard.replace_schema_metadata(metadata)
        atomic_write_table(self.shards / f"{part.part_id}.parquet", shard)
        return stats

    # -- the end of a run --------------------------------------------------------------------------

    def shard_stats(self, parts: Sequence[Part]) -> list[dict[str, Any]]:
        """The statistics of every done part of `parts` (from the shards' metadata), in order."""
        import pyarrow.parquet as pq

        stats = []
        for part in parts:
            path = self.shards / f"{part.part_id}.parquet"
            if path.is_file():
                metadata = pq.read_schema(path).metadata or {}
                stats.append(json.loads(metadata[STATS_KEY]))
        return stats

    def gather_errors(self, parts: Sequence[Part]) -> int:
        """Write errors.jsonl from the done parts' error files (in input order); returns lines."""
        done = self.done_parts()
        chunks, count = [], 0
        for part in parts:
            path = self.errors / f"{part.part_id}.jsonl"
            if part.part_id in done and path.is_file():
                text = path.read_text(encoding="utf8")
                chunks.append(text)
                count += text.count("\n")
        atomic_write_bytes(self.root / ERRORS_FILE, "".join(chunks).encode("utf8"))
        return count

    def verify(self, parts: Sequence[Part]) -> dict[str, Any]:
        """Check exactly-once over the done parts: every record of a part once, in its shard or
        among its errors, at a line of that part. Counts lost, duplicated and stray records, and
        document ids that occur more than once (ids given in the input)."""
        import pyarrow.parquet as pq

        done = self.done_parts()
        lost = duplicated = stray = 0
        ids: Counter[str] = Counter()
        for part in parts:
            if part.part_id not in done:
                continue
            table = pq.read_table(
                self.shards / f"{part.part_id}.parquet", columns=["id", "source", "line"]
            )
            sources, lines = table.column("source").to_pylist(), table.column("line").to_pylist()
            keys = list(zip(sources, lines, strict=True))
            ids.update(table.column("id").to_pylist())
            error_path = self.errors / f"{part.part_id}.jsonl"
            if error_path.is_file():
                for line in error_path.read_text(encoding="utf8").splitlines():
                    record = json.loads(line)
                    keys.append((record["source"], record["line"]))
            counts = Counter(keys)
            duplicated += sum(n - 1 for n in counts.values() if n > 1)
            stray += sum(
                1
                for source, line in counts
                if source != part.source or not part.first_line <= line <= part.last_line
            )
            lost += max(0, part.n_records - len(counts))
        pending = [part.part_id for part in parts if part.part_id not in done]
        return {
            "parts": len(parts),
            "parts_done": len(parts) - len(pending),
            "records_expected": sum(part.n_records for part in parts),
            "records_pending": sum(p.n_records for p in parts if p.part_id not in done),
            "lost": lost,
            "duplicated": duplicated,
            "stray": stray,
            "duplicate_ids": sum(1 for n in ids.values() if n > 1),
            "extra_shards": sorted(done - {part.part_id for part in parts}),
        }

    def previous_runs(self) -> list[dict[str, Any]]:
        """The `runs` of the summary an earlier run on this folder wrote (oldest first)."""
        path = self.root / SUMMARY_FILE
        if not path.is_file():
            return []
        try:
            return list(json.loads(path.read_text(encoding="utf8")).get("runs") or [])
        except (ValueError, AttributeError):
            return []

    def write_summary(self, summary: dict[str, Any]) -> Path:
        from spacy_medllm.util.formatting import json_default

        path = self.root / SUMMARY_FILE
        text = json.dumps(summary, indent=2, ensure_ascii=False, default=json_default) + "\n"
        atomic_write_bytes(path, text.encode("utf8"))
        return path


def part_stats(part: Part, documents: Any, failed: Any) -> dict[str, Any]:
    """Counts of one part: documents, words, errors and rejections (by reason)."""
    rejections: Counter[str] = Counter()
    for items in documents.column("rejected").to_pylist():
        rejections.update(item["reason"] for item in items or ())
    reasons = Counter(failed.column("error").to_pylist())
    doc_errors = documents.column("doc_error").null_count
    return {
        "shard": f"{SHARDS_DIR}/{part.part_id}.parquet",
        "source": part.source,
        "first_line": part.first_line,
        "records": part.n_records,
        "documents": documents.num_rows,
        "words": sum(n or 0 for n in documents.column("n_words").to_pylist()),
        "entities": sum(len(e or ()) for e in documents.column("entities").to_pylist()),
        "errors": failed.num_rows,
        "errors_by_reason": dict(sorted(reasons.items())),
        "rejections": sum(rejections.values()),
        "rejections_by_reason": dict(sorted(rejections.items())),
        "parse_errors": sum(n or 0 for n in documents.column("parse_errors").to_pylist()),
        "doc_errors": documents.num_rows - doc_errors,
    }
