"""Synthetic text records (JSONL `{id, text, lang, kind, spans, meta}`): reading, appending with
resume (ids already written are skipped), deduplication by a hash of the normalised text, and the
split of a language's texts into teacher-training and distillation halves.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("ae_email", "clinical_note", "forum_post")  # the kinds every language has

LANGS = ("en", "et")

LABELS = ("DRUG", "ADVERSE_EVENT", "DISEASE", "PROCEDURE")


@dataclass
class SynthRecord:
    id: str
    text: str
    lang: str
    kind: str
    spans: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {"id": self.id, "text": self.text, "lang": self.lang, "kind": self.kind}
        if self.spans is not None:
            data["spans"] = self.spans
        data["meta"] = self.meta
        return data


def normalise_for_dedup(text: str) -> str:
    """Case, accents' composition and whitespace do not make two texts different."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip()


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise_for_dedup(text).encode("utf8")).hexdigest()[:16]


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a last line cut by an interruption is dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a half-written last line: it is written again on resume
    return records


class JSONLAppender:
    """Appends records to a JSONL file, skipping ids (and normalised texts) already in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        existing = read_records(self.path)
        self.ids = {r["id"] for r in existing}
        self.hashes = {text_hash(r["text"]) for r in existing if "text" in r}
        self.counts: dict[str, int] = {}
        for record in existing:
            key = record.get("lang", "")
            self.counts[key] = self.counts.get(key, 0) + 1
        self._repair_tail()

    def _repair_tail(self) -> None:
        """Cut a half-written last line, so appended records start on a line of their own."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            self.path.write_bytes(data[: data.rfind(b"\n") + 1])

    def __contains__(self, record_id: str) -> bool:
        return record_id in self.ids

    def add(self, record: SynthRecord | dict[str, Any]) -> bool:
        """Write `record` unless its id or text is there already. Returns whether it was written."""
        data = record.to_dict() if isinstance(record, SynthRecord) else dict(record)
        digest = text_hash(data["text"])
        if data["id"] in self.ids or digest in self.hashes:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf8") as file_:
            file_.write(json.dumps(data, ensure_ascii=False) + "\n")
            file_.flush()
        self.ids.add(data["id"])
        self.hashes.add(digest)
        self.counts[data.get("lang", "")] = self.counts.get(data.get("lang", ""), 0) + 1
        return True


def split_texts(
    input_path: str | Path,
    first: str | Path,
    second: str | Path,
    *,
    fraction: float = 0.5,
    lang: str | None = None,
) -> dict[str, Any]:
    """Split a texts JSONL into two files by a hash of each record's id (no random state).

    `fraction` of the records (of `lang` only, when given) go to `first`, the rest to `second`;
    the same id always lands on the same side, so adding texts never moves the old ones. The
    workflow uses it to keep the texts a teacher is trained on (with their gold) apart from the
    texts it labels for the students.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    records = [
        json.loads(line) for line in Path(input_path).read_text("utf8").splitlines() if line.strip()
    ]
    if lang:
        records = [r for r in records if r.get("lang") == lang]
    if not records:
        raise ValueError(
            f"{input_path} holds no texts" + (f" in language {lang!r}" if lang else "")
        )
    sides: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    seen: set[str] = set()
    for record in records:
        key = str(record.get("id", record["text"]))
        if key in seen:
            raise ValueError(f"{input_path}: id {key!r} occurs twice")
        seen.add(key)
        bucket = int(hashlib.sha256(key.encode("utf8")).hexdigest()[:8], 16) / 0xFFFFFFFF
        sides[0 if bucket < fraction else 1].append(record)
    for path, side in zip((first, second), sides, strict=True):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in side)
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(text, "utf8")
        tmp.replace(path)
    return {
        "input": str(input_path),
        "lang": lang,
        "fraction": fraction,
        "first": {"path": str(first), "n": len(sides[0])},
        "second": {"path": str(second), "n": len(sides[1])},
    }
