"""Decoding loops of `HFGenerator`: draft-and-check greedy decoding, and the shared-prefix cache.

`decode_with_drafts` decodes a batch several tokens per forward pass where the next tokens can be
guessed (the schema's forced tokens, the document's continuation of an entity text) and kept only
where they are the model's own greedy choice. `PrefixCache` keeps the key/value cache of the prompt
head every prompt shares (system message, few-shot examples) so that each batch starts from a copy.
torch is imported inside the functions.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from spacy_medllm.core.confidence import ScoredResponse
from spacy_medllm.generators.base import Prompt
from spacy_medllm.generators.hf.loading import cache_keyword

if TYPE_CHECKING:
    from spacy_medllm.generators.hf.generator import HFGenerator


def common_prefix_length(first: Sequence[int], second: Sequence[int]) -> int:
    """How many leading items `first` and `second` share."""
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


class PrefixCache:
    """The key/value caches of shared prompt heads for one loaded model.

    `encode` is the generator's prompt encoder (the exact token ids the model reads).
    """

    # Shorter shared heads are not worth a cache: the copy costs more than reading them.
    MIN_PREFIX_TOKENS = 16
    MAX_CACHED_PREFIXES = 4

    def __init__(self, encode: Callable[[Prompt], list[int]]) -> None:
        self._encode = encode
        self.heads: dict[str, list[int]] = {}
        self.stored: dict[tuple[int, ...], Any] = {}

    def shared_head(self, prompt: Prompt) -> list[int]:
        """The token ids every prompt with `prompt`'s messages before the last one starts with.

        Found by encoding those messages with two different one-letter documents and keeping the
        common start, so it holds for any chat template (including one that adds a default
        system message) and never assumes where a tokenizer merges across the boundary.
        """
        head = list(prompt[:-1])
        role = prompt[-1].get("role", "user") if prompt else "user"
        key = json.dumps([head, role], ensure_ascii=False, sort_keys=True)
        if key not in self.heads:
            first = self._encode([*head, {"role": role, "content": "a"}])
            second = self._encode([*head, {"role": role, "content": "b"}])
            self.heads[key] = first[: common_prefix_length(first, second)]
        return self.heads[key]

    def batch_prefix(self, prompts: Sequence[Prompt], encoded: Sequence[list[int]]) -> int:
        """How many leading tokens all rows of a batch share and the cache can serve (0: none).
        Each row keeps at least one token of its own for the model to read."""
        if not prompts:
            return 0
        head = self.shared_head(prompts[0])
        shared = min(common_prefix_length(head, ids) for ids in encoded)
        shared = min(shared, min(len(ids) for ids in encoded) - 1)
        return shared if shared >= self.MIN_PREFIX_TOKENS else 0

    def cache_for(self, model: Any, device: str | None, prefix: list[int], rows: int) -> Any:
        """A fresh key/value cache of `prefix` for `rows` rows (the prefix runs once per model)."""
        import torch

        # The weights' in-place version counters are part of the key: a model changed in place
        # (further training, new weights loaded into it) never reuses a stale cache.
        weights = sum(param._version for param in model.parameters())
        key = (weights, *prefix)
        stored = self.stored.pop(key, None)
        if stored is None:
            with torch.inference_mode():
                output = model(
                    input_ids=torch.tensor([prefix], device=device),
                    use_cache=True,
                    logits_to_keep=1,
                )
            # transformers 5 calls it `cache` (`past_key_values` before).
            stored = getattr(output, "cache", None) or output.past_key_values
        self.stored[key] = stored  # most recently used last
        while len(self.stored) > self.MAX_CACHED_PREFIXES:
            self.stored.pop(next(iter(self.stored)))
        with torch.inference_mode():
            cache = copy.deepcopy(stored)
            if rows > 1:
                cache.batch_repeat_interleave(rows)
        return cache


def prompt_key(prompt: Any) -> str:
    """The key of a prompt's recorded empty-answer probability: its text (last message)."""
    return str(prompt[-1].get("content", "")) if prompt else ""


def answer_tokens(tokens: list[int], stops: set[int]) -> list[int]:
    """The generated tokens up to the first stop or padding token (rows that finished early)."""
    for k, token in enumerate(tokens):
        if token in stops:
            return tokens[:k]
    return tokens


