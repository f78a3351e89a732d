"""Hand-written gold documents shared by the tests that train a tiny LoRA with `finetune`."""

from __future__ import annotations

LABELS = ["DRUG", "ADVERSE_EVENT"]

# (text, [(entity string, label), ...]): every string occurs in its text.
GOLD = [
    (
        "After starting aspirin I had a headache.",
        [("aspirin", "DRUG"), ("headache", "ADVERSE_EVENT")],
    ),
    (
        "Metformin gave me diarrhoea and nausea.",
        [("Metformin", "DRUG"), ("diarrhoea", "ADVERSE_EVENT"), ("nausea", "ADVERSE_EVENT")],
    ),
    ("Ibuprofen caused a rash on my arm.", [("Ibuprofen", "DRUG"), ("rash", "ADVERSE_EVENT")]),
    ("Abilify made me dizzy.", [("Abilify", "DRUG"), ("dizzy", "ADVERSE_EVENT")]),
    ("Lisinopril gave her a dry cough.", [("Lisinopril", "DRUG"), ("dry cough", "ADVERSE_EVENT")]),
    ("I felt tired after taking Zoloft.", [("tired", "ADVERSE_EVENT"), ("Zoloft", "DRUG")]),
]
VOCAB_TEXTS = [
    *(text for text, _ in GOLD),
    "Extract the medical entities from the user's text.",
    "Labels: DRUG: a medicine or active substance, by brand or generic name",
    "ADVERSE_EVENT: an unwanted effect or reaction that follows the use of a drug",
    "Answer with a JSON list of objects in order of appearance, copying each entity's text "
    "exactly as it is written. Answer [] if there is none.",
]
