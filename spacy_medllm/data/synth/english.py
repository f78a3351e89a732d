"""What makes the English synthetic texts varied: styles, lay wordings, brands, misspellings.

Written for this project. `LAY` maps a clinical side effect (as the drug pages name it) to the
ways people write it: noun phrases that fit "I have ..." or "no ...", and clauses whose
labelled part follows an unlabelled lead ("my " + "head is pounding"). `BRANDS` gives brand
names of the generics the drug pages describe; `misspell` writes a drug the way people mistype
it. `EN_TEMPLATES` holds the English styles; their slots (`{DRUG}`, `{AE}`, `{AES}`, `{AECL}`,
`{DRUG2}`, `{NEG}`, `{HYP}`, ...) are filled by `OfflineComposer`, which knows every span it
writes. Negated (`{NEG}`) and hypothetical (`{HYP}`) effects are written but never labelled,
following corpus/out_of_style/GUIDE.md: an effect the text says did not happen, or may happen,
is not an adverse event.
"""

from __future__ import annotations

import random

# clinical effect -> (noun phrases, clauses as (unlabelled lead, labelled part))
LAY: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "nausea": (
        ("nausea", "queasiness", "a sick feeling in my stomach"),
        (
            ("I ", "feel sick all the time"),
            ("I'm ", "queasy every morning"),
            ("I ", "want to throw up after meals"),
        ),
    ),
    "headache": (
        ("headaches", "a pounding headache", "headaches that won't quit"),
        (("my ", "head is throbbing"), ("I ", "wake up with a headache")),
    ),
    "severe headache": (
        ("a splitting headache", "severe headaches"),
        (("I ", "get the worst headaches of my life"),),
    ),
    "dizziness": (
        ("dizziness", "dizzy spells", "light-headedness"),
        (
            ("I ", "feel dizzy when I get up"),
            ("the ", "room spins"),
            ("I ", "go light-headed in the shower"),
        ),
    ),
    "drowsiness": (
        ("drowsiness", "constant sleepiness"),
        (("I ", "can barely keep my eyes open"), ("I'm ", "nodding off at my desk")),
    ),
    "fatigue": (
        ("tiredness", "fatigue", "exhaustion"),
        (
            ("I'm ", "wiped out by lunchtime"),
            ("I ", "feel drained all day"),
            ("I ", "have no energy at all"),
        ),
    ),
    "insomnia": (
        ("insomnia", "trouble sleeping", "sleepless nights"),
        (
            ("I ", "can't get to sleep"),
            ("I'm ", "awake half the night"),
            ("I ", "lie awake until 3am"),
        ),
    ),
    "dry mouth": (
        ("dry mouth", "a parched mouth"),
        (("my ", "mouth feels like sandpaper"), ("my ", "tongue sticks to my teeth")),
    ),
    "diarrhoea": (
        ("diarrhoea", "loose stools", "the runs"),
        (("I'm ", "running to the toilet all day"), ("I ", "can't be far from a bathroom")),
    ),
    "severe diarrhoea": (
        ("severe diarrhoea", "watery diarrhoea"),
        (("I had ", "diarrhoea ten times a day"),),
    ),
    "constipation": (
        ("constipation",),
        (("I ", "haven't been able to go for days"), ("I'm ", "completely blocked up")),
    ),
    "stomach pain": (
        ("stomach pain", "tummy ache", "stomach cramps"),
        (("my ", "stomach is killing me"), ("I ", "get cramps in my belly")),
    ),
    "heartburn": (
        ("heartburn", "acid reflux", "a burning feeling in my chest"),
        (("I ", "taste acid in my throat"),),
    ),
    "indigestion": (
        ("indigestion", "an upset stomach"),
        (("my ", "stomach feels unsettled after eating"),),
    ),
    "bloating": (
        ("bloating", "a swollen belly"),
        (("I ", "feel bloated all day"), ("my ", "stomach blows up like a balloon")),
    ),
    "muscle pain": (
        ("muscle pain", "aching muscles", "sore legs"),
        (("my ", "legs ache like I ran a marathon"), ("my ", "muscles hurt all over")),
    ),
    "muscle cramps": (
        ("muscle cramps", "leg cramps", "cramps in my calves"),
        (("my ", "calves cramp up at night"),),
    ),
    "joint pain": (
        ("joint pain", "achy joints", "sore knees"),
        (("my ", "knees and wrists ache"),),
    ),
    "back pain": (("back pain", "an aching back"), (("my ", "lower back hurts"),)),
    "tremor": (
        ("a tremor", "shaky hands", "trembling"),
        (("my ", "hands shake"), ("I ", "can't hold a cup steady")),
    ),
    "sweating": (
        ("sweating", "night sweats", "excessive sweating"),
        (("I ", "wake up drenched in sweat"), ("I'm ", "sweating through my shirts")),
    ),
    "flushing": (
        ("flushing", "hot flushes", "a red face"),
        (("my ", "face goes red and hot"),),
    ),
    "skin rash": (
        ("a rash", "a skin rash", "red itchy spots", "hives"),
        (("my ", "skin broke out in red blotches"), ("I ", "came out in itchy bumps")),
    ),
    "severe skin reaction": (
        ("blistering skin", "a severe skin reaction"),
        (("my ", "skin started peeling and blistering"),),
    ),
    "sensitivity to sunlight": (
        ("sun sensitivity", "sunburn after a few minutes outside"),
        (("I ", "burn in the sun in minutes"),),
    ),
    "ankle swelling": (
        ("ankle swelling", "swollen ankles", "puffy ankles"),
        (("my ", "ankles swell up by the evening"), ("my ", "shoes don't fit any more")),
    ),
    "dry cough": (
        ("a dry cough", "a tickly cough", "a cough that won't go away"),
        (("I ", "can't stop coughing at night"),),
    ),
    "shortness of breath": (
        ("shortness of breath", "breathlessness"),
        (("I ", "get out of breath on the stairs"), ("I ", "can't catch my breath")),
    ),
    "palpitations": (
        ("palpitations", "a racing heart", "heart flutters"),
        (("my ", "heart is racing"), ("my ", "heart skips beats")),
    ),
    "slow heartbeat": (("a slow heartbeat", "a slow pulse"), (("my ", "pulse dropped to 48"),)),
    "irregular heartbeat": (
        ("an irregular heartbeat",),
        (("my ", "heartbeat feels all over the place"),),
    ),
    "chest pain": (("chest pain", "a tight chest"), (("my ", "chest feels tight"),)),
    "anxiety": (
        ("anxiety", "nervousness", "panic attacks"),
        (("I ", "feel on edge all the time"), ("I'm ", "jittery and nervous")),
    ),
    "mood changes": (
        ("mood swings", "mood changes", "irritability"),
        (("I ", "snap at everyone"), ("I'm ", "crying over nothing")),
    ),
    "suicidal thoughts": (("dark thoughts", "suicidal thoughts"), ()),
    "weight gain": (
        ("weight gain",),
        (("I've ", "put on 5 kilos"), ("I ", "gained a stone in two months")),
    ),
    "weight loss": (("weight loss",), (("I've ", "lost weight without trying"),)),
    "increased appetite": (
        ("an increased appetite", "constant hunger"),
        (("I'm ", "hungry all the time"), ("I ", "eat everything in sight")),
    ),
    "loss of appetite": (
        ("loss of appetite", "no appetite"),
        (("I ", "can't face food"), ("I've ", "gone off my food")),
    ),
    "metallic taste": (
        ("a metallic taste", "a bitter taste"),
        (("everything ", "tastes like metal"),),
    ),
    "nosebleeds": (("nosebleeds", "a bleeding nose"), (("my ", "nose bleeds every morning"),)),
    "bruising": (
        ("bruising", "easy bruising", "big bruises"),
        (("I ", "bruise at the slightest bump"),),
    ),
    "bleeding": (("bleeding", "bleeding gums"), (("my ", "gums bleed when I brush"),)),
    "thirst": (("thirst", "constant thirst"), (("I'm ", "thirsty all the time"),)),
    "cold hands": (("cold hands", "icy fingers"), (("my ", "hands and feet are always cold"),)),
    "hearing loss": (("hearing loss", "muffled hearing"), (("I ", "can't hear properly"),)),
    "fainting": (
        ("fainting", "a blackout", "fainting spells"),
        (("I ", "passed out in the kitchen"),),
    ),
    "breathing problems": (("breathing problems", "wheezing"), (("I ", "wheeze at night"),)),
    "yellowing of the skin": (("yellow skin", "jaundice"), (("my ", "eyes have gone yellow"),)),
    "urinary retention": (("trouble passing urine",), (("I ", "can't pee properly"),)),
    "dehydration": (("dehydration",), ()),
    "infections": (("infections", "one cold after another"), (("I ", "catch every bug going"),)),
    "allergic reaction": (("an allergic reaction",), (("my ", "lips swelled up"),)),
    "angioedema": (
        ("swelling of the lips and tongue", "angioedema"),
        (("my ", "tongue swelled up"),),
    ),
    "tendon rupture": (("a torn tendon", "Achilles pain"), (("my ", "heel tendon snapped"),)),
    "nerve damage": (("pins and needles", "numb feet"), (("my ", "toes feel numb"),)),
    "seizures": (("a seizure", "fits"), ()),
    "muscle breakdown": (("muscle breakdown",), ()),
    "stomach bleeding": (("black stools", "blood in my vomit"), ()),
}

