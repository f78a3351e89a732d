"""Synthetic medical texts from drug facts: an offline composer with exact gold, and LLM prompts.

Two ways to turn `DrugFacts` (spacy_medllm.data.scrape) into texts, in English and Estonian, of three
kinds: an adverse-event e-mail to a drug company (the seed's style), a clinical note and a
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

    python -m spacy_medllm.data.synth offline --facts corpus/generated/drug_facts.jsonl \
        --output corpus/generated/synthetic.jsonl --n-en 600 --n-et 400 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from spacy_medllm.data.scrape import DrugFacts, read_facts

KINDS = ("ae_email", "clinical_note", "forum_post")
LANGS = ("en", "et")
LABELS = ("DRUG", "ADVERSE_EVENT", "DISEASE", "PROCEDURE")

# -- the bilingual lexicon (written for this project) ---------------------------------------------
# Estonian forms: words in braces are inflected (each into the slot's case, so an adjective
# agrees with its noun); words outside braces are kept as they are (genitive modifiers).

DRUG_ET: dict[str, str] = {
    "metformin": "metformiin",
    "ibuprofen": "ibuprofeen",
    "lisinopril": "lisinopriil",
    "atorvastatin": "atorvastatiin",
    "amoxicillin": "amoksitsilliin",
    "omeprazole": "omeprasool",
    "sertraline": "sertraliin",
    "levothyroxine": "levotüroksiin",
    "amlodipine": "amlodipiin",
    "simvastatin": "simvastatiin",
    "losartan": "losartaan",
    "paracetamol": "paratsetamool",
    "cetirizine": "tsetirisiin",
    "prednisolone": "prednisoloon",
    "warfarin": "varfariin",
    "clopidogrel": "klopidogreel",
    "ciprofloxacin": "tsiprofloksatsiin",
    "doxycycline": "doksütsükliin",
    "gabapentin": "gabapentiin",
    "tramadol": "tramadool",
    "furosemide": "furosemiid",
    "metoprolol": "metoprolool",
    "bisoprolol": "bisoprolool",
    "hydrochlorothiazide": "hüdroklorotiasiid",
    "salbutamol": "salbutamool",
    "montelukast": "montelukast",
    "fluoxetine": "fluoksetiin",
    "citalopram": "tsitalopraam",
    "allopurinol": "allopurinool",
    "diclofenac": "diklofenak",
    "naproxen": "naprokseen",
    "apixaban": "apiksabaan",
}

EFFECT_ET: dict[str, str] = {
    "allergic reaction": "{allergiline} {reaktsioon}",
    "angioedema": "{angioödeem}",
    "ankle swelling": "{pahkluuturse}",
    "anxiety": "{ärevus}",
    "back pain": "{seljavalu}",
    "bleeding": "{verejooks}",
    "bloating": "{kõhupuhitus}",
    "blood in urine": "{hematuuria}",
    "bone thinning": "{luuhõrenemine}",
    "breathing problems": "{hingamisraskus}",
    "bruising": "{verevalum}",
    "chest pain": "{rinnavalu}",
    "cold hands": "{külmatunne} kätes",
    "constipation": "{kõhukinnisus}",
    "dehydration": "{dehüdratsioon}",
    "diarrhoea": "{kõhulahtisus}",
    "dizziness": "{peapööritus}",
    "drowsiness": "{unisus}",
    "dry cough": "{kuiv} {köha}",
    "dry mouth": "{suukuivus}",
    "fainting": "{minestus}",
    "fatigue": "{väsimus}",
    "flushing": "{näopunetus}",
    "gout": "{podagra}",
    "headache": "{peavalu}",
    "hearing loss": "{kuulmislangus}",
    "heart attack": "{südameinfarkt}",
    "heartburn": "{kõrvetis}",
    "high blood sugar": "{kõrge} {veresuhkur}",
    "high potassium": "{hüperkaleemia}",
    "increased appetite": "{suurenenud} {isu}",
    "indigestion": "{seedehäire}",
    "infections": "{infektsioon}",
    "insomnia": "{unetus}",
    "irregular heartbeat": "{südamerütmihäire}",
    "joint pain": "{liigesevalu}",
    "kidney damage": "{neerukahjustus}",
    "lactic acidosis": "{laktatsidoos}",
    "liver damage": "{maksakahjustus}",
    "loss of appetite": "{isutus}",
    "low magnesium": "{hüpomagneseemia}",
    "low potassium": "{hüpokaleemia}",
    "metallic taste": "{metallimaitse} suus",
    "mood changes": "{meeleolumuutus}",
    "muscle breakdown": "{rabdomüolüüs}",
    "muscle cramps": "{lihaskramp}",
    "muscle pain": "{lihasvalu}",
    "nausea": "{iiveldus}",
    "nerve damage": "{närvikahjustus}",
    "nosebleeds": "{ninaverejooks}",
    "palpitations": "{südamekloppimine}",
    "seizures": "{krambihoog}",
    "sensitivity to sunlight": "{valgustundlikkus}",
    "serotonin syndrome": "{serotoniinisündroom}",
    "severe diarrhoea": "{tugev} {kõhulahtisus}",
    "severe headache": "{tugev} {peavalu}",
    "severe skin reaction": "{raske} {nahareaktsioon}",
    "shortness of breath": "{hingeldus}",
    "skin rash": "{nahalööve}",
    "slow heartbeat": "{bradükardia}",
    "stomach bleeding": "{maoverejooks}",
    "stomach pain": "{kõhuvalu}",
    "suicidal thoughts": "{enesetapumõte}",
    "sweating": "{higistamine}",
    "tendon rupture": "{kõõluserebend}",
    "thirst": "{janu}",
    "tremor": "{värin}",
    "urinary retention": "{uriinipeetus}",
    "vitamin b12 deficiency": "B12-vitamiini {puudus}",
    "weight gain": "{kaalutõus}",
    "weight loss": "{kaalulangus}",
    "yellowing of the skin": "{nahakollasus}",
}

CONDITION_ET: dict[str, str] = {
    "type 2 diabetes": "2. tüüpi {diabeet}",
    "polycystic ovary syndrome": "polütsüstiliste munasarjade {sündroom}",
    "rheumatoid arthritis": "{reumatoidartriit}",
    "high blood pressure": "{hüpertensioon}",
    "heart failure": "{südamepuudulikkus}",
    "high cholesterol": "{kõrge} {kolesterool}",
    "chest infections": "hingamisteede {infektsioon}",
    "ear infections": "{kõrvapõletik}",
    "urinary tract infection": "kuseteede {infektsioon}",
    "stomach ulcers": "{maohaavand}",
    "acid reflux": "{refluks}",
    "depression": "{depressioon}",
    "anxiety": "{ärevushäire}",
    "obsessive-compulsive disorder": "{obsessiiv-kompulsiivne} {häire}",
    "hypothyroidism": "{hüpotüreoos}",
    "angina": "{stenokardia}",
    "diabetic kidney disease": "{diabeetiline} {nefropaatia}",
    "hay fever": "{heinanohu}",
    "hives": "{nõgestõbi}",
    "asthma": "{astma}",
    "inflammatory bowel disease": "{põletikuline} {soolehaigus}",
    "atrial fibrillation": "kodade {virvendus}",
    "blood clots": "{tromboos}",
    "pneumonia": "{kopsupõletik}",
    "acne": "{akne}",
    "lyme disease": "{puukborrelioos}",
    "epilepsy": "{epilepsia}",
    "nerve pain": "{närvivalu}",
    "oedema": "{turse}",
    "chronic obstructive pulmonary disease": "{krooniline} {obstruktiivne} {kopsuhaigus}",
    "bulimia": "{buliimia}",
    "panic disorder": "{paanikahäire}",
    "gout": "{podagra}",
    "kidney stones": "{neerukivitõbi}",
    "osteoarthritis": "{osteoartriit}",
    "period pain": "{menstruatsioonivalu}",
    "fever": "{palavik}",
    "heartburn": "{kõrvetis}",
    "pain": "{valu}",
}

PROCEDURES: tuple[tuple[str, str], ...] = (
    ("blood test", "{vereanalüüs}"),
    ("ECG", "{elektrokardiogramm}"),
    ("colonoscopy", "{kolonoskoopia}"),
    ("gastroscopy", "{gastroskoopia}"),
    ("chest X-ray", "rindkere {röntgenülesvõte}"),
    ("liver function tests", "{maksaproov}"),
    ("abdominal ultrasound", "{kõhuõõne} {ultraheliuuring}"),
    ("echocardiogram", "{ehhokardiograafia}"),
)


def lexicon_table() -> list[dict[str, str]]:
    """The whole bilingual lexicon as rows (kind, English, Estonian lemma form) for review."""
    rows = [{"kind": "drug", "en": k, "et": v} for k, v in DRUG_ET.items()]
    rows += [{"kind": "side effect", "en": k, "et": v} for k, v in EFFECT_ET.items()]
    rows += [{"kind": "condition", "en": k, "et": v} for k, v in CONDITION_ET.items()]
    rows += [{"kind": "procedure", "en": en, "et": et} for en, et in PROCEDURES]
    return rows


# -- Estonian inflection ---------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _synthesize(lemma: str, form: str) -> str:
    from estnltk.vabamorf.morf import synthesize

    forms = synthesize(lemma, form)
    return forms[0] if forms else lemma


def inflect_et(phrase: str, form: str) -> str:
    """Inflect the braced words of a lexicon phrase into `form` (Vabamorf, e.g. "sg el")."""
    if form == "sg n":
        return re.sub(r"\{([^}]+)\}", r"\1", phrase)
    return re.sub(r"\{([^}]+)\}", lambda m: _synthesize(m.group(1), form), phrase)


def plain_phrase(phrase: str) -> str:
    """A lexicon phrase in its dictionary form (braces removed)."""
    return re.sub(r"\{([^}]+)\}", r"\1", phrase)


# -- templates -------------------------------------------------------------------------------------
# Slots: {DRUG}, {AES} (one to three side effects joined with commas and and/ja), {AE} (one),
# {COND}, {PROC} are entities; in Estonian a slot may carry a case, {DRUG:sg el}. Other slots
# ({PERSON}, {AGE}, {DOSE}...) are filler. A template is used only when its slots can be filled.

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


@dataclass
class SynthRecord:
    id: str
    text: str
    lang: str
    kind: str
    spans: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {"id": self.id, "text": self.text, "lang": self.lang, "kind": self.kind}
        if self.spans is not None:
            data["spans"] = self.spans
        data["meta"] = self.meta
        return data


def normalise_for_dedup(text: str) -> str:
    """Case, accents' composition and whitespace do not make two texts different."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip()


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise_for_dedup(text).encode("utf8")).hexdigest()[:16]


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


