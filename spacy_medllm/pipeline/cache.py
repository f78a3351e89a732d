"""A response cache on disk: a model's answer to a prompt is generated once, then read back.

`medllm_ner` wraps its generator calls with `cached_generate` when a cache folder is configured
(`cache_dir` in the component's config, else the environment variable SPACY_MEDLLM_RESPONSE_CACHE),
so that parsing or aligning again, in this run or a later one, in this pipeline or another one with
the same model, never calls the model again. Both generator backends are cached the same way.

The key is the sha256 of everything that decides the answer:
- the generator's `describe()`: backend, model reference, adapter sha256, max_new_tokens, dtype,
  decoding, constrained mode and labels (or, for a server, its URL, temperature, extra body);
- a fingerprint of a local base model folder (its config.json and the names, sizes and modification
  times of its weight files), so a model retrained in place under the same path misses;
- the prompt as chat messages: the instruction with its label lines and definitions, the few-shot
  turns and the text.
(spacy-llm's cache keys a Doc by its tokens and the prompt template only: a change of model or
adapter reads stale answers. Here it misses.) Settings of the component after the model
(alignment, fuzzy matching, repeated mentions, output) are not part of the key: they are applied to
the cached answer again.

Storage: one JSON file per key, `<cache_dir>/v1/<first two hex digits>/<key>.json`, written to a
temporary file in the same folder and renamed into place, so concurrent readers and writers never
see half a file, and the folder may be deleted at any time (the next call misses and writes again).
Each entry holds a sha256 of its answer: an entry that cannot be read, belongs to another key or
fails its checksum is reported as "corrupt" (in the Doc's record and the log) and regenerated.

Only the standard library is imported here (the component imports this module at start-up).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spacy_medllm.core.confidence import ScoredResponse

logger = logging.getLogger("spacy_medllm")

CACHE_ENV = "SPACY_MEDLLM_RESPONSE_CACHE"
FORMAT_VERSION = 1
HIT, MISS, CORRUPT = "hit", "miss", "corrupt"
# Weight files whose size and modification time enter a local model folder's fingerprint.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")

Prompt = list[dict[str, str]]


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path | None:
    """The response cache folder: `cache_dir`, else $SPACY_MEDLLM_RESPONSE_CACHE, else None."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    from_env = os.environ.get(CACHE_ENV, "").strip()
    return Path(from_env).expanduser() if from_env else None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf8")).hexdigest()


def model_folder_fingerprint(folder: str | os.PathLike) -> str | None:
    """sha256 over a local model folder's config.json and its weight files' names, sizes and
    modification times; None if `folder` is not a folder (a hub id or a server's model name)."""
    path = Path(folder)
    if not path.is_dir():
        return None
    parts: list[Any] = []
    config = path / "config.json"
    if config.is_file():
        parts.append(["config.json", _sha256(config.read_text(encoding="utf8"))])
    for file_ in sorted(path.iterdir()):
        if file_.is_file() and file_.suffix in _WEIGHT_SUFFIXES:
            stat = file_.stat()
            parts.append([file_.name, stat.st_size, stat.st_mtime_ns])
    return _sha256(_canonical(parts))


def generator_identity(generator: Any) -> dict[str, Any]:
    """What decides a generator's answers: its `describe()` plus its model folder's fingerprint."""
    describe = getattr(generator, "describe", None)
    if not callable(describe):
        raise TypeError(
            f"{type(generator).__name__} has no describe(): the response cache cannot tell its "
            "answers from another model's. Add describe() or set cache_dir = null."
        )
    identity = {"generator": type(generator).__name__, **describe()}
    resolved = getattr(generator, "resolved_model", None)
    if callable(resolved):
        identity["model_fingerprint"] = model_folder_fingerprint(resolved())
    return identity


def cache_key(identity: dict[str, Any], prompt: Prompt) -> str:
    """The sha256 naming the answer of the generator `identity` to `prompt`."""
    return _sha256(_canonical({"format": FORMAT_VERSION, "generator": identity, "prompt": prompt}))


@dataclass
class Lookup:
    """What the cache had for a key: the response (on a hit), the status and, if corrupt, why."""

    status: str
    response: ScoredResponse | None = None
    detail: str | None = None


def _payload(response: ScoredResponse, scored: bool) -> dict[str, Any]:
    scores = None
    if scored:
        scores = {
            "logprobs": list(response.logprobs),
            "offsets": [list(o) for o in response.offsets],
            "token_ids": list(response.token_ids),
        }
    return {"response": response.text, "scores": scores}