# Clinical terms a doctor or a discharge summary writes (otherwise the pages' term is kept).
CLINICAL: dict[str, tuple[str, ...]] = {
    "diarrhoea": ("diarrhoea", "loose stools"),
    "nausea": ("nausea", "vomiting"),
    "dizziness": ("dizziness", "postural dizziness"),
    "skin rash": ("a maculopapular rash", "an urticarial rash", "skin rash"),
    "ankle swelling": ("peripheral oedema", "ankle oedema"),
    "palpitations": ("palpitations",),
    "slow heartbeat": ("bradycardia",),
    "irregular heartbeat": ("an irregular heartbeat", "atrial ectopics"),
    "low potassium": ("hypokalaemia",),
    "high potassium": ("hyperkalaemia",),
    "low magnesium": ("hypomagnesaemia",),
    "high blood sugar": ("hyperglycaemia",),
    "yellowing of the skin": ("jaundice",),
    "liver damage": ("deranged liver function", "drug-induced liver injury"),
    "kidney damage": ("acute kidney injury",),
    "muscle breakdown": ("rhabdomyolysis",),
    "stomach bleeding": ("upper gastrointestinal bleeding",),
    "fainting": ("syncope",),
    "drowsiness": ("somnolence", "drowsiness"),
    "tremor": ("a fine tremor",),
    "angioedema": ("angioedema",),
}

