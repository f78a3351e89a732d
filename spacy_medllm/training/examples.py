"""The training examples of a run: read, deduplicated, held-out texts removed, labels filtered, cut
into the pieces `medllm_ner` reads (`max_chunk_tokens`), and turned into token records.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spacy_medllm.core.examples import (
    Example,
    deduplicate,
    read_examples,
    remove_shared,
    split_example,
)
from spacy_medllm.core.prompts import PromptBuilder
from spacy_medllm.training.records import (
    build_records,
    encode_prompt,
)
from spacy_medllm.util.progress import say

logger = logging.getLogger("spacy_medllm")


def chunk_examples(
    examples: Sequence[Example], builder: PromptBuilder, tokenizer: Any, max_chunk_tokens: int
) -> list[Example]:
    """The examples cut into the pieces `medllm_ner` prompts with `max_chunk_tokens` set.

    The plan is the component's: the same budget (`chunking.piece_budget`: the prompt head plus
    `max_chunk_tokens`; the context is left to max_length here), prompt tokens counted with the
    same rendering and tokenisation, and `chunking.plan_chunks` packing sentences (found by the
    punctuation rule, as in a blank pipeline) into pieces that fit. Pieces that would cut a gold
    span are joined (`split_example`). Texts that fit stay whole.
    """
    import spacy

    from spacy_medllm.core.chunking import piece_budget, plan_chunks
    from spacy_medllm.generators.chat import render_prompt

    make_doc = spacy.blank("xx").make_doc

    def count_tokens(text: str) -> int:
        return len(encode_prompt(tokenizer, render_prompt(tokenizer, builder.messages(text))))

    budget = piece_budget(count_tokens, max_chunk_tokens)
    pieces: list[Example] = []
    for example in examples:
        ranges = plan_chunks(make_doc(example["text"]), budget=budget, count_tokens=count_tokens)
        pieces.extend(split_example(example, ranges))
    return pieces


def cap_empty(
    examples: Sequence[Example], max_share: float | None, seed: int = 42
) -> tuple[list[Example], dict[str, Any]]:
    """At most `max_share` of the examples without an entity (None: all kept), the rest sampled
    away deterministically (by a hash of the seed and the text); the order is kept.

    Returns the kept examples and counts for the training record.
    """
    empty = [i for i, e in enumerate(examples) if not e["spans"] and not e.get("answer_entities")]
    n_full = len(examples) - len(empty)
    keep = len(empty)
    if max_share is not None and empty:
        # empty / (full + empty) <= share  <=>  empty <= share / (1 - share) * full
        keep = min(len(empty), int(max_share / (1.0 - max_share) * n_full + 1e-9))
    if keep < len(empty):

        def rank(i: int) -> str:
            text = f"{seed}\0{examples[i]['text']}".encode()
            return hashlib.sha256(text).hexdigest()

        kept_empty = set(sorted(empty, key=rank)[:keep])
        dropped = set(empty) - kept_empty
        examples = [e for i, e in enumerate(examples) if i not in dropped]
    stats = {
        "n_with_entities": n_full,
        "n_empty": len(empty),
        "n_empty_kept": keep,
        "empty_share": keep / (n_full + keep) if n_full + keep else 0.0,
        "max_empty_share": max_share,
    }
    return list(examples), stats


def prepare_records(
    examples: Sequence[Example], builder: PromptBuilder, tokenizer: Any, max_length: int, what: str
) -> tuple[list[dict[str, Any]], int]:
    records = build_records(examples, builder, tokenizer)
    kept = [r for r in records if len(r["input_ids"]) <= max_length]
    dropped = len(records) - len(kept)
    if dropped:
        logger.warning(
            "Dropped %d of %d %s records longer than max_length = %d tokens (they are never "
            "truncated: a cut answer would teach the model to stop mid-JSON).",
            dropped,
            len(records),
            what,
            max_length,
        )
    return kept, dropped


def parse_source(spec: str | Path) -> tuple[Path, float]:
    """A training source `PATH` or `PATH@WEIGHT` (weight 2: every example twice; 0.5: half of
    them, chosen by a hash of the text; 1.5: all, and half again)."""
    text = str(spec)
    path, at, weight = text.rpartition("@")
    if not at or not path:
        return Path(text), 1.0
    try:
        value = float(weight)
    except ValueError:
        return Path(text), 1.0  # an "@" that is part of the file name
    if value <= 0:
        raise ValueError(f"{text}: the weight after @ must be positive")
    return Path(path), value


def weighted(examples: Sequence[Example], weight: float, seed: int = 42) -> list[Example]:
    """The examples `int(weight)` times, plus the fraction of them that `weight` has beyond
    that, chosen deterministically by a hash of the seed and the text."""
    whole = int(weight)
    part = weight - whole
    out = [e for _ in range(whole) for e in examples]
    if part > 1e-9:

        def rank(example: Example) -> str:
            return hashlib.sha256(f"{seed}\1{example['text']}".encode()).hexdigest()

        chosen = {id(e) for e in sorted(examples, key=rank)[: round(part * len(examples))]}
        out += [e for e in examples if id(e) in chosen]
    return out


def load_training_examples(
    paths: Sequence[str | Path],
    exclude: Sequence[str | Path] = (),
    dedupe: bool = True,
) -> list[Example]:
    """Read and join training sources (`PATH` or `PATH@WEIGHT`, see `parse_source`); drop
    repeated texts within each source and texts that occur in `exclude`, then weight each."""
    excluded: list[Example] = []
    for path in exclude:
        excluded.extend(read_examples(path))
    examples: list[Example] = []
    lines = []
    for spec in paths:
        path, weight = parse_source(spec)
        read = read_examples(path)
        kept = deduplicate(read) if dedupe else list(read)
        if excluded:
            kept = remove_shared(kept, excluded)
        examples.extend(weighted(kept, weight))
        lines.append(
            f"{path}: {len(read)} read, {len(read) - len(kept)} repeats or excluded texts "
            f"removed, {len(kept)} x {weight:g}"
        )
    say(f"training examples: {'; '.join(lines)}: {len(examples)} in all")
    return examples
