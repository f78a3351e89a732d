"""Deterministic splits and leak checks: hash splits by document key, no text shared across splits
or between a training corpus and a test corpus.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from spacy_medllm.core.examples import (
    Example,
)

SPLIT_ORDER = ("train", "dev", "test")

HASH_FRACTIONS = (0.8, 0.1, 0.1)


class CorpusContaminationError(ValueError):
    """A training and a test set share texts (or come from corpora that do)."""


def hash_split(key: str, fractions: Sequence[float] = HASH_FRACTIONS) -> str:
    """The split of a key (a PubMed ID): sha256 of the key, its first 8 bytes as a number in
    [0, 1), cut at the cumulative `fractions` of train, dev, test. No random state involved."""
    if len(fractions) != len(SPLIT_ORDER) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be 3 numbers summing to 1, got {fractions}")
    value = int.from_bytes(hashlib.sha256(key.encode("utf8")).digest()[:8], "big") / 2**64
    edge = 0.0
    for split, fraction in zip(SPLIT_ORDER, fractions, strict=True):
        edge += fraction
        if value < edge:
            return split
    return SPLIT_ORDER[-1]


def dedupe_texts_across_splits(
    splits: dict[str, list[Example]], counts: Counter[str]
) -> dict[str, list[Example]]:
    """Each text kept once: the first occurrence, in train, dev, test order (a text repeated in a
    later split would otherwise be a leak)."""
    seen: set[str] = set()
    out: dict[str, list[Example]] = {}
    for split in sorted(splits, key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 99):
        kept = []
        for example in splits[split]:
            if example["text"] in seen:
                counts["duplicate_texts_removed"] += 1
                continue
            seen.add(example["text"])
            kept.append(example)
        out[split] = kept
    return out


# Corpora that share texts: never train on one and test on another of the same group.
OVERLAPPING_CORPORA: tuple[frozenset[str], ...] = (frozenset({"phee", "ade-corpus-v2"}),)
# Corpora that read the same texts with the same split count as one corpus in these checks.
SPLIT_FAMILIES = {"ade-corpus-v2-ae": "ade-corpus-v2"}


def _name_and_split(spec: str) -> tuple[str, str | None]:
    name, _, split = spec.partition(":")
    return SPLIT_FAMILIES.get(name, name), split or None


def check_no_cross_contamination(train_corpus: str | Iterable[str], test_corpus: str) -> None:
    """Refuse a train/test combination of corpora known to share texts (PHEE and ADE-Corpus-V2,
    either direction), and the same split of one corpus on both sides.

    Names may carry a split (`"phee:train"`); `train_corpus` may list several corpora.
    Raises CorpusContaminationError.
    """
    trains = [train_corpus] if isinstance(train_corpus, str) else list(train_corpus)
    test_name, test_split = _name_and_split(test_corpus)
    for spec in trains:
        train_name, train_split = _name_and_split(spec)
        for group in OVERLAPPING_CORPORA:
            if train_name != test_name and {train_name, test_name} <= group:
                raise CorpusContaminationError(
                    f"refusing to train on {train_name!r} and test on {test_name!r}: most PHEE "
                    "sentences are ADE-Corpus-V2 sentences (2,548 / 798 / 833 of PHEE's train / "
                    "dev / test), so the test set would be seen in training. Use one corpus's own "
                    "splits, or remove the shared texts first (check_no_text_overlap)."
                )
        if train_name == test_name and train_split is not None and train_split == test_split:
            raise CorpusContaminationError(
                f"refusing to train and test on the same split {train_name}:{train_split}"
            )


def normalize_text(text: str) -> str:
    """Lower case, whitespace collapsed: what text-overlap checks compare."""
    return " ".join(text.lower().split())


def shared_texts(
    first: Iterable[Example], second: Iterable[Example], *, normalize: bool = True
) -> list[Example]:
    """The examples of `second` whose text also occurs in `first` (compared after
    `normalize_text` unless `normalize=False`)."""
    key = normalize_text if normalize else (lambda text: text)
    texts = {key(e["text"]) for e in first}
    return [e for e in second if key(e["text"]) in texts]


def check_no_text_overlap(
    train: Iterable[Example],
    test: Iterable[Example],
    *,
    normalize: bool = True,
    what: str = "train/test",
) -> None:
    """Raise CorpusContaminationError if any test text also occurs among the training texts."""
    test = list(test)
    shared = shared_texts(train, test, normalize=normalize)
    if shared:
        ids = ", ".join(repr(e.get("id")) for e in shared[:5])
        raise CorpusContaminationError(
            f"{what}: {len(shared)} of {len(test)} test texts also occur in training "
            f"(ids {ids}{', ...' if len(shared) > 5 else ''})"
        )


def word_runs(text: str, n: int = 8) -> set[tuple[str, ...]]:
    """Every run of `n` consecutive words of the text (lower-cased, punctuation dropped)."""
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def shared_word_runs(
    texts: Iterable[str], protected: Iterable[str], n: int = 8
) -> list[tuple[int, str]]:
    """The texts that share a run of `n` words with a protected text (a test set written by
    hand must not leak into training data): (index, the run) for each."""
    guarded: set[tuple[str, ...]] = set()
    for text in protected:
        guarded |= word_runs(text, n)
    found = []
    for i, text in enumerate(texts):
        shared = word_runs(text, n) & guarded
        if shared:
            found.append((i, " ".join(min(shared))))
    return found
