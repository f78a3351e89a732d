"""Input shards of a batch run: list JSONL or Parquet files, cut them into parts, read a part.

A part is `part_size` consecutive lines of a JSONL file (or rows of a Parquet file), named from
the file's path (relative to the input root) and its index in the file, so the same input cut with
the same part size always gives the same parts: a part is the unit that is done exactly once and
written as one output shard. A part is read in pieces of `piece_size` lines (the batch size), one
Ray Data block each, so that all the actors share a part's documents; every row of a piece
carries its part's id and record count. Reading turns every non-blank line into one row: a document
(`id`, `text`, other fields as JSON in `meta`) or a bad record with the reason (`not_json`,
`no_text`, ...), which goes to the errors file instead of the pipeline. A document's position
(`source`, `line`) is its key; its `id` is the record's id field, or `source:line` without one.

Only the standard library at module level; pyarrow is imported inside the functions.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")

# Why a record did not reach the pipeline (the `reason` of an errors-file line).
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
NOT_AN_OBJECT = "not_an_object"
NO_TEXT = "no_text"
EMPTY_TEXT = "empty_text"
TOO_LONG = "too_long"
BAD_ID = "bad_id"
PIPELINE_ERROR = "pipeline_error"  # set by the worker: the pipeline raised on this document alone
INPUT_REASONS = (NOT_UTF8, NOT_JSON, NOT_AN_OBJECT, NO_TEXT, EMPTY_TEXT, TOO_LONG, BAD_ID)

_FINGERPRINT_BYTES = 1 << 16


@dataclass(frozen=True)
class InputFile:
    """One input shard: where it is, its name relative to the input root, and a fingerprint."""

    path: str
    source: str
    kind: str  # "jsonl" or "parquet"
    size: int
    fingerprint: str


@dataclass(frozen=True)
class Part:
    """Lines [first_line, first_line + part_size) of one input file: one output shard."""

    part_id: str
    path: str
    source: str
    kind: str
    start: int  # byte offset (JSONL) or row index (Parquet), inclusive
    end: int  # exclusive
    first_line: int  # 1-based line (JSONL) or row (Parquet) number of `start`
    last_line: int  # the part's last line or row, inclusive
    n_records: int  # non-blank lines: the rows reading this part yields
    # (start, end, first_line, n_records) of each piece the part is read in (one block each, so
    # that the actors share a part's documents); empty: read in one piece.
    pieces: tuple[tuple[int, int, int, int], ...] = ()

    def piece_list(self) -> list[Piece]:
        """The part's pieces (the whole part if it was planned without)."""
        spans = self.pieces or ((self.start, self.end, self.first_line, self.n_records),)
        return [
            Piece(self.part_id, self.n_records, self.path, self.source, self.kind, *span)
            for span in spans
        ]


@dataclass(frozen=True)
class Piece:
    """A range of a part, read as one block; its rows carry the part's id and record count."""

    part_id: str
    part_rows: int
    path: str
    source: str
    kind: str
    start: int
    end: int
    first_line: int
    n_records: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReadSettings:
    """How records become documents (part of what a resumed run must keep the same)."""

    text_field: str = "text"
    id_field: str | None = "id"
    max_chars: int = 1_000_000


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def _glob_root(pattern: str) -> Path:
    """The longest leading folder of a glob pattern without wildcards."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def fingerprint(path: Path) -> str:
    """A quick fingerprint of a file: its size and first and last 64 KiB."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            handle.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
            digest.update(handle.read())
    return digest.hexdigest()[:16]


def list_inputs(spec: str | Path) -> list[InputFile]:
    """The input shards of a file, a folder (searched recursively) or a glob, sorted by name."""
    spec = str(spec)
    if glob.has_magic(spec):
        root = _glob_root(spec)
        paths = [Path(p) for p in sorted(glob.glob(spec, recursive=True))]
        paths = [p for p in paths if p.is_file() and _kind(p)]
    elif Path(spec).is_dir():
        root = Path(spec)
        paths = sorted(p for p in root.rglob("*") if p.is_file() and _kind(p))
    elif Path(spec).is_file():
        root = Path(spec).parent
        paths = [Path(spec)]
        if not _kind(paths[0]):
            raise ValueError(
                f"{spec} is neither JSONL ({', '.join(JSONL_SUFFIXES)}) nor Parquet "
                f"({', '.join(PARQUET_SUFFIXES)})"
            )
    else:
        raise FileNotFoundError(f"No such input file, folder or glob match: {spec}")
    if not paths:
        raise FileNotFoundError(f"No .jsonl or .parquet files in {spec}")
    files = []
    for path in paths:
        kind = _kind(path)
        assert kind is not None
        files.append(
            InputFile(
                path=str(path.resolve()),
                source=path.resolve().relative_to(root.resolve()).as_posix(),
                kind=kind,
                size=path.stat().st_size,
                fingerprint=fingerprint(path),
            )
        )
    return files


