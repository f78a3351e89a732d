"""Synthetic medical texts from drug facts: an offline composer with exact gold, and LLM prompts.

Two ways to turn `DrugFacts` (spacy_medllm.data.scrape) into texts. English has twelve styles
(`english.EN_KINDS`: the seed's adverse-event e-mails, short and long e-mails, clinical notes,
forum and social-media posts, call-centre transcripts, pharmacist notes, clinicians' narratives,
discharge-summary sentences, patient-portal messages, reviews), with lay wordings of the effects,
brand names, misspellings, second drugs, and negated or hypothetical effects that are written but
not labelled; Estonian has three (an adverse-event e-mail, a clinical note, a forum post).

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
from spacy_medllm.data.synth.english import (
    BRANDS,
    CLINICAL,
    EN_KINDS,
    EN_TEMPLATES,
    INFORMAL,
    LAY,
    LAY_SHARE,
    NEUTRAL,
    PRONOUNS,
    THIRD_PERSON,
    misspell,
)
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

# Estonian templates; the English ones are `english.EN_TEMPLATES` (more styles, lay wordings).
TEMPLATES: dict[tuple[str, str], tuple[str, ...]] = {
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
        "STARS": ("1", "2", "3", "4", "5"),
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

_SLOT = re.compile(r"\{([A-Z]+[0-9]?)(?::([^}]+))?\}")

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


EMPTY_KINDS = frozenset({"no_mention"})  # styles whose texts name nothing to label


def kinds_for(lang: str) -> tuple[str, ...]:
    """The styles of a language: English has `english.EN_KINDS`, Estonian the three `KINDS`."""
    return EN_KINDS if lang == "en" else KINDS


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
        if lang == "en":
            return self._compose_en(rng, kind)
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

    def _drug_name(self, rng: random.Random, name: str, kind: str) -> str:
        """The drug as this style writes it: generic or brand, maybe lower case or mistyped."""
        brands = BRANDS.get(name.lower(), ())
        written = rng.choice(brands) if brands and rng.random() < 0.35 else name
        if kind in INFORMAL:
            if rng.random() < 0.15:
                written = misspell(written.lower() if rng.random() < 0.5 else written, rng)
            elif rng.random() < 0.4:
                written = written.lower()
        elif kind not in ("ae_email", "long_email", "discharge_sentence") and rng.random() < 0.5:
            written = written.lower()
        return written

    def _effect(
        self, rng: random.Random, effect: str, kind: str, clause: bool, third: bool = False
    ) -> tuple[str, str]:
        """(unlabelled lead, labelled words) of an effect in this style: a clause when `clause`
        (falling back to a noun phrase), lay wording at the style's share; `third`: about
        someone else, so no lay noun phrase in the first person."""
        lay_np, lay_cl = LAY.get(effect, ((), ()))
        if third:
            lay_np = tuple(np for np in lay_np if " my " not in f" {np} ")
        if clause and lay_cl:
            return rng.choice(lay_cl)
        lead = "I got " if clause else ""
        if lay_np and rng.random() < LAY_SHARE.get(kind, 0.5):
            words = rng.choice(lay_np)
        else:
            words = rng.choice(CLINICAL.get(effect, (effect,)))
        # The article is not part of the mention (corpus/out_of_style/GUIDE.md): "a rash" -> "rash"
        article = re.match(r"(a|an|the) ", words)
        if article:
            lead, words = lead + article.group(0), words[article.end() :]
        return lead, words

    def _compose_en(self, rng: random.Random, kind: str) -> SynthRecord | None:
        """An English text of style `kind` (`english.EN_TEMPLATES`); negated and hypothetical
        effects are written, not labelled, and listed in the record's meta with their offsets."""
        profiles = self.profiles["en"]
        if not profiles:
            return None
        profile = rng.choice(profiles)
        templates = [t for t in EN_TEMPLATES[kind] if profile.conditions or "{COND" not in t]
        if not templates:
            return None
        index = rng.randrange(len(templates))
        template = templates[index]
        third = kind in THIRD_PERSON or any(
            marker in template for marker in ("{PRONOUN}", "{RELATIVE}", "Caller reports", "She ")
        )
        if kind == "ae_email":
            template = EMAIL_HEADER["en"] + template
        effects = list(profile.effects)
        rng.shuffle(effects)
        n_labelled = template.count("{AE") + (template.count("{AES}") and 2)
        named = effects[: max(1, n_labelled)]
        unnamed = [e for e in LAY if e not in named and e not in profile.effects]
        rng.shuffle(unnamed)
        others = [p for p in profiles if p.drug != profile.drug]
        second = self._drug_name(rng, rng.choice(others).drug, kind) if others else None
        drug = self._drug_name(rng, profile.drug, kind)
        fillers: dict[str, str] = {}
        neutral = list(NEUTRAL)
        rng.shuffle(neutral)
        out = _Builder()
        unlabelled: dict[str, list[dict[str, Any]]] = {"negated": [], "hypothetical": []}
        used = 0  # effects of `named` used so far
        position = 0
        for match in _SLOT.finditer(template):
            out.add(template[position : match.start()])
            position = match.end()
            slot = match.group(1)
            if slot == "NEUTRAL" and kind == "no_mention":  # the content of such a text
                out.add(neutral.pop() if neutral else "")
            elif slot == "NEUTRAL":
                out.add_filler(slot, neutral.pop() if neutral else "")
            elif slot in ("NEG", "NEG2", "HYP"):
                kind_name = "hypothetical" if slot == "HYP" else "negated"
                effect = unnamed.pop() if unnamed else "fever"
                lead, words = self._effect(rng, effect, kind, clause=False, third=third)
                if slot == "HYP":  # "it can cause a rash"; but "no rash", "denies rash"
                    out.add(lead)
                start = out.length
                if kind == "no_mention":
                    out.add(words)
                else:
                    out.add_filler(slot, words)
                unlabelled[kind_name].append({"start": start, "end": out.length, "text": words})
            elif slot in ("AE", "AECL", "AECL2"):
                rest = named[used:] or named[-1:]
                if slot != "AE":  # a clause reads better from an effect that has lay clauses
                    rest = [e for e in rest if LAY.get(e, ((), ()))[1]] or rest
                effect = rest[0]
                named.remove(effect)
                named.insert(used, effect)
                used += 1
                lead, words = self._effect(rng, effect, kind, clause=slot != "AE", third=third)
                if lead:
                    at_start = out.length == 0 or re.search(r"(^|[.!?:]\s+|\n)$", out.text)
                    out.add(lead[:1].upper() + lead[1:] if at_start else lead)
                out.add(words, "ADVERSE_EVENT")
            elif slot == "AES":
                picked = named[used : used + rng.choice((1, 2, 2, 3))] or named[-1:]
                used += len(picked)
                for i, effect in enumerate(picked):
                    if i:
                        out.add(" and " if i == len(picked) - 1 else ", ")
                    lead, words = self._effect(rng, effect, kind, clause=False, third=third)
                    out.add(lead)
                    out.add(words, "ADVERSE_EVENT")
            elif slot == "DRUG":
                out.add(drug, "DRUG")
            elif slot == "DRUG2":
                if second is None:
                    return None
                out.add(second, "DRUG")
            elif slot == "COND":
                out.add(rng.choice(profile.conditions), "DISEASE")
            elif slot == "PROC":
                out.add(rng.choice(PROCEDURES)[0], "PROCEDURE")
            else:
                if slot not in fillers:
                    if slot == "PRONOUN" and "RELATIVE" in fillers:
                        fillers[slot] = PRONOUNS.get(fillers["RELATIVE"], "they")
                    else:
                        fillers[slot] = self._filler(rng, "en", slot)
                out.add_filler(slot, fillers[slot])
        out.add(template[position:])
        text = out.text
        return SynthRecord(
            id=f"offline-en-{text_hash(text)}",
            text=text,
            lang="en",
            kind=kind,
            spans=out.spans,
            meta={
                "generator": "offline",
                "drug": profile.drug,
                "template": index,
                "content_key": out.content_key,
                **unlabelled,
            },
        )

    @staticmethod
    def _surface(value: str, lang: str, form: str) -> str:
        return inflect_et(value, form) if lang == "et" else plain_phrase(value)

    def records(
        self, lang: str, n: int, kinds: Sequence[str] | None = None, patience: int = 2000
    ) -> Iterator[SynthRecord]:
        """Up to `n` texts in `lang`, kinds in turn, deterministic for a seed. Near-duplicates
        (texts that differ only in filler such as names and numbers) count as duplicates; the
        search stops after `patience` duplicates in a row (the facts allow no more texts)."""
        kinds = list(kinds or kinds_for(lang))
        rng = random.Random(f"{self.seed}-{lang}")
        seen: set[str] = set()
        misses = 0
        made = 0
        turn = 0
        # Texts with nothing to label never make up for other styles' shortfall: at most their
        # turn's share of n.
        empty_quota = -(-n // len(kinds))
        n_empty = 0
        while made < n and misses < patience:
            kind = kinds[turn % len(kinds)]
            turn += 1
            if kind in EMPTY_KINDS and n_empty >= empty_quota:
                misses += 1
                continue
            record = self.compose(rng, lang, kind)
            if record is None or record.meta["content_key"] in seen:
                misses += 1
                continue
            seen.add(record.meta["content_key"])
            n_empty += kind in EMPTY_KINDS
            misses = 0
            made += 1
            yield record


def compose_offline(
    facts: Sequence[DrugFacts],
    output: str | Path,
    n_per_lang: dict[str, int],
    seed: int = 0,
    kinds: Sequence[str] | None = None,
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
