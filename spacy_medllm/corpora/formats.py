"""Users' annotated files in, the project's training JSONL and DocBins out, with a report.

Formats (`read_annotations`, chosen by `format` or guessed from the path):

- `jsonl`: one document per line, either `{"text", "entities"|"spans": [{"start", "end",
  "label"}]}` with character offsets (a discontinuous mention: `"fragments": [[start, end],
  ...]` instead of start/end), or `{"tokens": [...], "entities"|"spans": [{"start", "end",
  "label"}]}` with token indices (end exclusive; `"spaces": [bool, ...]` says which tokens are
  followed by a space, default all), or `{"tokens": [...], "ner_tags"|"tags": ["B-X", "O", ...]}`
  (IOB or BILUO strings, as Hugging Face datasets have them). An optional "id" names the line.
- `brat`: a folder of BRAT standoff pairs `NAME.txt` / `NAME.ann`; text-bound annotations
  (`T1<TAB>LABEL 0 5;10 15<TAB>text`) are the mentions, fragments separated by ";". Relations,
  events, attributes and notes are counted and left out.
- `conll`: CoNLL-2003-style columns (token first, IOB tag last), read with spaCy's own converter.
- `iob`: `token|B-X token|O` lines (one sentence per line), with spaCy's converter.
- `spacy`: a DocBin's `doc.ents`.

Policies, every one counted in the report: a discontinuous mention becomes its covering span
("cover", from its first start to its last end), one span per fragment ("fragments") or nothing
("drop"); overlapping spans keep the longest (a token can carry one entity in `doc.ents`);
repeated texts keep the first; a text in two splits stays in the later one (dev, test) and leaves
train. `convert_annotations` writes `{split}.jsonl` (for `finetune`), `{split}.spacy` (for `spacy
train`) and `report.json` / `report.md`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spacy_medllm.core.examples import Example, make_example, resolve_overlaps
from spacy_medllm.corpora.splits import SPLIT_ORDER, hash_split, normalize_text

FORMATS = ("jsonl", "brat", "conll", "iob", "spacy")
DISCONTINUOUS_POLICIES = ("cover", "fragments", "drop")
MAX_EXAMPLES = 5  # examples of each problem kept in the report

Fragments = list[tuple[int, int]]


@dataclass
class Mention:
    """One annotated mention: one fragment, or several for a discontinuous one."""

    fragments: Fragments
    label: str


@dataclass
class Document:
    id: str
    text: str
    mentions: list[Mention] = field(default_factory=list)


@dataclass
class ConversionReport:
    """What reading and converting found, by kind; examples of each problem (ids and strings)."""

    counts: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, example: str | None = None, n: int = 1) -> None:
        self.counts[kind] += n
        if example is not None:
            listed = self.examples.setdefault(kind, [])
            if len(listed) < MAX_EXAMPLES:
                listed.append(example)

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(sorted(self.counts.items())),
            "mentions_per_label": dict(self.labels.most_common()),
            "examples": self.examples,
        }


def guess_format(path: str | Path) -> str:
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*.ann")):
            return "brat"
        raise ValueError(f"{path} is a folder without .ann files; give --format")
    suffix = path.suffix.lower()
    by_suffix = {".jsonl": "jsonl", ".spacy": "spacy", ".conll": "conll", ".iob": "iob"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    if suffix in (".txt", ".tsv", ".conllu"):
        first = next((line for line in path.open(encoding="utf8") if line.strip()), "")
        return "iob" if re.search(r"\S+\|[BIOLU](-\S+)?(\s|$)", first) else "conll"
    raise ValueError(f"cannot tell the format of {path}; give --format ({', '.join(FORMATS)})")


def read_annotations(
    path: str | Path, format: str | None = None, report: ConversionReport | None = None
) -> list[Document]:
    """The documents and mentions of an annotated file or folder, before any policy."""
    format = format or guess_format(path)
    report = report if report is not None else ConversionReport()
    readers = {
        "jsonl": read_jsonl_mentions,
        "brat": read_brat,
        "conll": lambda p, r: _read_with_spacy(p, r, "conll"),
        "iob": lambda p, r: _read_with_spacy(p, r, "iob"),
        "spacy": read_docbin_mentions,
    }
    if format not in readers:
        raise ValueError(f"unknown format {format!r}; one of {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    documents = readers[format](path, report)
    report.note(f"documents_read:{format}", n=len(documents))
    return documents


def _checked(doc: Document, report: ConversionReport, where: str) -> Document:
    """The document with mentions outside the text or empty dropped (counted)."""
    kept = []
    for mention in doc.mentions:
        if not mention.label or not isinstance(mention.label, str):
            report.note("mentions_without_label", where)
            continue
        if not mention.fragments or any(
            not (0 <= s < e <= len(doc.text)) for s, e in mention.fragments
        ):
            report.note("mentions_outside_text", f"{where}: {mention.fragments}")
            continue
        kept.append(mention)
    doc.mentions = kept
    return doc


def read_jsonl_mentions(path: Path, report: ConversionReport) -> list[Document]:
    documents = []
    with path.open(encoding="utf8") as file_:
        for n, line in enumerate(file_, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{n}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error})") from None
            if not isinstance(data, dict):
                raise ValueError(f"{where}: each line must be a JSON object")
            doc_id = str(data.get("id", f"{path.stem}:{n}"))
            if isinstance(data.get("text"), str):
                doc = Document(doc_id, data["text"], _char_mentions(data, where))
            elif isinstance(data.get("tokens"), list):
                doc = _token_document(doc_id, data, where)
            else:
                raise ValueError(f"{where}: each line needs a 'text' string or a 'tokens' list")
            documents.append(_checked(doc, report, where))
    return documents


def _entities(data: dict[str, Any], where: str) -> list[dict[str, Any]]:
    entities = data.get("entities", data.get("spans", []))
    if not isinstance(entities, list):
        raise ValueError(f"{where}: 'entities' must be a list")
    return entities


def _char_mentions(data: dict[str, Any], where: str) -> list[Mention]:
    mentions = []
    for entity in _entities(data, where):
        try:
            if "fragments" in entity:
                fragments = [(int(s), int(e)) for s, e in entity["fragments"]]
            else:
                fragments = [(int(entity["start"]), int(entity["end"]))]
            mentions.append(Mention(fragments, entity["label"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{where}: an entity needs 'start', 'end' (or 'fragments') and 'label', got "
                f"{entity!r}"
            ) from None
    return mentions


def _token_document(doc_id: str, data: dict[str, Any], where: str) -> Document:
    tokens = [str(t) for t in data["tokens"]]
    spaces = data.get("spaces") or [True] * len(tokens)
    if len(spaces) != len(tokens):
        raise ValueError(f"{where}: 'spaces' has {len(spaces)} values for {len(tokens)} tokens")
    starts, text = [], ""
    for token, space in zip(tokens, spaces, strict=True):
        starts.append(len(text))
        text += token + (" " if space else "")
    text = text.rstrip(" ") if spaces and spaces[-1] else text
    ends = [s + len(t) for s, t in zip(starts, tokens, strict=True)]
    tags = data.get("ner_tags", data.get("tags"))
    spans: list[tuple[int, int, str]] = []
    if tags is not None:
        if len(tags) != len(tokens):
            raise ValueError(f"{where}: {len(tags)} tags for {len(tokens)} tokens")
        spans = [(starts[s], ends[e - 1], label) for s, e, label in tag_spans(tags, where)]
        return Document(doc_id, text, [Mention([(s, e)], label) for s, e, label in spans])
    mentions = []
    for entity in _entities(data, where):
        try:
            first, last, label = int(entity["start"]), int(entity["end"]), entity["label"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{where}: a token entity needs 'start', 'end' (token indices, end exclusive) and "
                f"'label', got {entity!r}"
            ) from None
        if not 0 <= first < last <= len(tokens):
            raise ValueError(f"{where}: token span [{first}, {last}) outside {len(tokens)} tokens")
        mentions.append(Mention([(starts[first], ends[last - 1])], label))
    return Document(doc_id, text, mentions)


def tag_spans(tags: Sequence[str], where: str = "") -> list[tuple[int, int, str]]:
    """Token spans (start, end exclusive, label) of IOB, IOB2 or BILUO tag strings."""
    spans: list[tuple[int, int, str]] = []
    start, label = None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = str(tag).partition("-")
        if prefix not in ("B", "I", "L", "U", "E", "S", "O") or (prefix != "O" and not name):
            raise ValueError(f"{where}: tag {tag!r} is not IOB/BILUO")
        continues = prefix in ("I", "L", "E") and label == name and start is not None
        if start is not None and not continues:
            spans.append((start, i, label))
            start, label = None, None
        if prefix in ("B", "U", "S") or (prefix in ("I", "L", "E") and not continues):
            start, label = i, name
        if prefix in ("L", "U", "E", "S") and start is not None:
            spans.append((start, i + 1, label))
            start, label = None, None
    return spans


def read_brat(folder: Path, report: ConversionReport) -> list[Document]:
    documents = []
    texts = sorted(folder.rglob("*.txt"))
    if not texts:
        raise ValueError(f"{folder} has no .txt files")
    for text_path in texts:
        text = text_path.read_text(encoding="utf8")
        doc_id = str(text_path.relative_to(folder).with_suffix(""))
        ann_path = text_path.with_suffix(".ann")
        mentions: list[Mention] = []
        if not ann_path.exists():
            report.note("txt_without_ann", doc_id)
        else:
            for n, line in enumerate(ann_path.read_text(encoding="utf8").splitlines(), start=1):
                where = f"{ann_path.name}:{n}"
                if not line.strip():
                    continue
                kind = line[0]
                if kind != "T":
                    report.note(f"brat_{kind}_lines_ignored")
                    continue
                parts = line.split("\t")
                if len(parts) < 2:
                    report.note("brat_malformed_lines", where)
                    continue
                label, _, ranges = parts[1].partition(" ")
                try:
                    fragments = [
                        (int(a), int(b)) for a, b in (piece.split() for piece in ranges.split(";"))
                    ]
                except ValueError:
                    report.note("brat_malformed_lines", where)
                    continue
                written = parts[2] if len(parts) > 2 else None
                if written is not None and all(0 <= s < e <= len(text) for s, e in fragments):
                    joined = " ".join(text[s:e] for s, e in fragments)
                    if joined != written:
                        report.note("brat_text_mismatch", f"{where}: {written!r} != {joined!r}")
                mentions.append(Mention(fragments, label))
        documents.append(_checked(Document(doc_id, text, mentions), report, doc_id))
    orphans = [p for p in folder.rglob("*.ann") if not p.with_suffix(".txt").exists()]
    for orphan in orphans:
        report.note("ann_without_txt", orphan.name)
    return documents


def _read_with_spacy(path: Path, report: ConversionReport, format: str) -> list[Document]:
    from spacy.training.converters import conll_ner_to_docs, iob_to_docs

    data = path.read_text(encoding="utf8")
    converter = conll_ner_to_docs if format == "conll" else iob_to_docs
    docs = [doc for doc in converter(data, n_sents=1, no_print=True) if doc.text.strip()]
    return [
        Document(
            f"{path.stem}:{i}",
            doc.text,
            [Mention([(e.start_char, e.end_char)], e.label_) for e in doc.ents],
        )
        for i, doc in enumerate(docs)
    ]


def read_docbin_mentions(path: Path, report: ConversionReport) -> list[Document]:
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    docs = DocBin().from_disk(path).get_docs(Vocab())
    return [
        Document(
            str(doc.user_data.get("id") or f"{path.stem}:{i}"),
            doc.text,
            [Mention([(e.start_char, e.end_char)], e.label_) for e in doc.ents],
        )
        for i, doc in enumerate(docs)
    ]


def to_examples(
    documents: Iterable[Document],
    *,
    discontinuous: str = "cover",
    labels: Sequence[str] | None = None,
    report: ConversionReport | None = None,
) -> list[Example]:
    """Gold examples with the policies applied (see the module docstring), repeated texts once."""
    if discontinuous not in DISCONTINUOUS_POLICIES:
        raise ValueError(
            f"discontinuous must be one of {', '.join(DISCONTINUOUS_POLICIES)}, got "
            f"{discontinuous!r}"
        )
    report = report if report is not None else ConversionReport()
    keep = set(labels) if labels else None
    seen: dict[str, tuple[str, list[tuple[int, int, str]]]] = {}
    examples = []
    for doc in documents:
        spans: list[tuple[int, int, str]] = []
        for mention in doc.mentions:
            if keep is not None and mention.label not in keep:
                report.note("mentions_other_label", mention.label)
                continue
            fragments = sorted(mention.fragments)
            if len(fragments) > 1:
                strings = " ... ".join(doc.text[s:e] for s, e in fragments)
                report.note(f"discontinuous_{discontinuous}", f"{doc.id}: {strings!r}")
                if discontinuous == "drop":
                    continue
                if discontinuous == "cover":
                    fragments = [(fragments[0][0], max(e for _, e in fragments))]
            spans.extend((s, e, mention.label) for s, e in fragments)
        unique = sorted(set(spans))
        report.note("duplicate_mentions", n=len(spans) - len(unique))
        kept = resolve_overlaps(unique)
        for start, end, label in sorted(set(unique) - set(kept)):
            report.note("overlaps_removed", f"{doc.id}: {doc.text[start:end]!r} ({label})")
        key = normalize_text(doc.text)
        if key in seen:
            first_id, first_spans = seen[key]
            conflict = first_spans != kept
            report.note(
                "repeated_texts_conflicting" if conflict else "repeated_texts_dropped",
                f"{doc.id} = {first_id}",
            )
            continue
        seen[key] = (doc.id, kept)
        report.labels.update(label for _, _, label in kept)
        report.note("texts_without_entities" if not kept else "texts_with_entities")
        examples.append(make_example(doc.text, kept, id=doc.id))
    return examples


def load_annotations(
    path: str | Path,
    format: str | None = None,
    *,
    discontinuous: str = "cover",
    labels: Sequence[str] | None = None,
) -> list[Example]:
    """Gold examples of an annotated file or folder in any of the formats, policies applied."""
    report = ConversionReport()
    documents = read_annotations(path, format, report)
    return to_examples(documents, discontinuous=discontinuous, labels=labels, report=report)


def split_examples(
    examples: Sequence[Example], fractions: Sequence[float] = (0.8, 0.1, 0.1)
) -> dict[str, list[Example]]:
    """train/dev/test by a hash of each example's id (no random state)."""
    splits: dict[str, list[Example]] = {name: [] for name in SPLIT_ORDER}
    for example in examples:
        splits[hash_split(example["id"] or example["text"], fractions)].append(example)
    return splits