# Brand names of the generics the drug pages describe.
BRANDS: dict[str, tuple[str, ...]] = {
    "allopurinol": ("Zyloprim",),
    "amlodipine": ("Norvasc", "Istin"),
    "amoxicillin": ("Amoxil",),
    "apixaban": ("Eliquis",),
    "atorvastatin": ("Lipitor",),
    "bisoprolol": ("Cardicor", "Zebeta"),
    "cetirizine": ("Zyrtec",),
    "ciprofloxacin": ("Cipro", "Ciproxin"),
    "citalopram": ("Celexa", "Cipramil"),
    "clopidogrel": ("Plavix",),
    "diclofenac": ("Voltaren", "Voltarol"),
    "doxycycline": ("Vibramycin", "Doryx"),
    "fluoxetine": ("Prozac",),
    "furosemide": ("Lasix",),
    "gabapentin": ("Neurontin",),
    "hydrochlorothiazide": ("Microzide",),
    "ibuprofen": ("Advil", "Nurofen", "Motrin"),
    "levothyroxine": ("Synthroid", "Eltroxin"),
    "lisinopril": ("Zestril", "Prinivil"),
    "losartan": ("Cozaar",),
    "metformin": ("Glucophage",),
    "metoprolol": ("Lopressor", "Toprol"),
    "montelukast": ("Singulair",),
    "naproxen": ("Aleve", "Naprosyn"),
    "omeprazole": ("Prilosec", "Losec"),
    "paracetamol": ("Panadol", "Tylenol"),
    "prednisolone": ("Pred Forte",),
    "salbutamol": ("Ventolin",),
    "sertraline": ("Zoloft", "Lustral"),
    "simvastatin": ("Zocor",),
    "tramadol": ("Ultram", "Zydol"),
    "warfarin": ("Coumadin", "Marevan"),
}


def misspell(name: str, rng: random.Random) -> str:
    """The drug name as people mistype it: a doubled letter dropped, two letters swapped, a
    vowel changed, "ph" as "f"; never the name itself, never shorter than 4 letters."""
    word = name
    choices = []
    for i in range(1, len(word) - 1):
        if word[i] == word[i + 1]:
            choices.append(word[:i] + word[i + 1 :])
    if "ph" in word:
        choices.append(word.replace("ph", "f", 1))
    for i in range(1, len(word) - 2):
        swapped = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        if swapped != word:
            choices.append(swapped)
    vowels = "aeiou"
    for i, ch in enumerate(word[1:-1], start=1):
        if ch in vowels:
            other = vowels[(vowels.index(ch) + 1) % 5]
            choices.append(word[:i] + other + word[i + 1 :])
    choices = [c for c in choices if c != name and len(c) >= 4]
    return rng.choice(choices) if choices else name


