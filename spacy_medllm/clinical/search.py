"""Search over processed Docs: an SQLite file with FTS5 full-text tables, and its query API.

    index = ClinicalIndex("notes.sqlite")
    index.add(nlp.pipe(texts))                   # or index.add_docbin("docs.spacy", nlp.vocab)
    results = index.search('label=ADVERSE_EVENT drug="Lexapro" status=present')
    html = results.to_html()                      # displaCy page of the hits, matches highlighted

Tables: `documents` (key, text, data as JSON), `entities` (document, start and end characters,
label, text, normalised text, status, medspaCy attributes as JSON), and two external-content FTS5
tables over the document and entity texts (`unicode61` tokenizer, diacritics removed). The query
language is `clinical.query`'s. An entity's status is `entities.status_of` at indexing time:
ConText or `medllm_assertion` must run before `add`, or every entity is "present".

Documents are keyed by `doc.user_data["id"]` (what `corpora.docs.gold_doc` sets), a context
dict's "id" (`nlp.pipe(..., as_tuples=True)`), or else "doc-<n>"; adding a key again replaces the
document.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spacy.tokens import Doc, DocBin

from spacy_medllm.clinical.entities import PRESENT, entity_records, normalise
from spacy_medllm.clinical.query import (
    Condition,
    Query,
    QueryError,
    fts_phrase,
    parse_query,
    phrase_pattern,
)

SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, text TEXT NOT NULL, data TEXT
);
CREATE TABLE IF NOT EXISTS entities (
    id INTEGER PRIMARY KEY,
    doc_id INTEGER NOT NULL REFERENCES documents(id),
    start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL,
    label TEXT NOT NULL,
    text TEXT NOT NULL,
    norm TEXT NOT NULL,
    status TEXT NOT NULL,
    attributes TEXT
);
CREATE INDEX IF NOT EXISTS entities_by_doc ON entities (doc_id);
CREATE INDEX IF NOT EXISTS entities_by_label ON entities (label, status, doc_id);
CREATE INDEX IF NOT EXISTS entities_by_norm ON entities (norm, label, doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS documents_fts USING fts5(
    text, content='documents', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE VIRTUAL TABLE IF NOT EXISTS entities_fts USING fts5(
    text, content='entities', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
"""

FOCUS = "focus"  # a match's role: the focus entity of the query ...
ALSO = "also"  # ... an entity another condition asked for ...
PHRASE = "phrase"  # ... or a phrase of the document text
PHRASE_LABEL = "MATCH"


@dataclass
class SearchHit:
    """A matching document: its key, text and data, the spans that made it match (`matches`:
    start, end, label, text, status, role) and all its entities."""

    key: str
    text: str
    data: dict[str, Any]
    matches: list[dict[str, Any]] = field(default_factory=list)
    entities: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "text": self.text,
            "data": self.data,
            "matches": self.matches,
            "entities": self.entities,
        }


@dataclass
class SearchResults:
    """What a query found: `total` documents, the `hits` of this page, the time taken."""

    query: str
    total: int
    hits: list[SearchHit]
    elapsed_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "total": self.total,
            "elapsed_ms": round(self.elapsed_ms, 3),
            "hits": [hit.to_dict() for hit in self.hits],
        }

    def to_html(self, all_entities: bool = False, page: bool = True) -> str:
        """A displaCy page: each hit with its matched spans highlighted (entity labels carry
        their status when it is not "present"); `all_entities` shows every entity."""
        from spacy_medllm.clinical.render import render_hits

        return render_hits(self, all_entities=all_entities, page=page)


