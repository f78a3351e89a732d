"""medspaCy's ConText after `medllm_ner`: the `medllm_context` factory and `add_context`.

ConText reads `doc.ents` (or a span group), finds cue phrases ("denies", "history of", "if",
"mother") and sets medspaCy's attributes on the entities in their scope: `ent._.is_negated`,
`is_hypothetical`, `is_historical`, `is_family`, `is_uncertain` (`clinical.entities.status_of`
reads them as one status). It works on any component that sets entities, so it composes with
`medllm_ner` as with spaCy's NER.

- `nlp.add_pipe("medspacy_context")` (after `import medspacy`): medspaCy's own component and
  rules, unchanged.
- `nlp.add_pipe("medllm_context")`: the same medspaCy `ConText` object built with the "medllm"
  rules (`clinical.rules`: drug-aware, more past and hypothetical cues); `rules = "medspacy"`
  gives medspaCy's default rules. A saved pipeline rebuilds the rules from this config, so they
  survive `nlp.to_disk` (rules added to `medspacy_context` by hand do not).
- `add_context(nlp)` adds a sentencizer first when nothing in the pipeline sets sentence
  boundaries (ConText's scope is the sentence) and then the ConText component.

medspaCy (`pip install medspacy`, see docs/clinical.md for installing it next to spaCy 3.8) is
imported when the component is built, not when this module is imported. Its rules ship inside
the package: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spacy.language import Language

from spacy_medllm.clinical.entities import register_assertion_attributes
from spacy_medllm.clinical.rules import RULE_SETS, build_rules

CONTEXT_FACTORY = "medllm_context"

# Components that set sentence boundaries themselves (their factories assign these).
_SENTENCE_ASSIGNS = ("token.is_sent_start", "doc.sents")


@Language.factory(
    CONTEXT_FACTORY,
    default_config={
        "rules": "medllm",
        "drug_labels": ["DRUG"],
        "input_span_type": "ents",
        "span_group_name": "medspacy_spans",
        "max_scope": None,
        "allowed_types": None,
        "excluded_types": None,
    },
    assigns=[
        "span._.is_negated",
        "span._.is_hypothetical",
        "span._.is_historical",
        "span._.is_family",
        "span._.is_uncertain",
    ],
    requires=["token.is_sent_start"],
)
def make_medllm_context(
    nlp: Language,
    name: str,
    rules: str,
    drug_labels: list[str],
    input_span_type: str,
    span_group_name: str,
    max_scope: int | None,
    allowed_types: list[str] | None,
    excluded_types: list[str] | None,
) -> Any:
    """medspaCy's ConText with the "medllm" rules (or medspaCy's, `rules = "medspacy"`)."""
    if rules not in RULE_SETS:
        raise ValueError(f"medllm_context: rules must be one of {', '.join(RULE_SETS)}")
    from medspacy.context import ConText

    register_assertion_attributes()
    context = ConText(
        nlp,
        name=name,
        rules=None,
        input_span_type=input_span_type,
        span_group_name=span_group_name,
        max_scope=max_scope,
        allowed_types=set(allowed_types) if allowed_types else None,
        excluded_types=set(excluded_types) if excluded_types else None,
    )
    context.add(build_rules(rules, [label.upper() for label in drug_labels], nlp.lang))
    return context


def sets_sentences(nlp: Language) -> bool:
    """Whether a component of the pipeline sets sentence starts."""
    for name in nlp.pipe_names:
        meta = nlp.get_pipe_meta(name)
        if any(assigned in _SENTENCE_ASSIGNS for assigned in meta.assigns):
            return True
        if meta.factory in ("sentencizer", "senter", "parser", "medspacy_pyrush"):
            return True
    return False


def add_context(
    nlp: Language,
    rules: str = "medllm",
    *,
    name: str = "context",
    after: str | None = None,
    drug_labels: Sequence[str] = ("DRUG",),
    spans_key: str | None = None,
    config: dict[str, Any] | None = None,
) -> Any:
    """Add ConText to `nlp` (at the end, or right after `after`), with a sentencizer before it
    when nothing sets sentence boundaries. `rules`: "medllm" (the `medllm_context` factory) or
    "medspacy" (medspaCy's own `medspacy_context` and rules). `spans_key`: read the entities
    from `doc.spans[spans_key]` instead of `doc.ents` (medllm_ner with output = "spans").
    Returns the ConText component."""
    if rules not in RULE_SETS:
        raise ValueError(f"rules must be one of {', '.join(RULE_SETS)}, not {rules!r}")
    settings: dict[str, Any] = dict(config or {})
    if spans_key is not None:
        settings.update({"input_span_type": "group", "span_group_name": spans_key})
    placement: dict[str, Any] = {"after": after} if after is not None else {}
    if not sets_sentences(nlp):
        nlp.add_pipe("sentencizer", name=f"{name}_sentencizer", **placement)
        placement = {"after": f"{name}_sentencizer"}
    if rules == "medspacy":
        import medspacy  # noqa: F401  (registers medspacy_context)

        register_assertion_attributes()
        return nlp.add_pipe("medspacy_context", name=name, config=settings, **placement)
    settings.setdefault("drug_labels", list(drug_labels))
    return nlp.add_pipe(CONTEXT_FACTORY, name=name, config=settings, **placement)