# Sentences with no entity, for length and realism (never an effect, drug or condition).
NEUTRAL: tuple[str, ...] = (
    "I work shifts, so I take my tablets at odd hours.",
    "My pharmacist was very helpful when I picked up the prescription.",
    "I have been keeping a diary of how I feel each day.",
    "We went away for the weekend, which did not help.",
    "I am not sure whether this is relevant, but I thought I should mention it.",
    "Otherwise I am in reasonably good health.",
    "I do not smoke and only drink at weekends.",
    "The repeat prescription came through on time this month.",
    "I will be seeing my doctor again next month.",
    "Thank you for taking the time to read this.",
    "I have not changed anything else in my routine.",
    "My partner noticed before I did.",
)

EN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "ae_email": (
        "Hi, after starting {DRUG} for {COND}, I've noticed {AES}. Are these typical reactions? "
        "Best, {PERSON}",
        "I have been taking {DRUG} for {DAYS} days and developed {AES}. Should I stop taking it?",
        "My {RELATIVE} was prescribed {DRUG} {DOSE} for {COND}. Since then {PRONOUN} has had "
        "{AES}. Please advise what we should do.",
        "Dear XYZ Pharma, I started {DRUG} {DOSE} a month ago and now I suffer from {AES}. "
        "No {NEG} though. Is this common?",
    ),
    "short_email": (
        "{DRUG} gave me {AE}.",
        "Subject: {DRUG}\n\n{AECL} since I started it. Normal?",
        "Can {DRUG} cause {AE}? Thanks.",
        "Quick question: I take {DRUG} and {DRUG2}. Fine so far, no {NEG}.",
    ),
    "long_email": (
        "Dear Sir or Madam,\n\nI am writing about my {RELATIVE}, who was started on {DRUG} {DOSE} "
        "for {COND} about {DAYS} days ago. {NEUTRAL} {NEUTRAL} Within the first week {PRONOUN} "
        "developed {AES}. {NEUTRAL}\n\nThe doctor has now added {DRUG2}, and we were told to "
        "look out for {HYP}. {NEUTRAL} {NEUTRAL}\n\nYours faithfully,\n{PERSON}",
        "Hello,\n\n{NEUTRAL} I was put on {DRUG} for {COND}. {NEUTRAL} At first it was fine, but "
        "after {DAYS} days {AECL}, and lately {AECL2}. I have not had any {NEG}.\n\n{NEUTRAL} "
        "{NEUTRAL} {NEUTRAL}\n\nRegards,\n{PERSON}",
    ),
    "clinical_note": (
        "{AGE} y/o {SEX} with {COND} on {DRUG} {DOSE}. Reports {AES} since starting. "
        "{PROC} ordered. Plan: review in {DAYS} days.",
        "Pt started {DRUG} for {COND} {DAYS} days ago. Now presents with {AES}. Denies {NEG}. "
        "{DRUG} held pending {PROC}.",
        "Follow-up. Known {COND}. Tolerating {DRUG} poorly: {AES}. Switch to {DRUG2} discussed.",
        "S: {AES} after dose increase of {DRUG}. O: vitals stable. A: probable adverse drug "
        "reaction. P: reduce dose, {PROC}.",
    ),
    "forum_post": (
        "Anyone else get {AES} on {DRUG}? I was put on it for my {COND} and feel awful.",
        "Week {DAYS} on {DRUG}. {AECL} and honestly {AECL2}. Does it get better?",
        "Doc switched me from {DRUG2} to {DRUG} for {COND}. The {AE} is worse than the disease lol",
        "Quick question: the leaflet for {DRUG} mentions {HYP}. Has that happened to anyone? "
        "I've only had {AE} so far.",
        "Update: stopped {DRUG} because {AECL}. Had a {PROC} and everything looks fine now.",
    ),
    "social_post": (
        "day {DAYS} of {DRUG} and {AECL} #sideeffects",
        "{DRUG} = {AE}. every. single. time.",
        "switched to {DRUG} and now {AECL}. love that for me",
        "no {NEG} on the new {DRUG} dose so far, just {AE}. i'll take it",
        "anyone else on {DRUG} get {AE}? asking for me",
    ),
    "call_transcript": (
        "Agent: How can I help? Caller: I'm on {DRUG} and {AECL}. Agent: When did it start? "
        "Caller: About {DAYS} days after the first dose.",
        "Caller reports that since starting {DRUG} {PRONOUN} has had {AES}. No {NEG} reported. "
        "Advised to speak to the prescriber.",
        "Caller: does {DRUG} interact with {DRUG2}? Agent: Any problems so far? Caller: None, "
        "no {NEG}.",
        "Caller states her {RELATIVE} took {DRUG} and now has {AES}. Agent advised urgent review.",
    ),
    "pharmacist_note": (
        "Pt collected {DRUG}; mentions {AES} for {DAYS} days. Advised to see GP.",
        "Counselled on {DRUG}: may cause {HYP}; avoid with {DRUG2}. No current complaints.",
        "Pt returned {DRUG} after {DAYS} days: {AES}. Switched to {DRUG2}.",
        "MUR: on {DRUG} {DOSE}, reports {AE} since the dose went up. Review booked.",
    ),
    "hcp_narrative": (
        "I saw this {AGE}-year-old {SEX} who developed {AE} {DAYS} days after starting {DRUG} "
        "for {COND}. {DRUG} was stopped.",
        "She was started on {DRUG} and returned with {AES}; there was no {NEG}.",
        "Following {DAYS} days of {DRUG} the patient described {AES}. We discussed {DRUG2} "
        "instead, although it can cause {HYP}.",
        "He tolerated {DRUG} without incident. No {NEG}, no {NEG2}.",
    ),
    "discharge_sentence": (
        "Admitted with {AE} attributed to {DRUG}, which has been discontinued.",
        "Hospital course complicated by {AE} after {DRUG} was started for {COND}.",
        "Discharged on {DRUG} {DOSE} and {DRUG2}. No complications during admission.",
        "{AE} secondary to {DRUG}; {DRUG} withheld and bloods to be repeated in {DAYS} days.",
        "Denies {NEG} on the current dose of {DRUG}.",
    ),
    "portal_message": (
        "Message to Dr {LAST}: the {DRUG} is giving me {AES}. Should I keep taking it?",
        "Voicemail: hi, it's {PERSON}, I'm on {DRUG} and {AECL}, please call me back.",
        "Refill request for {DRUG} and {DRUG2} please. All going well, no {NEG}.",
        "Since the {DRUG} I have {AE} and {AECL}. What should I do?",
    ),
    "review": (
        "{STARS}/5. {DRUG} helped my {COND} but {AECL}.",
        "{STARS} stars for {DRUG}. Some {AE} at first, gone now.",
        "{DRUG} did nothing for me except {AE}. Switched to {DRUG2}.",
        "{DRUG} worked well. I was warned about {HYP} but never had it.",
    ),
    # Texts that name no drug, effect, illness or procedure (routine messages, negated-only
    # check-ins): the answer is []. Without them an adapter never learns to answer [] and labels
    # something in every text ("Nothing to report today." -> "today" as a DRUG). NEUTRAL
    # sentences count as content here, so the texts differ by more than their filler.
    "no_mention": (
        "Nothing new to report this week. {NEUTRAL}",
        "Hi, could I move my review {DAYS} days later? {NEUTRAL}",
        "Thanks for the call yesterday. {NEUTRAL} {NEUTRAL}",
        "Just checking in: no {NEG} and no {NEG2} so far. {NEUTRAL}",
        "Routine review, all stable. Denies {NEG}.",
        "{NEUTRAL} {NEUTRAL} That is all for now.",
        "Feeling well today. {NEUTRAL}",
        "Is the clinic open over the holidays? {NEUTRAL}",
        "Please call me back on {PHONE} about my appointment. {NEUTRAL}",
        "Follow-up in {DAYS} days. No new complaints.",
    ),
}

EN_KINDS = tuple(EN_TEMPLATES)

# How often a style writes an effect in lay words instead of the pages' (clinical) term.
LAY_SHARE: dict[str, float] = {
    "ae_email": 0.5,
    "short_email": 0.6,
    "long_email": 0.6,
    "clinical_note": 0.1,
    "forum_post": 0.8,
    "social_post": 0.9,
    "call_transcript": 0.7,
    "pharmacist_note": 0.4,
    "hcp_narrative": 0.2,
    "discharge_sentence": 0.0,
    "portal_message": 0.7,
    "review": 0.8,
}

# Relatives and the pronoun that goes with each.
PRONOUNS = {
    "mother": "she",
    "wife": "she",
    "daughter": "she",
    "father": "he",
    "husband": "he",
    "son": "he",
}

# Styles written about someone else: no lay wording in the first person ("in my chest").
THIRD_PERSON = {"clinical_note", "pharmacist_note", "hcp_narrative", "discharge_sentence"}

# Styles where people mistype a drug or write it in lower case.
INFORMAL = {"short_email", "forum_post", "social_post", "portal_message", "review"}