class ClinicalIndex:
    """An SQLite search index of processed Docs in one file (created when missing)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise OSError(f"no search index at {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(str(self.path))
        self.connection.row_factory = sqlite3.Row
        with self.connection:
            self.connection.executescript(SCHEMA)
            self.connection.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )
        self._labels: dict[str, str] | None = None

    # -- building ----------------------------------------------------------------------------

    def add(
        self,
        docs: Iterable[Doc | tuple[Doc, dict[str, Any]]],
        *,
        spans_key: str | None = None,
        batch_size: int = 500,
    ) -> int:
        """Index Docs (or (Doc, context) pairs from `nlp.pipe(..., as_tuples=True)`): their
        text, data and entities with status. Returns how many were added."""
        batch: list[tuple[str, str, dict[str, Any], list[dict[str, Any]]]] = []
        added = 0
        next_number = self._count("documents") + 1
        for item in docs:
            doc, context = item if isinstance(item, tuple) else (item, {})
            data = {k: v for k, v in dict(context or {}).items() if k != "text"}
            key = str(data.get("id") or doc.user_data.get("id") or f"doc-{next_number}")
            next_number += 1
            batch.append((key, doc.text, data, entity_records(doc, spans_key)))
            if len(batch) >= batch_size:
                added += self._write(batch)
                batch = []
        if batch:
            added += self._write(batch)
        self._labels = None
        return added

    def add_docbin(self, path: str | Path, vocab: Any, spans_key: str | None = None) -> int:
        """Index the Docs of a `.spacy` DocBin (`vocab`: an nlp's vocab, or the nlp)."""
        vocab = getattr(vocab, "vocab", vocab)
        docs = DocBin().from_disk(path).get_docs(vocab)
        return self.add(docs, spans_key=spans_key)

    def _write(self, batch: list[tuple[str, str, dict[str, Any], list[dict[str, Any]]]]) -> int:
        with self.connection as db:
            for key, text, data, entities in batch:
                self._delete(db, key)
                cursor = db.execute(
                    "INSERT INTO documents (key, text, data) VALUES (?, ?, ?)",
                    (key, text, json.dumps(data, ensure_ascii=False, default=str)),
                )
                doc_id = cursor.lastrowid
                db.execute("INSERT INTO documents_fts (rowid, text) VALUES (?, ?)", (doc_id, text))
                for e in entities:
                    row = db.execute(
                        "INSERT INTO entities (doc_id, start_char, end_char, label, text, norm, "
                        "status, attributes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            doc_id,
                            e["start"],
                            e["end"],
                            e["label"],
                            e["text"],
                            e["norm"],
                            e["status"],
                            json.dumps(e["attributes"]),
                        ),
                    )
                    db.execute(
                        "INSERT INTO entities_fts (rowid, text) VALUES (?, ?)",
                        (row.lastrowid, e["text"]),
                    )
        return len(batch)

    @staticmethod
    def _delete(db: sqlite3.Connection, key: str) -> None:
        """Remove a document and its entities, FTS rows included (external content tables need
        the old values to delete them)."""
        old = db.execute("SELECT id, text FROM documents WHERE key = ?", (key,)).fetchone()
        if old is None:
            return
        for entity_id, text in db.execute(
            "SELECT id, text FROM entities WHERE doc_id = ?", (old["id"],)
        ).fetchall():
            db.execute(
                "INSERT INTO entities_fts (entities_fts, rowid, text) VALUES ('delete', ?, ?)",
                (entity_id, text),
            )
        db.execute(
            "INSERT INTO documents_fts (documents_fts, rowid, text) VALUES ('delete', ?, ?)",
            (old["id"], old["text"]),
        )
        db.execute("DELETE FROM entities WHERE doc_id = ?", (old["id"],))
        db.execute("DELETE FROM documents WHERE id = ?", (old["id"],))

    # -- reading -----------------------------------------------------------------------------

    def _count(self, table: str) -> int:
        return int(self.connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def labels(self) -> dict[str, str]:
        """The index's entity labels by their lower-case name ("drug" -> "DRUG")."""
        if self._labels is None:
            rows = self.connection.execute("SELECT DISTINCT label FROM entities").fetchall()
            self._labels = {row[0].lower(): row[0] for row in rows}
        return self._labels

    def stats(self) -> dict[str, Any]:
        """Documents, entities, and entities by label and status."""
        by = self.connection.execute(
            "SELECT label, status, COUNT(*) FROM entities GROUP BY label, status ORDER BY label"
        ).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for label, status, n in by:
            counts.setdefault(label, {})[status] = n
        return {
            "path": str(self.path),
            "documents": self._count("documents"),
            "entities": self._count("entities"),
            "by_label": counts,
        }

    def _label(self, name: str) -> str:
        labels = self.labels()
        label = labels.get(name.lower()) or labels.get(name.lower().replace("-", "_"))
        if label is None:
            known = ", ".join(sorted(labels.values())) or "none (the index is empty)"
            raise QueryError(
                f"unknown field {name!r}: use label, status, text, or a label of the index "
                f"({known})"
            )
        return label

    def _focus_sql(self, conditions: list[Condition], alias: str) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for c in conditions:
            if c.field in ("label", "status"):
                values = [self._label(v) if c.field == "label" else v for v in c.values]
                column = f"{alias}.{c.field}"
                marks = ", ".join("?" * len(values))
                clauses.append(f"{column} {'NOT IN' if c.op == '!=' else 'IN'} ({marks})")
                params.extend(values)
            elif c.op == "~":
                clauses.append(
                    f"{alias}.id IN (SELECT rowid FROM entities_fts WHERE entities_fts MATCH ?)"
                )
                params.append(fts_phrase(c.values[0]))
            else:
                clauses.append(f"{alias}.norm {'!=' if c.op == '!=' else '='} ?")
                params.append(normalise(c.values[0]))
        return clauses, params

    def _other_sql(self, condition: Condition) -> tuple[str, list[Any]]:
        label = self._label(condition.field)
        if condition.op == "~":
            test = "o.id IN (SELECT rowid FROM entities_fts WHERE entities_fts MATCH ?)"
            value = fts_phrase(condition.values[0])
        else:
            test, value = "o.norm = ?", normalise(condition.values[0])
        member = "NOT IN" if condition.op == "!=" else "IN"
        sql = f"d.id {member} (SELECT o.doc_id FROM entities o WHERE o.label = ? AND {test})"
        return sql, [label, value]

    def _where(self, query: Query) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if query.focus:
            focus, focus_params = self._focus_sql(query.focus, "e")
            # Subqueries that do not depend on the document row: SQLite computes each once.
            clauses.append(
                "d.id IN (SELECT e.doc_id FROM entities e WHERE " + " AND ".join(focus) + ")"
            )
            params.extend(focus_params)
        for condition in query.others:
            sql, values = self._other_sql(condition)
            clauses.append(sql)
            params.extend(values)
        for phrase in query.phrases:
            clauses.append("d.id IN (SELECT rowid FROM documents_fts WHERE documents_fts MATCH ?)")
            params.append(fts_phrase(phrase))
        return (" AND ".join(clauses) or "1"), params

    def count(self, query: str | Query) -> int:
        """How many documents match."""
        parsed = parse_query(query) if isinstance(query, str) else query
        where, params = self._where(parsed)
        return int(
            self.connection.execute(
                f"SELECT COUNT(*) FROM documents d WHERE {where}", params
            ).fetchone()[0]
        )

    def search(self, query: str | Query, limit: int = 20, offset: int = 0) -> SearchResults:
        """The documents matching `query`, in the order they were added, `limit` from `offset`,
        with what matched in each. Raises QueryError for a query it cannot read."""
        began = time.perf_counter()
        parsed = parse_query(query) if isinstance(query, str) else query
        where, params = self._where(parsed)
        total = int(
            self.connection.execute(
                f"SELECT COUNT(*) FROM documents d WHERE {where}", params
            ).fetchone()[0]
        )
        rows = self.connection.execute(
            f"SELECT d.id, d.key, d.text, d.data FROM documents d WHERE {where} "
            "ORDER BY d.id LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ).fetchall()
        hits = [self._hit(row, parsed) for row in rows]
        elapsed = (time.perf_counter() - began) * 1000
        return SearchResults(parsed.text, total, hits, elapsed)

    def _entities(self, doc_id: int, where: str = "", params: Iterable[Any] = ()) -> list[Any]:
        sql = (
            "SELECT e.id, e.start_char, e.end_char, e.label, e.text, e.status FROM entities e "
            "WHERE e.doc_id = ?" + (f" AND {where}" if where else "") + " ORDER BY e.start_char"
        )
        return self.connection.execute(sql, [doc_id, *params]).fetchall()

    def _hit(self, row: sqlite3.Row, query: Query) -> SearchHit:
        hit = SearchHit(row["key"], row["text"], json.loads(row["data"] or "{}"))
        hit.entities = [_span(r) for r in self._entities(row["id"])]
        seen: set[int] = set()
        if query.focus:
            clauses, params = self._focus_sql(query.focus, "e")
            for r in self._entities(row["id"], " AND ".join(clauses), params):
                seen.add(r["id"])
                hit.matches.append(_span(r, FOCUS))
        for condition in query.others:
            if condition.op == "!=":
                continue
            label = self._label(condition.field)
            if condition.op == "~":
                test = "e.id IN (SELECT rowid FROM entities_fts WHERE entities_fts MATCH ?)"
                value = fts_phrase(condition.values[0])
            else:
                test, value = "e.norm = ?", normalise(condition.values[0])
            for r in self._entities(row["id"], f"e.label = ? AND {test}", [label, value]):
                if r["id"] not in seen:
                    seen.add(r["id"])
                    hit.matches.append(_span(r, ALSO))
        for phrase in query.phrases:
            pattern = phrase_pattern(phrase)
            for found in pattern.finditer(hit.text) if pattern else ():
                hit.matches.append(
                    {
                        "start": found.start(),
                        "end": found.end(),
                        "label": PHRASE_LABEL,
                        "text": found.group(0),
                        "status": PRESENT,
                        "role": PHRASE,
                    }
                )
        hit.matches.sort(key=lambda m: (m["start"], -m["end"]))
        return hit

    def documents(self) -> Iterator[tuple[str, str]]:
        """(key, text) of every document, in the order added."""
        for row in self.connection.execute("SELECT key, text FROM documents ORDER BY id"):
            yield row["key"], row["text"]

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> ClinicalIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _span(row: sqlite3.Row, role: str | None = None) -> dict[str, Any]:
    span = {
        "start": row["start_char"],
        "end": row["end_char"],
        "label": row["label"],
        "text": row["text"],
        "status": row["status"],
    }
    if role is not None:
        span["role"] = role
    return span


def build_index(
    path: str | Path,
    docs: Iterable[Doc | tuple[Doc, dict[str, Any]]],
    *,
    spans_key: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a new index file from Docs (`overwrite` replaces an existing file); its stats."""
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise OSError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
        path.unlink()
    with ClinicalIndex(path) as index:
        index.add(docs, spans_key=spans_key)
        return index.stats()
