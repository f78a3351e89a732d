"""The query language of the clinical search index, parsed into conditions (no SQL here).

A query is terms separated by spaces; a value with spaces is written in double quotes:

    label=ADVERSE_EVENT drug="Lexapro" status=present

- `label=L`, `status=S`, `text=V`, `text~WORDS`: conditions on one entity, the *focus* entity.
  All focus conditions hold for the same entity. `label` and `status` take comma-separated lists
  (`status=negated,family`) and `!=` (`status!=negated`); `text=V` compares the entity's
  normalised text (`entities.normalise`: case-folded, spaces collapsed, edge punctuation
  dropped) with V normalised; `text~WORDS` is a full-text match (FTS5) of the words, in order,
  inside the entity's text.
- `NAME=V`, `NAME!=V`, `NAME~WORDS`, where NAME is a label of the index in any case (`drug`,
  `adverse_event`, `Disease`): the document also has (`=`, `~`) or has no (`!=`) entity with that
  label whose normalised text equals V (or contains WORDS), whatever its status.
- Any other word or quoted phrase: full-text match of the document text.

So the example finds the documents with an ADVERSE_EVENT entity whose status is present and a
DRUG entity whose normalised text is "lexapro". Every term must hold (AND).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from spacy_medllm.clinical.entities import STATUSES

FOCUS_FIELDS = ("label", "status", "text")

OPERATORS = ("=", "!=", "~")

_TERM = re.compile(
    r"""\s*(?:
        (?P<field>[A-Za-z_][\w\-.]*)\s*(?P<op>!=|=|~)\s*(?P<value>"(?:[^"\\]|\\.)*"|[^\s"]+)
      | (?P<phrase>"(?:[^"\\]|\\.)*")
      | (?P<word>[^\s"]+)
    )""",
    re.VERBOSE,
)


_NO_VALUE = re.compile(r"^[A-Za-z_][\w\-.]*(?:!=|=|~)$")


class QueryError(ValueError):
    """A query that cannot be read: says where and what is allowed."""


@dataclass(frozen=True)
class Condition:
    """One `field op value` term. `field` is "label", "status", "text" (focus entity) or, for
    conditions on another entity, the label name as written."""

    field: str
    op: str
    values: tuple[str, ...]


@dataclass
class Query:
    """A parsed query: focus-entity conditions, other-entity conditions, document phrases."""

    text: str
    focus: list[Condition] = field(default_factory=list)
    others: list[Condition] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.focus or self.others or self.phrases)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_query(text: str) -> Query:
    """Read a query (see the module docstring). Raises QueryError naming the bad term."""
    query = Query(text=text)
    pos = 0
    while pos < len(text):
        if not text[pos:].strip():
            break
        match = _TERM.match(text, pos)
        if match is None or match.end() == pos:
            raise QueryError(f"cannot read the query from {text[pos:]!r} (an unclosed quote?)")
        pos = match.end()
        if match.group("phrase") is not None or match.group("word") is not None:
            word = match.group("word")
            if word is not None and _NO_VALUE.match(word):
                if text[pos:].startswith('"'):
                    raise QueryError(f"unclosed quote after {word} in {text!r}")
                raise QueryError(f"{word} has no value")
            phrase = _unquote(match.group("phrase") or word)
            if phrase.strip():
                query.phrases.append(phrase)
            continue
        name, op = match.group("field"), match.group("op")
        value = _unquote(match.group("value"))
        if not value.strip():
            raise QueryError(f"{name}{op} has no value")
        key = name.lower()
        if key in ("label", "status"):
            if op == "~":
                raise QueryError(f"{name} takes = or !=, not ~")
            values = tuple(v.strip() for v in value.split(",") if v.strip())
            if key == "status":
                values = tuple(v.lower() for v in values)
                unknown = [v for v in values if v not in STATUSES]
                if unknown:
                    raise QueryError(
                        f"unknown status {unknown[0]!r}; statuses: {', '.join(STATUSES)}"
                    )
            query.focus.append(Condition(key, op, values))
        elif key == "text":
            query.focus.append(Condition(key, op, (value,)))
        else:
            query.others.append(Condition(name, op, (value,)))
    return query


def fts_phrase(words: str) -> str:
    """An FTS5 query matching `words` as a phrase (tokens in order), quotes escaped."""
    return '"' + words.replace('"', '""') + '"'


def phrase_pattern(words: str) -> re.Pattern[str] | None:
    """A regex finding `words` in a text as FTS5's unicode61 tokenizer would: the word
    characters of each token, case-insensitive, any non-word characters between them."""
    tokens = re.findall(r"\w+", words)
    if not tokens:
        return None
    return re.compile(
        r"(?<!\w)" + r"\W+".join(re.escape(t) for t in tokens) + r"(?!\w)", re.IGNORECASE
    )
