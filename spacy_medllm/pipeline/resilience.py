"""How `medllm_ner` survives what goes wrong: requests that fail (recorded on their documents
instead of stopping `nlp.pipe`), answers that run out, and text in another language than the
pipeline's. A mixin of MedLLMNER (pipeline/component.py), apart so that each module stays short.

Imports only spaCy and the standard library, like the component.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from spacy.tokens import Doc

from spacy_medllm.core.confidence import ScoredResponse
from spacy_medllm.core.language import LanguageCheck, language_name
from spacy_medllm.pipeline.cache import cached_generate

logger = logging.getLogger("spacy_medllm")

# A failed document is logged for the first few failures of a component, then every so many.
LOGGED_FAILURES = 3
LOG_FAILURES_EVERY = 100

Job = tuple[int, int, int, int]  # (doc index, piece start, piece end, times the piece was halved)


class Resilience:
    """The failure handling of MedLLMNER; the attributes it uses are the component's."""

    name: str
    strict: bool
    confidence: bool
    generator: Any
    response_cache: Any
    prompt_builder: Any
    n_failed_docs: int
    _language: LanguageCheck | None
    _warned_language: bool
    _warned_cut_off: bool

    def _record(self, doc: Doc) -> dict[str, Any]:  # pragma: no cover - the component's
        raise NotImplementedError

    def _generate(
        self, docs: Sequence[Doc], texts: Sequence[str], jobs: Sequence[Job]
    ) -> tuple[list[Any], list[ScoredResponse | None], list[Any]]:
        """Prompts, answers (None where the request failed) and cache lookups of `jobs`.

        A failure raises when strict. Otherwise: a generator that says which prompts failed (an
        error with `responses` and `errors` lists, prompt by prompt, such as the OpenAI
        backend's PartialGenerationError) keeps its answers; any other failure of a batch is
        retried one document at a time. Failed pieces are recorded on their documents.
        """
        prompts = [self.prompt_builder.messages(texts[i][s:e]) for i, s, e, _ in jobs]
        none: list[Any] = [None] * len(prompts)
        try:
            answers, lookups = cached_generate(
                self.generator, prompts, self.response_cache, scored=self.confidence
            )
            return prompts, list(answers), list(lookups)
        except Exception as error:
            if self.strict:
                raise
            batch_error = error
        responses = getattr(batch_error, "responses", None)
        errors = getattr(batch_error, "errors", None)
        if (
            self.response_cache is None  # else the generator saw only the prompts not cached
            and not self.confidence
            and isinstance(responses, list)
            and isinstance(errors, list)
            and len(responses) == len(errors) == len(prompts)
        ):
            kept: list[ScoredResponse | None] = []
            for job, response, failure in zip(jobs, responses, errors, strict=True):
                if response is None:
                    self._fail(docs[job[0]], failure or batch_error, job)
                    kept.append(None)
                else:
                    kept.append(ScoredResponse(text=str(response)))
            return prompts, kept, none
        by_doc: dict[int, list[int]] = {}
        for k, job in enumerate(jobs):
            by_doc.setdefault(job[0], []).append(k)
        results: list[ScoredResponse | None] = list(none)
        found_lookups: list[Any] = list(none)
        for i, indices in by_doc.items():
            try:
                if len(by_doc) == 1:
                    raise batch_error
                answers, lookups = cached_generate(
                    self.generator,
                    [prompts[k] for k in indices],
                    self.response_cache,
                    scored=self.confidence,
                )
            except Exception as doc_error:
                for k in indices:
                    self._fail(docs[i], doc_error, jobs[k])
                continue
            for k, answer, lookup in zip(indices, answers, lookups, strict=True):
                results[k], found_lookups[k] = answer, lookup
        return prompts, results, found_lookups

    def _fail(self, doc: Doc, error: BaseException, job: Job | None = None) -> None:
        """Record on `doc` that processing it (or its piece `job`) failed, and log it."""
        record = self._record(doc)
        own = [e for e in getattr(error, "errors", None) or [] if e is not None]
        if len(own) == 1:  # a call of this document's prompt alone: its own error
            error = own[0]
        message = f"{type(error).__name__}: {error}"
        first = record["error"] is None
        if first:
            record["error"] = message
        if job is not None:
            record["failed_chunks"].append({"start": job[1], "end": job[2], "error": message})
        if not first:
            return
        self.n_failed_docs += 1
        count = self.n_failed_docs
        if count <= LOGGED_FAILURES or count % LOG_FAILURES_EVERY == 0:
            logger.warning(
                "medllm_ner (%s): a document failed (%d so far; recorded in its record's "
                '"error", set strict = true to raise instead): %s',
                self.name,
                count,
                message,
            )

    def _check_language(self, text: str, record: dict[str, Any]) -> None:
        """Note text that looks like another language than the pipeline's; warn once."""
        if self._language is None:
            return
        this_text, run = self._language.check(text)
        if this_text is not None:
            record["language"] = {"expected": self._language.lang, "looks_like": this_text}
        if (this_text or run) and not self._warned_language:
            self._warned_language = True
            logger.warning(
                "medllm_ner (%s): the pipeline is for %s, but the text looks like %s. A model "
                "that learnt %s gives unreliable (and confident) labels on other text: use a "
                "pipeline and adapter for the text's language. Documents that look foreign are "
                'noted in their record ("language"). Warned once.',
                self.name,
                language_name(self._language.lang),
                run or this_text,
                language_name(self._language.lang),
            )

    def _warn_cut_off(self) -> None:
        if self._warned_cut_off:
            return
        self._warned_cut_off = True
        limit = getattr(self.generator, "max_new_tokens", None)
        logger.warning(
            "medllm_ner (%s): an answer ran out%s before its list of entities ended; what it "
            'listed is kept, and the piece is flagged (record "n_truncated", chunk "truncated"). '
            "Raise max_new_tokens or lower max_chunk_tokens. Warned once.",
            self.name,
            f" at max_new_tokens = {limit}" if limit else "",
        )