# -- JSONL output, resumable -----------------------------------------------------------------------


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a last line cut by an interruption is dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a half-written last line: it is written again on resume
    return records


class JSONLAppender:
    """Appends records to a JSONL file, skipping ids (and normalised texts) already in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        existing = read_records(self.path)
        self.ids = {r["id"] for r in existing}
        self.hashes = {text_hash(r["text"]) for r in existing if "text" in r}
        self.counts: dict[str, int] = {}
        for record in existing:
            key = record.get("lang", "")
            self.counts[key] = self.counts.get(key, 0) + 1
        self._repair_tail()

    def _repair_tail(self) -> None:
        """Cut a half-written last line, so appended records start on a line of their own."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            self.path.write_bytes(data[: data.rfind(b"\n") + 1])

    def __contains__(self, record_id: str) -> bool:
        return record_id in self.ids

    def add(self, record: SynthRecord | dict[str, Any]) -> bool:
        """Write `record` unless its id or text is there already. Returns whether it was written."""
        data = record.to_dict() if isinstance(record, SynthRecord) else dict(record)
        digest = text_hash(data["text"])
        if data["id"] in self.ids or digest in self.hashes:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf8") as file_:
            file_.write(json.dumps(data, ensure_ascii=False) + "\n")
            file_.flush()
        self.ids.add(data["id"])
        self.hashes.add(digest)
        self.counts[data.get("lang", "")] = self.counts.get(data.get("lang", ""), 0) + 1
        return True


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


