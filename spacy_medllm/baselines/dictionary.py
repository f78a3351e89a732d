"""Classic NER baselines: a training-set dictionary (`medllm_dictionary`) and the command line.

The dictionary baseline is what a lookup in the training data gives: every string annotated as an
entity in the training split becomes a PhraseMatcher pattern (matched on `attr`, LOWER by default,
so case variants are found), with the label it carries most often in training (ties: the label
that sorts first; `dictionary_patterns` counts the ambiguous strings). Overlapping matches keep
the longest (`spacy.util.filter_spans`: most tokens, then the leftmost). Patterns are saved as
JSON lines (`patterns.jsonl`, EntityRuler's format plus a count) and `cfg.json`; nothing is
pickled.

The transformer token classifier lives in `spacy_medllm.baselines.token_classifier`; the CNN
baseline is plain `spacy train configs/cnn_ner.cfg`. Commands:

    python -m spacy_medllm baseline build-dictionary --corpus bc5cdr --output DIR
    python -m spacy_medllm baseline train-transformer --corpus bc5cdr --output DIR --epochs 3

This module is imported by spaCy's `spacy_factories` entry point whenever any pipeline is built,
so it imports only spaCy and the standard library at module level.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spacy.language import Language
from spacy.matcher import PhraseMatcher
from spacy.pipeline import Pipe
from spacy.tokens import Doc, Span
from spacy.util import ensure_path, filter_spans

if TYPE_CHECKING:
    from spacy.training import Example as SpacyExample

logger = logging.getLogger("spacy_medllm")

DICTIONARY_ATTRS = ("ORTH", "LOWER", "NORM")
PATTERNS_FILE = "patterns.jsonl"
CFG_FILE = "cfg.json"

Pattern = dict[str, Any]  # {"label": str, "pattern": str, "count": int}


# -- building patterns ----------------------------------------------------------------------------


def _check_attr(attr: str) -> str:
    if attr not in DICTIONARY_ATTRS:
        raise ValueError(f"medllm_dictionary: attr must be one of {DICTIONARY_ATTRS}, got {attr!r}")
    return attr


def span_key(span: Span | Doc, attr: str) -> tuple[str, ...]:
    """What the PhraseMatcher compares for `attr`: the tokens' ORTH, LOWER or NORM strings."""
    name = f"{attr.lower()}_"
    return tuple(getattr(token, name) for token in span)


def dictionary_patterns(
    docs: Iterable[Doc], attr: str = "LOWER", stats: Counter[str] | None = None
) -> list[Pattern]:
    """One pattern per distinct entity string of `docs` (compared on `attr`), labelled with the
    label the string carries most often (ties: the label that sorts first); the pattern text is
    the string's most frequent spelling. `stats` receives "n_entities", "n_strings" and
    "n_ambiguous" (strings seen with more than one label)."""
    _check_attr(attr)
    labels: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
    spellings: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
    n_entities = 0
    for doc in docs:
        for ent in doc.ents:
            key = span_key(ent, attr)
            labels[key][ent.label_] += 1
            spellings[key][ent.text] += 1
            n_entities += 1
    patterns: list[Pattern] = []
    n_ambiguous = 0
    for key, counts in labels.items():
        n_ambiguous += len(counts) > 1
        label = max(sorted(counts), key=lambda name: counts[name])
        text = max(sorted(spellings[key]), key=lambda name: spellings[key][name])
        patterns.append({"label": label, "pattern": text, "count": counts[label]})
    if stats is not None:
        stats.update(n_entities=n_entities, n_strings=len(patterns), n_ambiguous=n_ambiguous)
    return sorted(patterns, key=lambda p: (p["label"], p["pattern"]))


# -- the component --------------------------------------------------------------------------------


