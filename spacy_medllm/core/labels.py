"""Label sets: the default medical labels, their short definitions and the aliases models use."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

DEFAULT_LABEL_DEFINITIONS: dict[str, str] = {
    "DRUG": "a medicine or active substance, by brand or generic name",
    "ADVERSE_EVENT": "an unwanted effect or reaction that follows the use of a drug",
    "DISEASE": "a disease, disorder or diagnosis",
    "SYMPTOM": "a sign or symptom that is not described as caused by a drug",
    "PROCEDURE": "a medical test, examination, operation or therapy",
    "BODY_PART": "an organ, tissue or other part of the body",
    "DOSAGE": "an amount, strength, frequency or route of a drug",
}

DEFAULT_LABELS: list[str] = list(DEFAULT_LABEL_DEFINITIONS)

# Names small models (and other datasets) use for the default labels. Keys are normalised
# with `normalize_label_name`, so "adverse events", "Adverse-Event" and "ADE" all resolve.
DEFAULT_LABEL_ALIASES: dict[str, str] = {
    "DRUG_NAME": "DRUG",
    "DRUGS": "DRUG",
    "MEDICATION": "DRUG",
    "MEDICATIONS": "DRUG",
    "MEDICINE": "DRUG",
    "ADVERSE_EVENTS": "ADVERSE_EVENT",
    "ADVERSE_EFFECT": "ADVERSE_EVENT",
    "ADVERSE_EFFECTS": "ADVERSE_EVENT",
    "ADVERSE_REACTION": "ADVERSE_EVENT",
    "ADR": "ADVERSE_EVENT",
    "ADE": "ADVERSE_EVENT",
    "AE": "ADVERSE_EVENT",
    "SIDE_EFFECT": "ADVERSE_EVENT",
    "SIDE_EFFECTS": "ADVERSE_EVENT",
    "DISEASES": "DISEASE",
    "CONDITION": "DISEASE",
    "DISORDER": "DISEASE",
    "SYMPTOMS": "SYMPTOM",
    "PROCEDURES": "PROCEDURE",
    "BODYPART": "BODY_PART",
    "BODY_PARTS": "BODY_PART",
    "ANATOMY": "BODY_PART",
    "DOSE": "DOSAGE",
}

# The seed project's answer format {"drug_name": str, "adverse_events": [str]} maps by these
# aliases too ("DRUG_NAME" -> DRUG, "ADVERSE_EVENTS" -> ADVERSE_EVENT).
SEED_FORMAT_KEYS = ("drug_name", "adverse_events")


def normalize_label_name(name: str) -> str:
    """Upper-case a label name, words joined by "_" ("adverse events" -> "ADVERSE_EVENTS")."""
    return re.sub(r"[^0-9A-Z]+", "_", name.strip().upper()).strip("_")


class LabelSet:
    """The labels a component predicts, their definitions and how foreign names resolve to them."""

    def __init__(
        self,
        labels: Iterable[str],
        definitions: Mapping[str, str] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.labels: list[str] = []
        for label in labels:
            if not isinstance(label, str) or not label.strip():
                raise ValueError(f"Labels must be non-empty strings, got {label!r}")
            if label not in self.labels:
                self.labels.append(label)
        if not self.labels:
            raise ValueError("A medllm_ner component needs at least one label")
        definitions = dict(definitions or {})
        unknown = set(definitions) - set(self.labels)
        if unknown:
            raise ValueError(
                "Label definitions given for labels that are not in the label set: "
                f"{sorted(unknown)}. "
                f"Labels: {self.labels}"
            )
        self.definitions: dict[str, str] = {
            label: definitions.get(label, DEFAULT_LABEL_DEFINITIONS.get(label, ""))
            for label in self.labels
        }
        self._lookup: dict[str, str] = {}
        alias_table = dict(DEFAULT_LABEL_ALIASES)
        alias_table.update({normalize_label_name(k): v for k, v in (aliases or {}).items()})
        for alias, target in alias_table.items():
            if target in self.labels:
                self._lookup[normalize_label_name(alias)] = target
        for label in self.labels:
            self._lookup[normalize_label_name(label)] = label

    @property
    def undefined(self) -> list[str]:
        """The labels without a definition: the prompt gives them as a bare name."""
        return [label for label in self.labels if not self.definitions[label].strip()]

    def resolve(self, name: object) -> str | None:
        """Return the configured label a model's label name stands for, or None if it is unknown."""
        if not isinstance(name, str):
            return None
        key = normalize_label_name(name)
        if key in self._lookup:
            return self._lookup[key]
        if key.endswith("S") and key[:-1] in self._lookup:
            return self._lookup[key[:-1]]
        return None

    def __contains__(self, label: str) -> bool:
        return label in self.labels

    def __iter__(self):
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"LabelSet({self.labels!r})"
