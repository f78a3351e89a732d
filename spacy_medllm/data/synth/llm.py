"""Synthetic texts written by an LLM: one prompt per kind and language, sent to any of the package's
generators (transformers in-process or an OpenAI-compatible server). Spans are unknown; the
labelling step labels them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spacy_medllm.data.scrape import DrugFacts
from spacy_medllm.data.synth.lexicon import plain_phrase
from spacy_medllm.data.synth.offline import DrugProfile, kinds_for
from spacy_medllm.data.synth.records import JSONLAppender, SynthRecord

LLM_PROMPTS: dict[tuple[str, str], str] = {
    ("en", "ae_email"): (
        "Write a short e-mail from a patient to the drug company XYZ Pharma Inc. reporting an "
        "adverse event. The patient takes {drug} for {condition} and experienced {effects}. "
        "Start with the sender's name, e-mail, address and phone, then 'Relationship to XYZ "
        "Pharma Inc.:', 'Reason for contacting: Adverse Event' and 'Message:'. Only the e-mail."
    ),
    ("en", "clinical_note"): (
        "Write a brief clinical note (3-4 sentences, clinical abbreviations allowed) about a "
        "patient with {condition} on {drug} who developed {effects}. Only the note."
    ),
    ("en", "forum_post"): (
        "Write a short, informal patient forum post by someone taking {drug} for {condition} "
        "who has {effects}. Only the post."
    ),
    ("en", "short_email"): (
        "Write a one- or two-sentence e-mail from someone taking {drug} who noticed {effects}. "
        "Only the e-mail."
    ),
    ("en", "long_email"): (
        "Write a long e-mail (three paragraphs) from a relative of a patient who takes {drug} for "
        "{condition} and developed {effects}; add everyday details. Only the e-mail."
    ),
    ("en", "no_mention"): (
        "Write a short routine message from a patient to their clinic (an appointment, a "
        "callback, thanks, feeling well) that names no medicine, no symptom, no illness and no "
        "procedure. Only the message."
    ),
    ("en", "social_post"): (
        "Write a short social-media post (under 30 words, lower case, casual) by someone on "
        "{drug} who has {effects}. Only the post."
    ),
    ("en", "call_transcript"): (
        "Write a short call-centre transcript (Agent: / Caller:) in which a caller on {drug} "
        "reports {effects}. Only the transcript."
    ),
    ("en", "pharmacist_note"): (
        "Write a one-line pharmacist's note, clinical shorthand, about a patient on {drug} who "
        "reports {effects}. Only the note."
    ),
    ("en", "hcp_narrative"): (
        "Write two sentences from a doctor's letter about a patient with {condition} who "
        "developed {effects} after starting {drug}. Only the sentences."
    ),
    ("en", "discharge_sentence"): (
        "Write one sentence of a hospital discharge summary: the patient developed {effects}, "
        "attributed to {drug}. Only the sentence."
    ),
    ("en", "portal_message"): (
        "Write a short message a patient sends through a clinic's portal: they take {drug} and "
        "have {effects}. Only the message."
    ),
    ("en", "review"): (
        "Write a short online review of {drug} with a star rating, mentioning {effects}. Only "
        "the review."
    ),
    ("et", "ae_email"): (
        "Kirjuta lühike e-kiri patsiendilt ravimifirmale XYZ Pharma AS, milles ta teatab "
        "kõrvaltoimest. Patsient võtab ravimit {drug} ({condition}) ja tal tekkis {effects}. "
        "Kirjuta ainult e-kiri eesti keeles."
    ),
    ("et", "clinical_note"): (
        "Kirjuta lühike haiguslugu (3-4 lauset) patsiendist, kellel on {condition}, kes võtab "
        "ravimit {drug} ja kellel tekkis {effects}. Kirjuta ainult tekst eesti keeles."
    ),
    ("et", "forum_post"): (
        "Kirjuta lühike mitteametlik foorumipostitus inimeselt, kes võtab ravimit {drug} "
        "({condition}) ja kellel on {effects}. Kirjuta ainult postitus eesti keeles."
    ),
}


@dataclass(frozen=True)
class LLMJob:
    """One text to ask for: which drug, which effects, which kind and language."""

    id: str
    lang: str
    kind: str
    drug: str
    condition: str
    effects: tuple[str, ...]

    def prompt(self) -> list[dict[str, str]]:
        joiner = " and " if self.lang == "en" else " ja "
        effects = (
            ", ".join(self.effects[:-1]) + joiner + self.effects[-1]
            if len(self.effects) > 1
            else self.effects[0]
        )
        content = LLM_PROMPTS[(self.lang, self.kind)].format(
            drug=self.drug, condition=self.condition, effects=effects
        )
        return [{"role": "user", "content": content}]


def plan_llm_jobs(
    facts: Sequence[DrugFacts],
    n_per_lang: dict[str, int],
    seed: int = 0,
    kinds: Sequence[str] | None = None,
) -> list[LLMJob]:
    """The texts to ask an LLM for, deterministic for a seed; ids are stable across runs."""
    jobs: list[LLMJob] = []
    for lang, n in n_per_lang.items():
        rng = random.Random(f"{seed}-llm-{lang}")
        profiles = [p for p in (DrugProfile.from_facts(f, lang) for f in facts) if p]
        if not profiles:
            continue
        styles = list(kinds or kinds_for(lang))
        for i in range(n):
            profile = rng.choice(profiles)
            effects = rng.sample(profile.effects, min(len(profile.effects), rng.choice((1, 2, 3))))
            condition = rng.choice(profile.conditions) if profile.conditions else ""
            jobs.append(
                LLMJob(
                    id=f"llm-{lang}-{seed}-{i:06d}",
                    lang=lang,
                    kind=styles[i % len(styles)],
                    drug=plain_phrase(profile.drug),
                    condition=plain_phrase(condition)
                    or ("its condition" if lang == "en" else "haigus"),
                    effects=tuple(plain_phrase(e) for e in effects),
                )
            )
    return jobs


def generate_with_llm(
    jobs: Sequence[LLMJob],
    generator: Any,
    output: str | Path,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Ask `generator` (spacy_medllm.generators) for each job's text; append to `output`.

    Jobs whose id is already in the file are skipped, so a rerun resumes. Empty answers and
    answers that repeat an earlier text are recorded as rejected, not written.
    """
    from tqdm import tqdm

    out = JSONLAppender(output)
    todo = [job for job in jobs if job.id not in out]
    size = batch_size or getattr(generator, "batch_size", 8) or 8
    describe = generator.describe() if hasattr(generator, "describe") else {}
    rejected: list[dict[str, str]] = []
    written = 0
    with tqdm(
        total=len(jobs), initial=len(jobs) - len(todo), desc="generate", disable=not progress
    ) as bar:
        for start in range(0, len(todo), size):
            batch = todo[start : start + size]
            prompts = [job.prompt() for job in batch]
            answers = generator(prompts)
            for job, prompt, answer in zip(batch, prompts, answers, strict=True):
                text = answer.strip()
                bar.update(1)
                if not text:
                    rejected.append({"id": job.id, "reason": "empty answer"})
                    continue
                record = SynthRecord(
                    id=job.id,
                    text=text,
                    lang=job.lang,
                    kind=job.kind,
                    meta={
                        "generator": describe,
                        "drug": job.drug,
                        "effects": list(job.effects),
                        "prompt": prompt[-1]["content"],
                    },
                )
                if out.add(record):
                    written += 1
                else:
                    rejected.append({"id": job.id, "reason": "duplicate text"})
    return {"output": str(output), "jobs": len(jobs), "written_now": written, "rejected": rejected}