@Language.factory(
    "medllm_dictionary",
    default_config={
        "attr": "LOWER",
        "overwrite_ents": False,
        "scorer": {"@scorers": "spacy.ner_scorer.v1"},
    },
    assigns=["doc.ents"],
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_dictionary(
    nlp: Language, name: str, attr: str, overwrite_ents: bool, scorer: Callable | None
) -> DictionaryNER:
    """Build a `medllm_dictionary` component (no patterns yet; see DictionaryNER)."""
    return DictionaryNER(nlp, name, attr=attr, overwrite_ents=overwrite_ents, scorer=scorer)


class DictionaryNER(Pipe):
    """Entities from a dictionary of training-set strings, matched with a PhraseMatcher.

    `attr`: what tokens are compared on (ORTH, LOWER or NORM). `overwrite_ents`: whether a match
    replaces an existing entity it overlaps (otherwise the existing entity stays and the match is
    dropped); entities that overlap no match are kept either way.
    """

    def __init__(
        self,
        nlp: Language,
        name: str = "medllm_dictionary",
        *,
        attr: str = "LOWER",
        overwrite_ents: bool = False,
        scorer: Callable | None = None,
    ) -> None:
        self.nlp = nlp
        self.name = name
        self.attr = _check_attr(attr)
        self.overwrite_ents = overwrite_ents
        self.scorer = scorer
        self.matcher = PhraseMatcher(nlp.vocab, attr=attr)
        self._patterns: list[Pattern] = []

    @property
    def patterns(self) -> list[Pattern]:
        return [dict(p) for p in self._patterns]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(sorted({p["label"] for p in self._patterns}))

    def __len__(self) -> int:
        return len(self._patterns)

    def clear(self) -> None:
        self.matcher = PhraseMatcher(self.nlp.vocab, attr=self.attr)
        self._patterns = []

    def add_patterns(self, patterns: Iterable[Mapping[str, Any]]) -> None:
        """Add `{"label", "pattern"[, "count"]}` patterns (a string already present under another
        label is added again: the PhraseMatcher then reports both)."""
        patterns = [
            {
                "label": str(p["label"]),
                "pattern": str(p["pattern"]),
                "count": int(p.get("count", 1)),
            }
            for p in patterns
        ]
        by_label: dict[str, list[Doc]] = defaultdict(list)
        texts = [p["pattern"] for p in patterns]
        for pattern, doc in zip(patterns, self.nlp.tokenizer.pipe(texts), strict=True):
            if len(doc):
                by_label[pattern["label"]].append(doc)
        for label, docs in by_label.items():
            self.matcher.add(label, docs)
        self._patterns.extend(patterns)

    def initialize(
        self,
        get_examples: Callable[[], Iterable[SpacyExample]],
        *,
        nlp: Language | None = None,
        patterns: list[dict] | None = None,  # builtins only: spaCy validates this signature
    ) -> None:
        """Patterns from `patterns` if given, else from the reference entities of the examples."""
        self.clear()
        if patterns is None:
            stats: Counter[str] = Counter()
            patterns = dictionary_patterns(
                (eg.reference for eg in get_examples()), self.attr, stats
            )
            logger.info("medllm_dictionary: %s", dict(stats))
        self.add_patterns(patterns)

    def match(self, doc: Doc) -> list[Span]:
        """The matches as labelled spans, overlaps resolved longest first (then leftmost)."""
        return filter_spans(self.matcher(doc, as_spans=True))

    def __call__(self, doc: Doc) -> Doc:
        matches = self.match(doc)
        existing = list(doc.ents)
        if self.overwrite_ents:
            taken = {i for span in matches for i in range(span.start, span.end)}
            kept = [e for e in existing if taken.isdisjoint(range(e.start, e.end))]
            doc.ents = sorted([*kept, *matches], key=lambda s: s.start)
        else:
            taken = {i for span in existing for i in range(span.start, span.end)}
            fresh = [m for m in matches if taken.isdisjoint(range(m.start, m.end))]
            doc.ents = sorted([*existing, *fresh], key=lambda s: s.start)
        return doc

    # -- serialization (JSON, no pickle) -------------------------------------------------------

    def _cfg(self) -> dict[str, Any]:
        return {"attr": self.attr, "overwrite_ents": self.overwrite_ents}

    def _load(self, cfg: Mapping[str, Any], patterns: Iterable[Mapping[str, Any]]) -> None:
        self.attr = _check_attr(cfg.get("attr", self.attr))
        self.overwrite_ents = bool(cfg.get("overwrite_ents", self.overwrite_ents))
        self.clear()
        self.add_patterns(patterns)

    def to_disk(self, path: str | Path, *, exclude: Iterable[str] = tuple()) -> None:
        path = ensure_path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CFG_FILE).write_text(json.dumps(self._cfg(), indent=2), "utf8")
        lines = (json.dumps(p, ensure_ascii=False) + "\n" for p in self._patterns)
        (path / PATTERNS_FILE).write_text("".join(lines), "utf8")

    def from_disk(self, path: str | Path, *, exclude: Iterable[str] = tuple()) -> DictionaryNER:
        path = ensure_path(path)
        cfg = json.loads((path / CFG_FILE).read_text("utf8"))
        lines = (path / PATTERNS_FILE).read_text("utf8").splitlines()
        self._load(cfg, (json.loads(line) for line in lines if line.strip()))
        return self

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        data = {"cfg": self._cfg(), "patterns": self._patterns}
        return json.dumps(data, ensure_ascii=False).encode("utf8")

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> DictionaryNER:
        data = json.loads(bytes_data.decode("utf8"))
        self._load(data["cfg"], data["patterns"])
        return self


def build_dictionary_pipeline(
    train_examples: Iterable[Mapping[str, Any]],
    lang: str = "en",
    *,
    attr: str = "LOWER",
    stats: Counter[str] | None = None,
) -> Language:
    """A `spacy.blank(lang)` pipeline with a `medllm_dictionary` of the examples' entity strings.

    `train_examples` are the package's gold examples (`{"text", "spans": [(start, end, label)]}`,
    e.g. from `corpora.load_corpus`); spans are snapped to the pipeline's tokens first.
    """
    import spacy

    from spacy_medllm.corpora.docs import AlignmentCounts, gold_doc

    nlp = spacy.blank(lang)
    component = nlp.add_pipe("medllm_dictionary", config={"attr": attr})
    counts = AlignmentCounts()
    docs = (gold_doc(nlp.make_doc, dict(example), counts) for example in train_examples)
    stats = stats if stats is not None else Counter()
    component.add_patterns(dictionary_patterns(docs, attr, stats))
    stats.update({f"alignment_{k}": v for k, v in counts.to_dict().items()})
    return nlp


def build_dictionary_baseline(
    corpus: str,
    output: str | Path,
    *,
    split: str = "train",
    path: str | Path | None = None,
    labels: Sequence[str] | None = None,
    max_train_docs: int | None = None,
    lang: str | None = None,
    attr: str = "LOWER",
) -> dict[str, Any]:
    """A `medllm_dictionary` pipeline of a registered corpus's training strings, saved to
    `output`; returns its record (corpus, documents, alignment counts)."""
    from spacy_medllm.corpora.registry import corpus_info, load_corpus

    examples = load_corpus(corpus, split, path, labels=labels, limit=max_train_docs or None)
    stats: Counter[str] = Counter()
    nlp = build_dictionary_pipeline(
        examples, lang or corpus_info(corpus).lang, attr=attr, stats=stats
    )
    record = {"corpus": corpus, "split": split, "n_docs": len(examples), "attr": attr, **stats}
    nlp.meta["name"] = f"dictionary_{corpus.replace('-', '_')}"
    nlp.meta["medllm_training"] = record
    nlp.to_disk(output)
    return record
