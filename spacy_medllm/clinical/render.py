"""displaCy pages for search hits and summaries: spans highlighted, statuses in the labels."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from spacy import displacy

from spacy_medllm.clinical.entities import PRESENT

if TYPE_CHECKING:
    from spacy_medllm.clinical.search import SearchResults

# Colours by label; a status other than "present" shows as "LABEL (status)" in the same colour.
LABEL_COLOURS = {
    "DRUG": "#a6cee3",
    "ADVERSE_EVENT": "#fb9a99",
    "DISEASE": "#fdbf6f",
    "PROCEDURE": "#b2df8a",
    "SYMPTOM": "#cab2d6",
    "MATCH": "#ffff99",
}


def shown_label(span: dict[str, Any]) -> str:
    status = span.get("status") or PRESENT
    return span["label"] if status == PRESENT else f"{span['label']} ({status})"


def _non_overlapping(spans: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Longest first, then leftmost: displaCy's entity view cannot draw overlapping spans."""
    kept: list[dict[str, Any]] = []
    for span in sorted(spans, key=lambda s: (-(s["end"] - s["start"]), s["start"])):
        if all(span["end"] <= k["start"] or span["start"] >= k["end"] for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s["start"])


def render_spans(
    documents: Sequence[tuple[str, str, list[dict[str, Any]]]],
    page: bool = True,
    heading: str = "",
) -> str:
    """displaCy's entity view of (title, text, spans) documents; with `page`, a whole HTML page
    under `heading`."""
    parsed, colours = [], {}
    for title, text, spans in documents:
        ents = []
        for span in _non_overlapping(spans):
            label = shown_label(span)
            colours[label] = LABEL_COLOURS.get(span["label"], "#dddddd")
            ents.append({"start": span["start"], "end": span["end"], "label": label})
        parsed.append({"text": text, "ents": ents, "title": html.escape(title)})
    body = (
        displacy.render(parsed, style="ent", manual=True, page=False, options={"colors": colours})
        if parsed
        else "<p>No documents.</p>"
    )
    if not page:
        return body
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(heading or 'spacy-medllm')}</title></head>"
        '<body style="font-family: sans-serif; margin: 2em">'
        f"<h2>{html.escape(heading)}</h2>{body}</body></html>\n"
    )


def render_hits(results: SearchResults, all_entities: bool = False, page: bool = True) -> str:
    """The hits of a search, matched spans (or every entity) highlighted."""
    documents = []
    for hit in results.hits:
        phrases = [m for m in hit.matches if m.get("role") == "phrase"]
        documents.append(
            (hit.key, hit.text, hit.entities + phrases if all_entities else hit.matches)
        )
    heading = (
        f"{results.query}: {results.total} documents ({results.elapsed_ms:.1f} ms), "
        f"showing {len(results.hits)}"
    )
    return render_spans(documents, page=page, heading=heading)
