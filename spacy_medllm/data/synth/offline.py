"""Synthetic medical texts from drug facts: an offline composer with exact gold, and LLM prompts.

Two ways to turn `DrugFacts` (spacy_medllm.data.scrape) into texts, in English and Estonian, of
three kinds: an adverse-event e-mail to a drug company (the seed's style), a clinical note and a
patient forum post.

- `compose_offline`: fills hand-written templates with the facts. The spans (DRUG,
  ADVERSE_EVENT, DISEASE, PROCEDURE) are known by construction, so the character offsets are
  exact and every later step (labelling, training) can be scored against true gold, with no
  LLM at all. Estonian mentions are inflected into the case each template slot needs with the
  Vabamorf synthesiser of estnltk ("metformiin" -> "metformiinist"), from a small bilingual
  lexicon (English side effect or condition -> Estonian lemma) written for this project.
- `generate_with_llm`: asks one of our generators (HF or OpenAI-compatible) to write the text
  from a prompt per kind and language. Spans are unknown: spacy_medllm.data.labelling labels them.

Both write JSONL records `{id, text, lang, kind, spans, meta}` (spans only for offline texts),
append to the file and skip ids already in it, so an interrupted run resumes. Texts are
deduplicated by a hash of their normalised text; everything is deterministic given the seed.

    python -m spacy_medllm synth offline --facts corpus/generated/drug_facts.jsonl \
        --output corpus/generated/synthetic.jsonl --n-en 600 --n-et 400 --seed 0
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spacy_medllm.data.scrape import DrugFacts
from spacy_medllm.data.synth.lexicon import (
    CONDITION_ET,
    DRUG_ET,
    EFFECT_ET,
    PROCEDURES,
    inflect_et,
    plain_phrase,
)
from spacy_medllm.data.synth.records import KINDS, LANGS, JSONLAppender, SynthRecord, text_hash

EMAIL_HEADER = {
    "en": (
        "{PERSON}\n{EMAIL}\n{ADDRESS}\n{PHONE}, United States\n\n"
        "Relationship to XYZ Pharma Inc.: {RELATION}\nReason for contacting: Adverse Event\n\n"
        "Message: "
    ),
    "et": (
        "{PERSON}\n{EMAIL}\n{ADDRESS}\n{PHONE}, Eesti\n\n"
        "Seos ettevõttega XYZ Pharma AS: {RELATION}\nPöördumise põhjus: kõrvaltoime\n\n"
        "Sõnum: "
    ),
}

TEMPLATES: dict[tuple[str, str], tuple[str, ...]] = {
    ("en", "ae_email"): (
        "Hi, after starting {DRUG} for {COND}, I've noticed that I am experiencing {AES}. "
        "Are these typical reactions? Best, {PERSON}",
        "I have been taking {DRUG} for {DAYS} days and developed {AES}. Should I stop "
        "taking it? Thank you.",
        "My {RELATIVE} was prescribed {DRUG} {DOSE} for {COND}. Since then {PRONOUN} has had "
        "{AES}. Please advise what we should do.",
        "Hello, I want to report {AES} after my second week on {DRUG}. My doctor ordered a "
        "{PROC}. Regards, {PERSON}",
        "I am a pharmacist. A customer on {DRUG} reported {AES} and asked me whether this is "
        "a known side effect.",
        "Dear XYZ Pharma, I started {DRUG} {DOSE} a month ago and now I suffer from {AES}. "
        "Is this common?",
    ),
    ("en", "clinical_note"): (
        "{AGE} y/o {SEX} with {COND} on {DRUG} {DOSE}. Reports {AES} since starting. "
        "{PROC} ordered. Plan: review in {DAYS} days.",
        "Pt started {DRUG} for {COND} {DAYS} days ago. Now presents with {AES}. "
        "{DRUG} held pending {PROC}.",
        "Follow-up visit. Known {COND}. Tolerating {DRUG} poorly: {AES}. Switch discussed.",
        "S: {AES} after dose increase of {DRUG}. O: vitals stable. A: probable adverse drug "
        "reaction. P: reduce dose, {PROC}.",
        "Admitted with {AE}. Medications: {DRUG} {DOSE}. {PROC} performed on day {DAYS}.",
    ),
    ("en", "forum_post"): (
        "Anyone else get {AES} on {DRUG}? I was put on it for my {COND} and feel awful.",
        "Week {DAYS} on {DRUG}. The {AE} is getting better but I still have {AES}.",
        "Doc switched me to {DRUG} for {COND}. Honestly the {AES} is worse than the disease lol",
        "Quick question: does {DRUG} cause {AES}? Started {DOSE} last week.",
        "Update: stopped {DRUG} because of {AES}. Had a {PROC} and everything looks fine now.",
    ),
    ("et", "ae_email"): (
        "Tere! Alustasin {DRUG:sg g} kasutamist {COND:sg g} tõttu ja nüüd on mul {AES:sg n}. "
        "Kas see on tavaline? Lugupidamisega, {PERSON}",
        "Olen võtnud {DRUG:sg p} {DAYS} päeva ja mul on tekkinud {AES:sg n}. Kas peaksin "
        "ravimi võtmise lõpetama?",
        "Minu {RELATIVE} hakkas võtma {DRUG:sg p} {COND:sg g} raviks. Sellest ajast on tal "
        "{AES:sg n}. Palun andke nõu.",
        "Soovin teatada {AES:sg g} tekkest pärast {DRUG:sg g} annuse suurendamist. Arst "
        "määras {PROC:sg g}.",
    ),
    ("et", "clinical_note"): (
        "Patsient alustas {DRUG:sg g} kasutamist {COND:sg g} tõttu ja kaebab nüüd {AE:sg g} üle.",
        "Pärast {DRUG:sg g} annuse suurendamist tekkisid {AES:sg n}.",
        "{COND:sg g} raviks on määratud {DRUG} {DOSE} päevas; patsient märkis {AES:sg p}.",
        "{DRUG:sg g} võtmise järel tekkis patsiendil {AE:sg n}, mistõttu tehti {PROC:sg n}.",
        "{AGE}-aastane patsient, diagnoos {COND}. Ravi {DRUG:sg kom}. Kaebab {AES:sg p}. "
        "Plaanis {PROC:sg n}.",
    ),
    ("et", "forum_post"): (
        "Kas kellelgi on olnud {DRUG:sg el} {AES:sg p}? Mulle kirjutati see {COND:sg g} vastu.",
        "Olen {DRUG:sg p} võtnud {DAYS} päeva ja {AE:sg n} ei lähe üle. Kas peaks arstile "
        "helistama?",
        "Arst vahetas mu ravimi {DRUG:sg tr}, aga nüüd on mul {AES:sg n}. Kellel veel?",
        "Lõpetasin {DRUG:sg g} võtmise {AES:sg g} pärast. Tehti ka {PROC:sg n} ja kõik on korras.",
    ),
}

FILLERS: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "FIRST": ("Natalie", "James", "Mia", "Oliver", "Sophia", "Liam", "Grace", "Ethan"),
        "LAST": ("Cooper", "Garcia", "Nguyen", "Patel", "Smith", "Brown", "Kowalski", "Reed"),
        "STREET": ("Birch Street", "Magnolia Drive", "Oak Avenue", "Pine Road", "Elm Court"),
        "CITY": ("Denver, CO 80203", "Dallas, TX 75201", "Boston, MA 02108", "Austin, TX 78701"),
        "RELATION": ("Patient", "Caregiver", "Healthcare professional"),
        "RELATIVE": ("mother", "father", "husband", "wife", "son", "daughter"),
        "SEX": ("female", "male"),
        "DOSE": ("10 mg", "20 mg", "50 mg", "500 mg", "once daily", "twice daily"),
    },
    "et": {
        "FIRST": ("Mari", "Jaan", "Kadri", "Andres", "Liis", "Toomas", "Kersti", "Peeter"),
        "LAST": ("Tamm", "Saar", "Sepp", "Mägi", "Kask", "Kukk", "Rebane", "Ilves"),
        "STREET": ("Pärnu mnt", "Tartu mnt", "Narva mnt", "Riia tn", "Kalda tee"),
        "CITY": ("Tallinn 10141", "Tartu 50090", "Pärnu 80010", "Narva 20308"),
        "RELATION": ("patsient", "hooldaja", "tervishoiutöötaja"),
        "RELATIVE": ("ema", "isa", "abikaasa", "poeg", "tütar"),
        "SEX": ("naine", "mees"),
        "DOSE": ("10 mg", "20 mg", "50 mg", "500 mg"),
    },
}

_SLOT = re.compile(r"\{([A-Z]+)(?::([^}]+))?\}")

_ENTITY_SLOTS = {"DRUG": "DRUG", "AE": "ADVERSE_EVENT", "AES": "ADVERSE_EVENT"}

_ENTITY_SLOTS |= {"COND": "DISEASE", "PROC": "PROCEDURE"}


@dataclass
class DrugProfile:
    """What the composer may say about one drug in one language (lexicon-mapped for Estonian)."""

    drug: str  # lemma (Estonian) or name (English)
    effects: list[str]
    conditions: list[str]

    @classmethod
    def from_facts(cls, facts: DrugFacts, lang: str) -> DrugProfile | None:
        uses = " ".join(facts.uses).lower()
        if lang == "en":
            conditions = [c for c in CONDITION_ET if re.search(rf"\b{re.escape(c)}\b", uses)]
            conditions = [c for c in conditions if not any(c != o and c in o for o in conditions)]
            effects = list(dict.fromkeys(e.lower() for e in facts.side_effects))
            effects = [e.replace("vitamin b12", "vitamin B12") for e in effects]
            return cls(facts.name, effects, conditions) if effects else None
        drug = DRUG_ET.get(facts.name.lower())
        if drug is None:
            return None
        effects = [EFFECT_ET[e.lower()] for e in facts.side_effects if e.lower() in EFFECT_ET]
        conditions = [
            CONDITION_ET[c] for c in CONDITION_ET if re.search(rf"\b{re.escape(c)}\b", uses)
        ]
        return cls(drug, list(dict.fromkeys(effects)), conditions) if effects else None


class _Builder:
    """Appends text pieces and records the character span of each entity piece."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.masked: list[str] = []  # the text with filler (names, numbers) replaced by slots
        self.length = 0
        self.spans: list[dict[str, Any]] = []

    def add_filler(self, slot: str, text: str) -> None:
        self.parts.append(text)
        self.masked.append("{" + slot + "}")
        self.length += len(text)

    def add(self, text: str, label: str | None = None) -> None:
        if label is not None:
            at_start = not self.parts or re.search(r"(^|[.!?]\s+|\n)$", "".join(self.parts))
            if at_start:
                text = text[:1].upper() + text[1:]
            self.spans.append(
                {"start": self.length, "end": self.length + len(text), "label": label, "text": text}
            )
        self.parts.append(text)
        self.masked.append(text)
        self.length += len(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def content_key(self) -> str:
        """Texts that differ only in names, addresses and numbers share this key."""
        return text_hash("".join(self.masked))


class OfflineComposer:
    """Builds texts from templates and facts; spans are exact by construction."""

    def __init__(self, facts: Sequence[DrugFacts], seed: int = 0) -> None:
        self.facts = list(facts)
        self.seed = seed
        self.profiles = {
            lang: [p for p in (DrugProfile.from_facts(f, lang) for f in self.facts) if p]
            for lang in LANGS
        }

    def _filler(self, rng: random.Random, lang: str, slot: str) -> str:
        pool = FILLERS[lang]
        first, last = rng.choice(pool["FIRST"]), rng.choice(pool["LAST"])
        if slot == "PERSON":
            return f"{first} {last}"
        if slot == "EMAIL":
            domain = "example.com" if lang == "en" else "näide.ee"
            return f"{first[0].lower()}{last.lower()}@{domain}"
        if slot == "ADDRESS":
            return (
                f"{rng.randint(1, 9999)} {rng.choice(pool['STREET'])}, {rng.choice(pool['CITY'])}"
            )
        if slot == "PHONE":
            return f"555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
        if slot == "AGE":
            return str(rng.randint(18, 90))
        if slot == "DAYS":
            return str(rng.randint(2, 30))
        if slot == "PRONOUN":
            return rng.choice(("she", "he"))
        if slot in pool:
            return rng.choice(pool[slot])
        raise KeyError(f"unknown template slot {{{slot}}}")

    def compose(self, rng: random.Random, lang: str, kind: str) -> SynthRecord | None:
        """One text, or None when no drug fits a template drawn for it."""
        profiles = self.profiles[lang]
        if not profiles:
            return None
        profile = rng.choice(profiles)
        templates = [t for t in TEMPLATES[(lang, kind)] if profile.conditions or "{COND" not in t]
        if not templates:
            return None
        index = rng.randrange(len(templates))
        template = templates[index]
        if kind == "ae_email":
            template = EMAIL_HEADER[lang] + template
        n_aes = min(len(profile.effects), rng.choice((1, 1, 2, 2, 3)))
        effects = rng.sample(profile.effects, n_aes)
        single = rng.choice(profile.effects)
        condition = rng.choice(profile.conditions) if profile.conditions else None
        procedure = rng.choice(PROCEDURES)
        drug = profile.drug
        if lang == "en" and kind != "ae_email" and rng.random() < 0.5:
            drug = drug.lower()
        fillers: dict[str, str] = {}
        out = _Builder()
        position = 0
        for match in _SLOT.finditer(template):
            out.add(template[position : match.start()])
            position = match.end()
            slot, form = match.group(1), match.group(2) or "sg n"
            if slot not in _ENTITY_SLOTS:
                if slot not in fillers:
                    fillers[slot] = self._filler(rng, lang, slot)
                out.add_filler(slot, fillers[slot])
                continue
            label = _ENTITY_SLOTS[slot]
            if slot == "AES":
                joiner = " and " if lang == "en" else " ja "
                for i, effect in enumerate(effects):
                    if i:
                        out.add(joiner if i == len(effects) - 1 else ", ")
                    out.add(self._surface(effect, lang, form), label)
                continue
            value = {"DRUG": drug, "AE": single, "COND": condition, "PROC": None}[slot]
            if slot == "PROC":
                value = procedure[0] if lang == "en" else procedure[1]
            if slot == "DRUG" and lang == "et":
                value = "{" + drug + "}"
            out.add(self._surface(value or "", lang, form), label)
        out.add(template[position:])
        text = out.text
        return SynthRecord(
            id=f"offline-{lang}-{text_hash(text)}",
            text=text,
            lang=lang,
            kind=kind,
            spans=out.spans,
            meta={
                "generator": "offline",
                "drug": plain_phrase(profile.drug),
                "template": index,
                "content_key": out.content_key,
            },
        )

    @staticmethod
    def _surface(value: str, lang: str, form: str) -> str:
        return inflect_et(value, form) if lang == "et" else plain_phrase(value)

    def records(
        self, lang: str, n: int, kinds: Sequence[str] = KINDS, patience: int = 2000
    ) -> Iterator[SynthRecord]:
        """Up to `n` texts in `lang`, kinds in turn, deterministic for a seed. Near-duplicates
        (texts that differ only in filler such as names and numbers) count as duplicates; the
        search stops after `patience` duplicates in a row (the facts allow no more texts)."""
        rng = random.Random(f"{self.seed}-{lang}")
        seen: set[str] = set()
        misses = 0
        made = 0
        turn = 0
        while made < n and misses < patience:
            kind = kinds[turn % len(kinds)]
            turn += 1
            record = self.compose(rng, lang, kind)
            if record is None or record.meta["content_key"] in seen:
                misses += 1
                continue
            seen.add(record.meta["content_key"])
            misses = 0
            made += 1
            yield record


def compose_offline(
    facts: Sequence[DrugFacts],
    output: str | Path,
    n_per_lang: dict[str, int],
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    progress: bool = True,
) -> dict[str, Any]:
    """Write offline texts until each language has its count in `output`; resumes a cut run."""
    from tqdm import tqdm

    composer = OfflineComposer(facts, seed=seed)
    out = JSONLAppender(output)
    summary: dict[str, Any] = {"output": str(output), "seed": seed, "langs": {}}
    for lang, n in n_per_lang.items():
        before = out.counts.get(lang, 0)
        bar = tqdm(total=n, initial=min(before, n), desc=f"compose {lang}", disable=not progress)
        written = 0
        for record in composer.records(lang, n, kinds):
            if out.counts.get(lang, 0) >= n:
                break
            if out.add(record):
                written += 1
                bar.update(1)
        bar.close()
        summary["langs"][lang] = {
            "requested": n,
            "in_file": out.counts.get(lang, 0),
            "written_now": written,
            "drugs": len(composer.profiles[lang]),
        }
        if out.counts.get(lang, 0) < n:
            summary["langs"][lang]["shortfall"] = n - out.counts.get(lang, 0)
    return summary