# -- LLM generation --------------------------------------------------------------------------------

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
    kinds: Sequence[str] = KINDS,
) -> list[LLMJob]:
    """The texts to ask an LLM for, deterministic for a seed; ids are stable across runs."""
    jobs: list[LLMJob] = []
    for lang, n in n_per_lang.items():
        rng = random.Random(f"{seed}-llm-{lang}")
        profiles = [p for p in (DrugProfile.from_facts(f, lang) for f in facts) if p]
        if not profiles:
            continue
        for i in range(n):
            profile = rng.choice(profiles)
            effects = rng.sample(profile.effects, min(len(profile.effects), rng.choice((1, 2, 3))))
            condition = rng.choice(profile.conditions) if profile.conditions else ""
            jobs.append(
                LLMJob(
                    id=f"llm-{lang}-{seed}-{i:06d}",
                    lang=lang,
                    kind=kinds[i % len(kinds)],
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


# -- splitting ------------------------------------------------------------------------------------


def split_texts(
    input_path: str | Path,
    first: str | Path,
    second: str | Path,
    *,
    fraction: float = 0.5,
    lang: str | None = None,
) -> dict[str, Any]:
    """Split a texts JSONL into two files by a hash of each record's id (no random state).

    `fraction` of the records (of `lang` only, when given) go to `first`, the rest to `second`;
    the same id always lands on the same side, so adding texts never moves the old ones. The
    workflow uses it to keep the texts a teacher is trained on (with their gold) apart from the
    texts it labels for the students.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    records = [
        json.loads(line) for line in Path(input_path).read_text("utf8").splitlines() if line.strip()
    ]
    if lang:
        records = [r for r in records if r.get("lang") == lang]
    if not records:
        raise ValueError(
            f"{input_path} holds no texts" + (f" in language {lang!r}" if lang else "")
        )
    sides: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    seen: set[str] = set()
    for record in records:
        key = str(record.get("id", record["text"]))
        if key in seen:
            raise ValueError(f"{input_path}: id {key!r} occurs twice")
        seen.add(key)
        bucket = int(hashlib.sha256(key.encode("utf8")).hexdigest()[:8], 16) / 0xFFFFFFFF
        sides[0 if bucket < fraction else 1].append(record)
    for path, side in zip((first, second), sides, strict=True):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in side)
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(text, "utf8")
        tmp.replace(path)
    return {
        "input": str(input_path),
        "lang": lang,
        "fraction": fraction,
        "first": {"path": str(first), "n": len(sides[0])},
        "second": {"path": str(second), "n": len(sides[1])},
    }


# -- command line ----------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spacy_medllm.data.synth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("offline", "llm"):
        p = sub.add_parser(name)
        p.add_argument("--facts", required=True, help="JSONL of DrugFacts (scrape's output).")
        p.add_argument("--output", required=True, help="JSONL to append the texts to.")
        p.add_argument("--n-en", type=int, default=600)
        p.add_argument("--n-et", type=int, default=400)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--kinds", default=",".join(KINDS))
        p.add_argument("--summary", help="JSON file for the run's summary.")
    split = sub.add_parser("split", help="split a texts JSONL in two by a hash of the ids")
    split.add_argument("--input", required=True)
    split.add_argument("--first", required=True, help="JSONL for the FRACTION side")
    split.add_argument("--second", required=True, help="JSONL for the rest")
    split.add_argument("--fraction", type=float, default=0.5)
    split.add_argument("--lang", default=None, help="only the texts of this language")
    llm = sub.choices["llm"]
    llm.add_argument("--model", default="smollm2-135m-instruct")
    llm.add_argument("--adapter", default=None)
    llm.add_argument("--base-url", default=None, help="An OpenAI-compatible server instead.")
    llm.add_argument("--api-key-env", default="OPENAI_API_KEY")
    llm.add_argument("--max-new-tokens", type=int, default=256)
    llm.add_argument("--temperature", type=float, default=0.7)
    llm.add_argument("--batch-size", type=int, default=8)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.command == "split":
        try:
            result = split_texts(
                args.input, args.first, args.second, fraction=args.fraction, lang=args.lang
            )
        except (OSError, ValueError) as error:
            raise SystemExit(f"synth split: {error}") from error
        print(json.dumps(result, ensure_ascii=False))
        return 0
    facts = read_facts(args.facts)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"Unknown text kinds {sorted(unknown)}; choose from {KINDS}")
    counts = {lang: n for lang, n in (("en", args.n_en), ("et", args.n_et)) if n > 0}
    if args.command == "offline":
        summary = compose_offline(facts, args.output, counts, seed=args.seed, kinds=kinds)
    else:
        if args.base_url:
            from spacy_medllm.generators.openai_compat import OpenAIGenerator

            generator: Any = OpenAIGenerator(
                model=args.model,
                base_url=args.base_url,
                api_key_env=args.api_key_env,
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
            )
        else:
            from spacy_medllm.generators.hf.generator import HFGenerator

            generator = HFGenerator(
                model=args.model,
                adapter=args.adapter,
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
            )
        jobs = plan_llm_jobs(facts, counts, seed=args.seed, kinds=kinds)
        summary = generate_with_llm(jobs, generator, args.output)
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print(json.dumps(summary, ensure_ascii=False)[:2000])
    short = [lang for lang, s in summary.get("langs", {}).items() if s.get("shortfall")]
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