def remove_leaks(
    splits: dict[str, list[Example]], report: ConversionReport | None = None
) -> dict[str, list[Example]]:
    """A text in two splits is kept in the later one only (test before dev before train)."""
    report = report if report is not None else ConversionReport()
    later: set[str] = set()
    out: dict[str, list[Example]] = {}
    for name in reversed(SPLIT_ORDER):
        kept = []
        for example in splits.get(name, []):
            key = normalize_text(example["text"])
            if key in later:
                report.note(f"leaks_removed_from_{name}", example["id"])
                continue
            kept.append(example)
        later.update(normalize_text(e["text"]) for e in kept)
        out[name] = kept
    return {name: out[name] for name in SPLIT_ORDER if name in splits}


def convert_annotations(
    inputs: dict[str, str | Path],
    output: str | Path,
    *,
    format: str | None = None,
    discontinuous: str = "cover",
    labels: Sequence[str] | None = None,
    lang: str = "en",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> dict[str, Any]:
    """Convert annotated files into `output`: `{split}.jsonl`, `{split}.spacy`, the report.

    `inputs`: {"all": path} to split one input by a hash of the document ids (`fractions`), or
    {"train": path, "dev": path, "test": path} (any of them) for splits that exist already.
    """
    import spacy

    from spacy_medllm.corpora.docs import write_docbin, write_jsonl

    report = ConversionReport()
    per_split: dict[str, list[Example]] = {}
    for name, path in inputs.items():
        documents = read_annotations(path, format, report)
        examples = to_examples(documents, discontinuous=discontinuous, labels=labels, report=report)
        if name == "all":
            for split, part in split_examples(examples, fractions).items():
                per_split.setdefault(split, []).extend(part)
        else:
            per_split.setdefault(name, []).extend(examples)
    per_split = remove_leaks(per_split, report)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    make_doc = spacy.blank(lang).make_doc
    splits: dict[str, Any] = {}
    for name, examples in per_split.items():
        write_jsonl(examples, output / f"{name}.jsonl")
        alignment = write_docbin(examples, output / f"{name}.spacy", make_doc)
        mentions = Counter(label for e in examples for _, _, label in e["spans"])
        splits[name] = {
            "n_texts": len(examples),
            "n_texts_without_entities": sum(1 for e in examples if not e["spans"]),
            "n_mentions": sum(mentions.values()),
            "mentions_per_label": dict(mentions.most_common()),
            "alignment": alignment.to_dict(),
        }
    result = {
        "inputs": {name: str(path) for name, path in inputs.items()},
        "format": format or guess_format(next(iter(inputs.values()))),
        "discontinuous": discontinuous,
        "overlaps": "the longest span kept",
        "labels": list(labels) if labels else sorted(report.labels),
        "lang": lang,
        "splits": splits,
        **report.to_dict(),
    }
    (output / "report.json").write_text(
        json.dumps(result, indent=2, ensure_ascii=False), encoding="utf8"
    )
    (output / "report.md").write_text(report_markdown(result), encoding="utf8")
    return result


def report_markdown(result: dict[str, Any]) -> str:
    """The conversion report as Markdown: splits, labels, and every policy's count."""
    from spacy_medllm.util.formatting import markdown_table

    lines = [
        "## Conversion report",
        "",
        f"Input: {', '.join(f'{k}={v}' for k, v in result['inputs'].items())} "
        f"(format {result['format']}); discontinuous mentions: {result['discontinuous']}; "
        f"overlaps: {result['overlaps']}.",
        "",
    ]
    rows = [
        [
            name,
            str(s["n_texts"]),
            str(s["n_texts_without_entities"]),
            str(s["n_mentions"]),
            ", ".join(f"{label} {n}" for label, n in s["mentions_per_label"].items()) or "-",
        ]
        for name, s in result["splits"].items()
    ]
    lines += [
        markdown_table(["Split", "Texts", "Without entities", "Mentions", "Per label"], rows),
        "",
    ]
    counts = [[kind, str(n)] for kind, n in result["counts"].items()]
    lines += [markdown_table(["What was found", "Count"], counts), ""]
    for kind, examples in result["examples"].items():
        lines.append(f"- {kind}: " + "; ".join(examples))
    return "\n".join(lines).rstrip() + "\n"