def scored_response(tokenizer: Any, tokens: list[int], logprobs: list[float]) -> ScoredResponse:
    """The decoded text with each token's characters: prefixes decoded one token longer each."""
    prefixes = tokenizer.batch_decode(
        [tokens[: k + 1] for k in range(len(tokens))], skip_special_tokens=True
    )
    text = prefixes[-1] if prefixes else ""
    offsets = []
    previous = 0
    for prefix in prefixes:
        # A token ending inside a UTF-8 character decodes to a replacement character that the
        # next prefix replaces: it owns no characters of its own.
        end = len(prefix) if text.startswith(prefix) else previous
        offsets.append((previous, max(previous, end)))
        previous = max(previous, end)
    return ScoredResponse(text=text, logprobs=logprobs, offsets=offsets, token_ids=tokens)


def decode_with_drafts(
    generator: HFGenerator,
    prompts: Sequence[Prompt],
    input_ids: list[list[int]],
    mask: list[list[int]],
    shared: int,
    extra: dict[str, Any],
    constraint: Any,
    automata: Sequence[Any],
    with_scores: bool,
) -> list[tuple[list[int], list[float] | None]]:
    """`generator`'s greedy decoding of one batch (constrained or not), several tokens per forward
    pass where they can be guessed; each row's answer tokens (stop tokens excluded) and, with
    `with_scores`, their log-probabilities.

    Each step picks every unfinished row's best (allowed) token from the model's logits, then
    feeds it together with draft tokens: the tokens the schema forces next (`jump_forward`)
    or, inside an entity text, the document's continuation of what the entity says so far
    (`draft_tokens`). One forward pass reads them all; a draft counts only if it is the
    token the row would have picked at its position (the (constrained) argmax there), so the
    answers are those of one token per step, in fewer steps. Rows feed different numbers of
    tokens and keep different numbers of them: the step's input is right-padded, and the
    padding and rejected drafts stay in the key/value cache, masked out by the attention
    mask, while every row's positions count only its kept tokens. A row ends when its answer
    closes (constrained, no end-of-turn step is needed: the automaton allows nothing else;
    unconstrained, at an end-of-turn token or, with stop_at_json_end, when its JSON list
    closes) or at its limit (`HFGenerator.row_limits`).
    """
    import torch

    from spacy_medllm.generators.hf.decoding_steps import (
        DocumentDrafts,
        JsonScanner,
        empty_decision,
    )

    model, device = generator._model, generator._torch_device
    pad_id = generator._tokenizer.pad_token_id
    cache_arg = cache_keyword(generator._model)
    attention = torch.tensor(mask, device=device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    kwargs: dict[str, Any] = {cache_arg: extra.get(cache_arg)} if shared else {}
    clock = time.perf_counter()
    with torch.inference_mode():
        output = model(
            input_ids=torch.tensor(input_ids, device=device)[:, shared:],
            attention_mask=attention,
            position_ids=positions[:, shared:],
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
    generator.stats["prompt_seconds"] += time.perf_counter() - clock
    cache = getattr(output, "cache", None) or output.past_key_values
    logits = output.logits[:, -1, :]
    rows = len(input_ids)
    table = constraint.token_bytes
    drafters = [
        DocumentDrafts(constraint, prompt[-1]["content"], generator.draft_tokens)
        if generator.draft_tokens > 0
        and prompt
        and prompt[-1].get("role") == "user"
        and isinstance(prompt[-1].get("content"), str)
        else None
        for prompt in prompts
    ]
    seen = [sum(row) for row in mask]  # kept tokens of each row so far: its next position
    constrained = generator.constrained != "off"
    # Unconstrained rows follow the schema's automaton as far as the answer stays in it (a
    # None state: it left the schema, or there are no labels), and stop at the end of
    # their JSON list like `generate` with stop_at_json_end.
    states = [automaton.start() if automaton else None for automaton in automata]
    scanners = [JsonScanner() if generator.stop_at_json_end else None for _ in range(rows)]
    tokens: list[list[int]] = [[] for _ in range(rows)]
    answers = [bytearray() for _ in range(rows)]
    scores: list[list[float]] = [[] for _ in range(rows)]
    active = [True] * rows
    # As in `answer_tokens`: an answer ends at a stop token or (unconstrained) a padding one.
    stop_ids = set(constraint.stop_ids) | ({pad_id} if pad_id is not None else set())
    limits = generator.row_limits(prompts)
    veto = generator.empty_answer_threshold
    recording = generator.empty_probabilities if generator.record_empty_probability else None
    keys = [prompt_key(prompt) for prompt in prompts]

    def choose(row: int, row_logits: Any) -> int | None:
        written = bytes(answers[row])
        # empty_answer_ids says whether the answer can still become `[]` (None: it cannot)
        deciding = veto is not None or recording is not None
        empties = constraint.empty_answer_ids(written) if deciding else None
        vetoing = empties is not None
        if constrained:
            budget = limits[row] - len(tokens[row])
            allowed = constraint.allowed_ids(automata[row], states[row], budget)
            if allowed.numel() == 0:  # cannot happen: a closing path always fits
                return None
            allowed = allowed.to(device)
            if not vetoing:
                return int(allowed[row_logits[allowed].argmax()])
            # As generate's processors: the constraint masks first, the veto sees what is left.
            masked = torch.full_like(row_logits, -float("inf"))
            masked[allowed] = row_logits[allowed]
            row_logits = masked
        if vetoing:
            record = (recording, keys[row]) if recording is not None else None
            row_logits = empty_decision(row_logits, empties.to(device), veto, generator, record)
        return int(row_logits.argmax())

    def keep(row: int, token_id: int, row_logits: Any) -> None:
        data = table[token_id] or b""
        if states[row] is not None:
            states[row] = constraint.advance(automata[row], states[row], token_id)
        tokens[row].append(token_id)
        answers[row] += data
        if with_scores:
            scores[row].append(float(torch.log_softmax(row_logits.float(), -1)[token_id]))
        done = states[row] is not None and automata[row].is_done(states[row])
        if scanners[row] is not None and scanners[row].feed(data):
            done = True
        if done or len(tokens[row]) >= limits[row]:
            active[row] = False

    live = list(range(rows))  # the rows still decoding: row k of the tensors is live[k]
    while True:
        # One decoding step per round of model choices (as generate counts one per new token).
        generator.stats["decode_steps"] += 1
        feeds: dict[int, list[int]] = {}
        for k, row in enumerate(live):
            if not active[row]:
                continue
            pick = choose(row, logits[k])
            if pick is None or pick in stop_ids:
                active[row] = False
                continue
            keep(row, pick, logits[k])
            if not active[row]:
                continue
            left = limits[row] - len(tokens[row])
            drafts = (
                constraint.forced_tokens(automata[row], states[row], left)
                if generator.jump_forward and states[row] is not None
                else []
            )
            if not drafts and drafters[row] is not None:
                drafts = drafters[row].draft(bytes(answers[row]), left)
            feeds[row] = [pick, *drafts]
            generator.stats["draft_tokens"] += len(drafts)
        if not feeds:
            break
        if len(feeds) < len(live):
            # Finished rows leave the batch (generate would keep computing them).
            index = [k for k, row in enumerate(live) if row in feeds]
            selected = torch.tensor(index, device=device)
            cache.batch_select_indices(selected)
            attention = attention[selected]
            live = [live[k] for k in index]
        width = max(len(feed) for feed in feeds.values())
        step_ids = [feeds[row] + [pad_id] * (width - len(feeds[row])) for row in live]
        step_mask = torch.tensor(
            [[1] * len(feeds[row]) + [0] * (width - len(feeds[row])) for row in live],
            device=device,
        )
        step_positions = [
            [seen[row] + min(k, len(feeds[row]) - 1) for k in range(width)] for row in live
        ]
        attention = torch.cat([attention, step_mask], dim=1)
        clock = time.perf_counter()
        with torch.inference_mode():
            output = model(
                input_ids=torch.tensor(step_ids, device=device),
                attention_mask=attention,
                position_ids=torch.tensor(step_positions, device=device),
                use_cache=True,
                logits_to_keep=0 if width > 1 else 1,
                **{cache_arg: cache},
            )
        generator.stats["step_seconds"] += time.perf_counter() - clock
        generator.stats["step_tokens"] += len(live) * width
        cache = getattr(output, "cache", None) or output.past_key_values
        step_logits = output.logits
        ends = []
        for k, row in enumerate(live):
            feed = feeds[row]
            kept = 1
            for j in range(1, len(feed)):
                # A draft counts if it is what the row would have picked after the kept ones.
                if not active[row] or choose(row, step_logits[k, j - 1]) != feed[j]:
                    break
                keep(row, feed[j], step_logits[k, j - 1])
                kept += 1
            generator.stats["accepted_draft_tokens"] += kept - 1
            step_mask[k, kept:] = 0  # rejected drafts: never attended to again
            seen[row] += kept
            ends.append(kept - 1)
        attention[:, -width:] = step_mask
        logits = step_logits[torch.arange(len(live), device=device), torch.tensor(ends)]
        if not any(active[row] for row in live):
            break
    return [(tokens[row], scores[row] if with_scores else None) for row in range(rows)]
