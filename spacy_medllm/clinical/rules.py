"""The "medllm" ConText rule set: medspaCy's English rules, made aware of drug entities.

medspaCy's default rules were written for findings ("no pneumonia"), and a cue reaches every
entity of its scope: in "No rash after the second course of amoxicillin" the drug is negated
too. The "medllm" set is medspaCy's own rules with these changes (docs/clinical.md has the
figures, and which sets each round looked at):

1. A negation, uncertainty or hypothetical cue modifies a drug only when at most three words
   stand between them and all are words like "the", "any", "taking", "on" (`DRUG_GAP_WORDS`):
   "denies taking any St John's wort", "declined the flu vaccine", but not "denies dizziness
   after increasing the amlodipine dose". Drug cues the defaults lack: "never taken", "not on",
   "refused", "was not given", "avoided" (negated); "consider", "plan to start", "could help"
   (hypothetical).
2. Cues the defaults lack: "did not develop", "nor" (negated); "monitor for", "watch for",
   "report", "may cause", "can make", "risk of" (the default rule's single-token pattern never
   matches), "in case of", "should", "warned about" (not of drugs), "whether", "unless"
   (hypothetical).
3. Past cues: "previously", "prior", "past", "used to", "years ago", "in 2019", "as a child",
   "in her twenties", "earlier this year", "last year" (historical).
4. Scope ends: a semicolon, "unlike" and "my own" end every cue's scope; "because" and "since"
   end negation, uncertainty and hypothetical cues only (in the defaults they end all cues, so
   "previously on citalopram, stopped because of weight gain" lost the history).
5. A cue inside a mention is no cue: "can't stop yawning" is not negated by its own "n't"
   (medspaCy 1.3's overlap test misses a cue strictly inside its target), nor "won't" in one
   mention a mention after it.

Rules are plain dicts here (medspaCy's rule format; "drugs": False keeps a finding rule off
drugs); `build_rules` turns them into medspaCy `ConTextRule`s, importing medspaCy only then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

NEGATED = "NEGATED_EXISTENCE"
POSSIBLE = "POSSIBLE_EXISTENCE"
HYPOTHETICAL = "HYPOTHETICAL"
HISTORICAL = "HISTORICAL"
TERMINATE = "TERMINATE"
# A boundary that ends negation, uncertainty and hypothetical cues but not history or family.
CAUSE_BOUNDARY = "CAUSE_BOUNDARY"

# Categories whose cues are about findings: they reach a drug only across `DRUG_GAP_WORDS`.
FINDING_CATEGORIES = (NEGATED, POSSIBLE, HYPOTHETICAL)

RULE_SETS = ("medllm", "medspacy")

# Words that may stand between a finding cue and a drug it modifies ("denies taking any X").
DRUG_GAP_WORDS = frozenset(
    "the a an any all his her their my your its regular further other more taking take took "
    "using use used on with of to receive received receiving start starting been being "
    "treatment therapy".split()
)
MAX_DRUG_GAP = 3

_NOT = {"LOWER": {"IN": ["not", "n't", "never"]}}


def _words(*words: str) -> dict[str, Any]:
    return {"LOWER": {"IN": list(words)}}


# Rules for drug entities only.
DRUG_RULES: list[dict[str, Any]] = [
    {
        "literal": "never taken",
        "category": NEGATED,
        "direction": "FORWARD",
        "pattern": [
            _NOT,
            _words(
                "taken",
                "took",
                "take",
                "taking",
                "used",
                "use",
                "using",
                "tried",
                "started",
                "received",
                "prescribed",
                "given",
            ),
        ],
    },
    {
        "literal": "never been on",
        "category": NEGATED,
        "direction": "FORWARD",
        "pattern": [_NOT, {"LOWER": "been", "OP": "?"}, {"LOWER": "on"}],
    },
    {
        "literal": "refused",
        "category": NEGATED,
        "direction": "FORWARD",
        "pattern": [_words("refuse", "refused", "refuses", "refusing")],
    },
    {
        "literal": "was not given",
        "category": NEGATED,
        "direction": "BACKWARD",
        "pattern": [
            _words("was", "were", "is", "are", "been", "be"),
            _NOT,
            _words("given", "used", "started", "prescribed", "taken", "received", "administered"),
        ],
    },
    {
        "literal": "avoided",
        "category": NEGATED,
        "direction": "BACKWARD",
        "pattern": [_words("avoided", "contraindicated")],
    },
    {
        "literal": "consider",
        "category": HYPOTHETICAL,
        "direction": "FORWARD",
        "pattern": [_words("consider", "considering", "considered")],
        "max_scope": 4,
    },
    {
        "literal": "plan to start",
        "category": HYPOTHETICAL,
        "direction": "FORWARD",
        "pattern": [
            _words("will", "to", "plan", ":", "could", "may", "might", "would"),
            _words("start", "begin", "try", "switch", "add", "trial"),
        ],
        "max_scope": 5,
    },
    {
        "literal": "could help",
        "category": HYPOTHETICAL,
        "direction": "BACKWARD",
        "pattern": [_words("could", "may", "might", "would"), _words("help", "work")],
    },
]

# Rules for findings; they reach drugs only across the gap words.
FINDING_RULES: list[dict[str, Any]] = [
    {
        "literal": "did not develop",
        "category": NEGATED,
        "direction": "FORWARD",
        "pattern": [
            _NOT,
            _words("develop", "developed", "experience", "experienced", "get", "got"),
        ],
    },
    {"literal": "nor", "category": NEGATED, "direction": "FORWARD", "pattern": None},
    {
        "literal": "monitor for",
        "category": HYPOTHETICAL,
        "direction": "FORWARD",
        "pattern": [
            _words("monitor", "monitoring", "watch", "look", "check"),
            {"LOWER": "out", "OP": "?"},
            {"LOWER": "for"},
        ],
    },
    {
        "literal": "report",
        "category": HYPOTHETICAL,
        "direction": "FORWARD",
        "pattern": [_words("report", "reporting")],
    },
    {
        "literal": "may cause",
        "category": HYPOTHETICAL,
        "direction": "FORWARD",
        "pattern": [
            _words("may", "can", "could", "might"),
            _words(
                "cause",
                "make",
                "experience",
                "develop",
                "lead",
                "raise",
                "trigger",
                "give",
                "induce",
                "produce",
                "result",
            ),
        ],
    },
    {
        "literal": "risk of",
        "category": HYPOTHETICAL,
        "direction": "FORWARD",
        "pattern": [_words("risk", "risks"), {"LOWER": "of"}],
    },
    {
        "literal": "in case of",
        "category": HYPOTHETICAL,
        "direction": "FORWARD",
        "pattern": [{"LOWER": "in"}, {"LOWER": "case"}],
    },
    {
        "literal": "should",
        "category": HYPOTHETICAL,
        "direction": "FORWARD",
        "pattern": [{"LOWER": "should"}],
    },
    {
        "literal": "warned about",
        "category": HYPOTHETICAL,
        "direction": "FORWARD",
        "pattern": [
            _words("warned", "warn", "warning", "cautioned"),
            _words("about", "of", "that"),
        ],
        "drugs": False,  # "warned that doxycycline can cause ...": about the effect, not the drug
    },
    {"literal": "whether", "category": HYPOTHETICAL, "direction": "FORWARD", "pattern": None},
    {"literal": "unless", "category": HYPOTHETICAL, "direction": "FORWARD", "pattern": None},
]

# Rules for every entity.
ALL_RULES: list[dict[str, Any]] = [
    {
        "literal": "previously",
        "category": HISTORICAL,
        "direction": "FORWARD",
        "pattern": [_words("previously", "previous", "prior", "past", "formerly", "remote")],
    },
    {
        "literal": "used to",
        "category": HISTORICAL,
        "direction": "FORWARD",
        "pattern": [{"LOWER": "used"}, {"LOWER": "to"}],
    },
    {
        "literal": "childhood",
        "category": HISTORICAL,
        "direction": "FORWARD",
        "pattern": [_words("childhood", "ex")],
    },
    {
        "literal": "in the past",
        "category": HISTORICAL,
        "direction": "BIDIRECTIONAL",
        "pattern": [{"LOWER": "in"}, {"LOWER": "the"}, {"LOWER": "past"}],
    },
    {
        "literal": "years ago",
        "category": HISTORICAL,
        "direction": "BIDIRECTIONAL",
        "pattern": [_words("years", "decades"), _words("ago", "earlier", "before")],
    },
    {
        "literal": "in 2019",
        "category": HISTORICAL,
        "direction": "BIDIRECTIONAL",
        "pattern": [_words("in", "until", "during"), {"SHAPE": "dddd"}],
    },
    {
        "literal": "as a child",
        "category": HISTORICAL,
        "direction": "BIDIRECTIONAL",
        "pattern": [
            {"LOWER": "as"},
            _words("a", "an"),
            _words("child", "teenager", "teen", "baby", "toddler", "student", "adolescent"),
        ],
    },
    {
        "literal": "in her twenties",
        "category": HISTORICAL,
        "direction": "BIDIRECTIONAL",
        "pattern": [
            {"LOWER": "in"},
            _words("his", "her", "my", "their", "your"),
            _words("teens", "twenties", "thirties", "forties", "fifties", "sixties", "youth"),
        ],
    },
    {
        "literal": "earlier this year",
        "category": HISTORICAL,
        "direction": "BIDIRECTIONAL",
        "pattern": [_words("earlier", "last"), {"LOWER": "this", "OP": "?"}, {"LOWER": "year"}],
    },
    {"literal": ";", "category": TERMINATE, "direction": "TERMINATE", "pattern": None},
    {"literal": "unlike", "category": TERMINATE, "direction": "TERMINATE", "pattern": None},
    {
        "literal": "my own",
        "category": TERMINATE,
        "direction": "TERMINATE",
        "pattern": [_words("my", "his", "her", "their", "your"), {"LOWER": "own"}],
    },
    {
        # Ends finding cues only (they list CAUSE_BOUNDARY in terminated_by); it modifies nothing.
        "literal": "because",
        "category": CAUSE_BOUNDARY,
        "direction": "FORWARD",
        "pattern": [_words("because", "since")],
        "allowed_types": {"__NONE__"},
        "max_scope": 1,
    },
]


def _inside_a_mention(target: Any, modifier: Any) -> bool:
    """Whether the cue's words belong to a mention: the target's own ("can't stop yawning":
    medspaCy's overlap test misses a cue strictly inside the target) or another entity's of the
    Doc (its entities and span groups)."""
    if modifier.start < target.end and target.start < modifier.end:
        return True
    doc = target.doc
    for group in (doc.ents, *doc.spans.values()):
        for span in group:
            if span.start <= modifier.start and modifier.end <= span.end:
                return True
    return False


def mention_check(target: Any, modifier: Any, _between: Any = None) -> bool:
    """An `on_modifies` callback for every rule: a cue inside a mention modifies nothing."""
    return not _inside_a_mention(target, modifier)


def drug_gap_check(drug_labels: Iterable[str]) -> Callable[[Any, Any, Any], bool]:
    """An `on_modifies` callback for finding cues: `mention_check`, and a drug entity is
    modified only across at most MAX_DRUG_GAP words, all of them DRUG_GAP_WORDS."""
    drugs = {label.upper() for label in drug_labels}

    def modifies(target: Any, modifier: Any, _between: Any) -> bool:
        if _inside_a_mention(target, modifier):
            return False
        if target.label_.upper() not in drugs:
            return True
        doc = target.doc
        if modifier.end <= target.start:
            gap = doc[modifier.end : target.start]
        else:
            gap = doc[target.end : modifier.start]
        words = [t.lower_ for t in gap if not t.is_punct]
        return len(gap) <= MAX_DRUG_GAP and all(w in DRUG_GAP_WORDS for w in words)

    return modifies


def build_rules(
    rule_set: str = "medllm", drug_labels: Sequence[str] = ("DRUG",), language: str = "en"
) -> list[Any]:
    """medspaCy `ConTextRule`s: its default rules for `language` ("medspacy"), or the "medllm"
    set (English only; see the module docstring)."""
    import medspacy  # noqa: F401  (registers medspaCy's extensions)
    from medspacy.context import ConTextRule

    if rule_set not in RULE_SETS:
        raise ValueError(f"rules must be one of {', '.join(RULE_SETS)}, not {rule_set!r}")
    defaults = ConTextRule.from_json(default_rules_path(language))
    if rule_set == "medspacy":
        return defaults
    if language != "en":
        raise ValueError('the "medllm" ConText rules are English; use rules = "medspacy"')
    drugs = [label.upper() for label in drug_labels]
    check = drug_gap_check(drugs)
    rules = []
    for rule in defaults:
        if rule.direction.upper() == "TERMINATE" and rule.literal == "because":
            continue  # replaced by the CAUSE_BOUNDARY rule
        if rule.category in FINDING_CATEGORIES and rule.direction.upper() != "TERMINATE":
            rule.on_modifies = check
            rule.terminated_by = set(rule.terminated_by or ()) | {CAUSE_BOUNDARY}
        elif rule.direction.upper() != "TERMINATE":
            rule.on_modifies = mention_check
        rules.append(rule)
    for spec in DRUG_RULES:
        rules.append(_rule(ConTextRule, spec, allowed_types=set(drugs), on_modifies=mention_check))
    for spec in FINDING_RULES:
        excluded = None if spec.get("drugs", True) else set(drugs)
        rule = _rule(ConTextRule, spec, on_modifies=check, excluded_types=excluded)
        rule.terminated_by = set(rule.terminated_by or ()) | {CAUSE_BOUNDARY}
        rules.append(rule)
    for spec in ALL_RULES:
        check_mentions = mention_check if spec["direction"] != "TERMINATE" else None
        rules.append(
            _rule(
                ConTextRule,
                spec,
                allowed_types=spec.get("allowed_types"),
                on_modifies=check_mentions,
            )
        )
    return rules


def _rule(rule_class: Any, spec: dict[str, Any], **extra: Any) -> Any:
    return rule_class(
        literal=spec["literal"],
        category=spec["category"],
        pattern=spec.get("pattern"),
        direction=spec["direction"],
        max_scope=spec.get("max_scope"),
        **extra,
    )


def default_rules_path(language: str = "en") -> str:
    """medspaCy's packaged ConText rules for a language (installed with medspaCy, offline)."""
    import medspacy

    root = Path(medspacy.__file__).resolve().parents[1]
    path = root / "resources" / language / "context_rules.json"
    if not path.is_file():
        raise OSError(f"medspaCy has no ConText rules for language {language!r} ({path})")
    return str(path)