def part_prefix(source: str) -> str:
    """The stable file part of a part id: a readable slug of the path and a short hash of it."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", source).strip("_")[:60] or "input"
    return f"{slug}-{hashlib.sha1(source.encode('utf8')).hexdigest()[:8]}"


class _Planner:
    """Collects the parts (and their pieces) of one file as its lines or rows are counted."""

    def __init__(self, file: InputFile, part_size: int, piece_size: int) -> None:
        self.file, self.part_size, self.piece_size = file, part_size, piece_size
        self.parts: list[Part] = []
        self.pieces: list[tuple[int, int, int, int]] = []

    def piece(self, start: int, end: int, first: int, n: int) -> None:
        if n:
            self.pieces.append((start, end, first, n))

    def part(self, index: int, start: int, end: int, first: int, last: int) -> None:
        n = sum(piece[3] for piece in self.pieces)
        if n:
            self.parts.append(
                Part(
                    part_id=f"{part_prefix(self.file.source)}-{index:06d}",
                    path=self.file.path,
                    source=self.file.source,
                    kind=self.file.kind,
                    start=start,
                    end=end,
                    first_line=first,
                    last_line=last,
                    n_records=n,
                    pieces=tuple(self.pieces) if len(self.pieces) > 1 else (),
                )
            )
        self.pieces = []


def plan_parts(
    file: InputFile,
    part_size: int,
    read: ReadSettings | None = None,
    piece_size: int | None = None,
) -> list[Part]:
    """The parts of one input file, each cut in pieces of `piece_size` lines (default: whole);
    parts with no records (only blank lines) are left out."""
    piece_size = min(piece_size or part_size, part_size)
    if piece_size < 1:
        raise ValueError(f"The part and piece sizes must be at least 1, got {piece_size}")
    planner = _Planner(file, part_size, piece_size)
    if file.kind == "parquet":
        import pyarrow.parquet as pq

        handle = pq.ParquetFile(file.path)
        text_field = (read or ReadSettings()).text_field
        if text_field not in handle.schema_arrow.names:
            raise ValueError(
                f"{file.source} has no column {text_field!r} (columns: "
                f"{', '.join(handle.schema_arrow.names)}); choose one with --text-field"
            )
        n_rows = handle.metadata.num_rows
        for index, start in enumerate(range(0, n_rows, part_size)):
            end = min(n_rows, start + part_size)
            for low in range(start, end, piece_size):
                high = min(end, low + piece_size)
                planner.piece(low, high, low + 1, high - low)
            planner.part(index, start, end, start + 1, end)
        return planner.parts
    with open(file.path, "rb") as handle:
        offset = part_start = piece_start = line = n = 0
        for raw in handle:
            line += 1
            if raw.strip():
                n += 1
            offset += len(raw)
            in_part = (line - 1) % part_size + 1
            if in_part % piece_size == 0 or in_part == part_size:
                planner.piece(piece_start, offset, line - (in_part - 1) % piece_size, n)
                piece_start, n = offset, 0
            if in_part == part_size:
                index = (line - 1) // part_size
                planner.part(index, part_start, offset, line - part_size + 1, line)
                part_start = offset
        if line % part_size:
            in_part = (line - 1) % part_size + 1
            planner.piece(piece_start, offset, line - (in_part - 1) % piece_size, n)
            planner.part((line - 1) // part_size, part_start, offset, line - in_part + 1, line)
    return planner.parts


def _bad_row(part: Piece, line: int, reason: str, detail: str) -> dict[str, Any]:
    """A record that is no document (its `error` says why); its id is its position."""
    return {
        "part": part.part_id,
        "part_rows": part.part_rows,
        "source": part.source,
        "line": line,
        "id": f"{part.source}:{line}",
        "text": None,
        "meta": None,
        "error": reason,
        "detail": detail,
    }


def _document_row(
    part: Piece, line: int, record: Any, read: ReadSettings, meta_skip: tuple[str, ...]
) -> dict[str, Any]:
    """One decoded record as a row: a document, or a bad record with the reason."""
    if not isinstance(record, dict):
        kind = type(record).__name__
        return _bad_row(part, line, NOT_AN_OBJECT, f"a JSON {kind}, not an object")
    row = _bad_row(part, line, "", "")
    row["error"] = row["detail"] = None
    if read.id_field and record.get(read.id_field) is not None:
        value = record[read.id_field]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            kind = type(value).__name__
            return _bad_row(part, line, BAD_ID, f"{read.id_field!r} is a {kind}")
        row["id"] = str(value)
    meta = {k: v for k, v in record.items() if k not in meta_skip}
    if meta:
        row["meta"] = json.dumps(meta, ensure_ascii=False, default=str)
    text = record.get(read.text_field)
    if not isinstance(text, str):
        what = "missing" if text is None else f"a {type(text).__name__}"
        row.update(error=NO_TEXT, detail=f"{read.text_field!r} is {what}, not a string")
    elif not text.strip():
        row.update(error=EMPTY_TEXT, detail=f"{read.text_field!r} is empty or only whitespace")
    elif len(text) > read.max_chars:
        row.update(
            error=TOO_LONG,
            detail=f"{len(text):,} characters, over the limit of {read.max_chars:,} (--max-chars)",
        )
    else:
        row["text"] = text
    return row


def read_part_rows(part: Part, read: ReadSettings) -> list[dict[str, Any]]:
    """Every record of a part as a row (see `_document_row`), in line order."""
    return [row for piece in part.piece_list() for row in read_piece_rows(piece, read)]


def read_piece_rows(part: Piece, read: ReadSettings) -> list[dict[str, Any]]:
    """Every record of a piece of a part as a row (see `_document_row`), in line order."""
    meta_skip = tuple(f for f in (read.text_field, read.id_field) if f)
    rows: list[dict[str, Any]] = []
    if part.kind == "parquet":
        import pyarrow.parquet as pq

        handle = pq.ParquetFile(part.path)
        offset = 0
        for group in range(handle.num_row_groups):
            n = handle.metadata.row_group(group).num_rows
            lo, hi = max(part.start, offset), min(part.end, offset + n)
            if lo < hi:
                table = handle.read_row_group(group).slice(lo - offset, hi - lo)
                for i, record in enumerate(table.to_pylist()):
                    rows.append(_document_row(part, lo + i + 1, record, read, meta_skip))
            offset += n
        return rows
    with open(part.path, "rb") as handle:
        handle.seek(part.start)
        data = handle.read(part.end - part.start)
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the newline that ends the part's last line
    for i, raw in enumerate(lines):
        line = part.first_line + i
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8-sig" if line == 1 else "utf8")
        except UnicodeDecodeError as error:
            rows.append(_bad_row(part, line, NOT_UTF8, str(error)[:200]))
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            rows.append(_bad_row(part, line, NOT_JSON, f"{error}: {text[:80]!r}"))
            continue
        rows.append(_document_row(part, line, record, read, meta_skip))
    if len(rows) != part.n_records:
        raise RuntimeError(
            f"{part.source} changed while it was read: lines {part.first_line}... have "
            f"{len(rows)} records, {part.n_records} when they were planned"
        )
    return rows


READ_COLUMNS = ("part", "part_rows", "source", "line", "id", "text", "meta", "error", "detail")


def read_schema() -> Any:
    """The Arrow schema of the rows `read_part_rows` gives."""
    import pyarrow as pa

    return pa.schema(
        [
            ("part", pa.string()),
            ("part_rows", pa.int64()),
            ("source", pa.string()),
            ("line", pa.int64()),
            ("id", pa.string()),
            ("text", pa.string()),
            ("meta", pa.string()),
            ("error", pa.string()),
            ("detail", pa.string()),
        ]
    )


def read_pieces_batch(batch: Any, read: ReadSettings) -> Any:
    """Ray Data map_batches function: a batch of pieces (Arrow) -> their records (Arrow)."""
    import pyarrow as pa

    rows = []
    for item in batch.to_pylist():
        rows.extend(read_piece_rows(Piece(**item), read))
    return pa.Table.from_pylist(rows, schema=read_schema())
