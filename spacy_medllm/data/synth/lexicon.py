"""The bilingual lexicon of the synthetic texts, written for this project: English side effects,
conditions and procedures with their Estonian lemmas, and Vabamorf inflection of Estonian phrases
(estnltk's synthesiser, offline) into the case a template slot needs.
"""

from __future__ import annotations

import re
from functools import lru_cache

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