class ResponseCache:
    """Model answers on disk, one JSON file per key (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        self.root = self.path / f"v{FORMAT_VERSION}"

    def entry_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str, *, need_scores: bool = False) -> Lookup:
        """A hit, a miss (no entry, or one without the token scores `need_scores` asks for), or
        corrupt (an entry that cannot be trusted; `detail` says why)."""
        path = self.entry_path(key)
        try:
            raw = path.read_text(encoding="utf8")
        except FileNotFoundError:
            return Lookup(MISS)
        except (OSError, UnicodeDecodeError) as error:
            return Lookup(CORRUPT, detail=f"{path}: cannot be read ({error})")
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError as error:
            return Lookup(CORRUPT, detail=f"{path}: not JSON ({error})")
        problem = self._check(entry, key)
        if problem:
            return Lookup(CORRUPT, detail=f"{path}: {problem}")
        scores = entry["scores"]
        if need_scores and scores is None:
            return Lookup(MISS, detail="the entry has no token scores")
        if scores is None:
            return Lookup(HIT, ScoredResponse(text=entry["response"]))
        return Lookup(
            HIT,
            ScoredResponse(
                text=entry["response"],
                logprobs=[float(v) for v in scores["logprobs"]],
                offsets=[(int(s), int(e)) for s, e in scores["offsets"]],
                token_ids=[int(t) for t in scores["token_ids"]],
            ),
        )

    @staticmethod
    def _check(entry: Any, key: str) -> str | None:
        if not isinstance(entry, dict):
            return "not a JSON object"
        if entry.get("format") != FORMAT_VERSION:
            return f"format {entry.get('format')!r}, expected {FORMAT_VERSION}"
        if entry.get("key") != key:
            return "the entry belongs to another key"
        if not isinstance(entry.get("response"), str):
            return "no response string"
        scores = entry.get("scores")
        if scores is not None and not (
            isinstance(scores, dict)
            and all(isinstance(scores.get(k), list) for k in ("logprobs", "offsets", "token_ids"))
            and len(scores["logprobs"]) == len(scores["offsets"]) == len(scores["token_ids"])
        ):
            return "malformed token scores"
        payload = {"response": entry["response"], "scores": scores}
        if entry.get("sha256") != _sha256(_canonical(payload)):
            return "checksum mismatch (the answer was changed after it was written)"
        return None

    def put(
        self,
        key: str,
        response: ScoredResponse,
        *,
        scored: bool = False,
        identity: dict[str, Any] | None = None,
    ) -> str | None:
        """Write the entry atomically; returns None, or why it could not be written (the answer
        is still used: a cache that cannot be written only costs speed)."""
        payload = _payload(response, scored)
        entry = {
            "format": FORMAT_VERSION,
            "key": key,
            **payload,
            "sha256": _sha256(_canonical(payload)),
            "generator": identity,  # for people looking into the folder; the key already has it
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        path = self.entry_path(key)
        tmp_name = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", encoding="utf8", dir=path.parent, prefix=".tmp-", suffix=".json", delete=False
            ) as tmp:
                tmp_name = tmp.name
                json.dump(entry, tmp, ensure_ascii=False)
            os.replace(tmp_name, path)
        except OSError as error:
            logger.warning("response cache: cannot write %s: %s", path, error)
            if tmp_name is not None:
                Path(tmp_name).unlink(missing_ok=True)
            return f"{path}: cannot be written ({error})"
        return None


def cached_generate(
    generator: Any,
    prompts: Sequence[Prompt],
    cache: ResponseCache | None = None,
    *,
    scored: bool = False,
) -> tuple[list[ScoredResponse], list[Lookup | None]]:
    """The generator's responses to `prompts`, in order, read from `cache` where it has them.

    Only the prompts the cache does not have go to the generator, in one call (so it still
    batches them), each distinct prompt once. `scored` asks for token log-probabilities
    (`generator.generate_scored`).
    Returns the responses and, per prompt, the cache lookup (None when there is no cache).
    """
    lookups: list[Lookup | None] = [None] * len(prompts)
    responses: list[ScoredResponse | None] = [None] * len(prompts)
    keys: list[str] = []
    identity: dict[str, Any] | None = None
    if cache is not None and prompts:
        identity = generator_identity(generator)
        keys = [cache_key(identity, prompt) for prompt in prompts]
        for i, key in enumerate(keys):
            lookup = cache.get(key, need_scores=scored)
            if lookup.status == CORRUPT:
                logger.warning("response cache: %s; generating the answer again", lookup.detail)
            lookups[i] = lookup
            responses[i] = lookup.response if lookup.status == HIT else None
    todo = [i for i, response in enumerate(responses) if response is None]
    if not todo:
        return [r for r in responses if r is not None], lookups
    # With a cache, prompts with the same key (a repeated paragraph, a signature) are asked once.
    first: dict[str, int] = {}
    if cache is not None:
        for i in todo:
            first.setdefault(keys[i], i)
    ask = list(first.values()) if cache is not None else todo
    asked = [prompts[i] for i in ask]
    fresh: list[Any] = list(generator.generate_scored(asked)) if scored else list(generator(asked))
    if len(fresh) != len(asked):
        raise RuntimeError(
            f"{type(generator).__name__} returned {len(fresh)} responses for {len(asked)} prompts"
        )
    for i, answer in zip(ask, fresh, strict=True):
        response = answer if isinstance(answer, ScoredResponse) else ScoredResponse(text=answer)
        responses[i] = response
        if cache is not None:
            problem = cache.put(keys[i], response, scored=scored, identity=identity)
            lookup = lookups[i]
            if problem and lookup is not None:
                lookup.detail = "; ".join(d for d in (lookup.detail, problem) if d)
    for i in todo:
        if responses[i] is None:
            responses[i] = responses[first[keys[i]]]
    return [r for r in responses if r is not None], lookups
