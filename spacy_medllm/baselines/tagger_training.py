"""Training `medllm_token_classifier`: a blank pipeline with the component on an encoder, fine-tuned
on gold (or silver) examples with transformers' Trainer, saved with `nlp.to_disk` (safetensors).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spacy.language import Language

from spacy_medllm.baselines.token_classifier import (
    DEFAULT_ENCODER,
    IGNORE_INDEX,
    TokenClassifierNER,
    _char_span,
    model_inputs,
)

logger = logging.getLogger("spacy_medllm")


def build_token_classifier_pipeline(
    labels: Sequence[str],
    *,
    base_model: str | Path = DEFAULT_ENCODER,
    lang: str = "en",
    seed: int = 0,
    **config: Any,
) -> Language:
    """`spacy.blank(lang)` with a `medllm_token_classifier` for `labels`: the base model loaded,
    its classification head initialised with `seed`. `config` goes to the component."""
    import spacy
    from transformers import set_seed

    nlp = spacy.blank(lang)
    component = nlp.add_pipe(
        "medllm_token_classifier",
        config={"model": str(base_model), "labels": list(labels), **config},
    )
    set_seed(seed)
    component.load_model()
    return nlp


def train_pipeline(
    nlp: Language,
    train_examples: Sequence[Mapping[str, Any]],
    *,
    component: str = "medllm_token_classifier",
    epochs: float = 3,
    max_steps: int | None = None,
    batch_size: int = 16,
    learning_rate: float = 5e-5,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.1,
    seed: int = 0,
    num_threads: int | None = None,
    freeze_embeddings: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the component's model on gold examples (`{"text", "spans"}`; spans snapped to the
    pipeline's tokens) with AdamW and a linear schedule with warm-up; fixed `seed` for the shuffle
    and dropout. Trains `epochs` passes over the windows, or `max_steps` steps if given.
    `freeze_embeddings` keeps the input word embeddings as they are: a multilingual encoder's
    vocabulary (multilingual-e5: 250k x 384, 80% of its weights) then costs no optimizer time or
    memory, and a few hundred documents cannot pull it away from what it learned. Returns a
    training record (sizes, steps, losses, seconds)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import (
        DataCollatorForTokenClassification,
        get_linear_schedule_with_warmup,
        set_seed,
    )

    from spacy_medllm.corpora.docs import AlignmentCounts, gold_doc

    if num_threads:
        torch.set_num_threads(num_threads)
    clf: TokenClassifierNER = nlp.get_pipe(component)
    clf._require_model()
    counts = AlignmentCounts()
    docs = [gold_doc(nlp.make_doc, dict(example), counts) for example in train_examples]
    windows = [w for doc in docs for w in clf.encode(doc, [_char_span(e) for e in doc.ents])]
    if not windows:
        raise ValueError("no training windows: the training set is empty")
    features = model_inputs(windows)
    set_seed(seed)
    loader = torch.utils.data.DataLoader(
        features,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=DataCollatorForTokenClassification(
            clf.tokenizer, label_pad_token_id=IGNORE_INDEX
        ),
        generator=torch.Generator().manual_seed(seed),
    )
    total_steps = max_steps if max_steps is not None else max(1, round(epochs * len(loader)))
    model = clf.model
    embeddings = model.get_input_embeddings()
    embeddings.requires_grad_(not freeze_embeddings)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=weight_decay)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, round(warmup_ratio * total_steps), total_steps
    )
    losses: list[float] = []
    epoch_losses: list[float] = []
    start = time.perf_counter()
    model.train()
    bar = tqdm(total=total_steps, desc=f"training {component}", unit="step", disable=not progress)
    step = 0
    try:
        while step < total_steps:
            epoch_sum, epoch_n = 0.0, 0
            for batch in loader:
                loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                value = loss.detach().item()
                losses.append(value)
                epoch_sum, epoch_n = epoch_sum + value, epoch_n + 1
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
                if step >= total_steps:
                    break
            epoch_losses.append(epoch_sum / max(epoch_n, 1))
    finally:
        bar.close()
        model.eval()
        embeddings.requires_grad_(True)
    seconds = time.perf_counter() - start
    n_labelled = sum(sum(1 for x in f["labels"] if x != IGNORE_INDEX) for f in features)
    return {
        "base_model": clf.base_model,
        "labels": list(clf.labels),
        "scheme": clf.scheme,
        "n_docs": len(docs),
        "n_windows": len(windows),
        "n_labelled_subwords": n_labelled,
        "n_subwords": sum(len(f["input_ids"]) for f in features),
        "alignment": counts.to_dict(),
        "max_length": clf.max_length,
        "stride": clf.stride,
        "epochs": epochs if max_steps is None else None,
        "steps": step,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "weight_decay": weight_decay,
        "warmup_ratio": warmup_ratio,
        "seed": seed,
        "freeze_embeddings": freeze_embeddings,
        "n_trainable_parameters": sum(p.numel() for p in trainable),
        "seconds": seconds,
        "loss_first_step": losses[0] if losses else None,
        "loss_last_step": losses[-1] if losses else None,
        "epoch_losses": epoch_losses,
        "torch_threads": torch.get_num_threads(),
    }


def train_token_classifier(
    train_examples: Sequence[Mapping[str, Any]],
    *,
    output: str | Path | None = None,
    base_model: str | Path = DEFAULT_ENCODER,
    labels: Sequence[str] | None = None,
    max_length: int = 256,
    stride: int = 64,
    scheme: str = "BILUO",
    lang: str = "en",
    seed: int = 0,
    trained_on: str | None = None,
    **training: Any,
) -> tuple[Language, dict[str, Any]]:
    """Build (`build_token_classifier_pipeline`), fine-tune (`train_pipeline`) and, with `output`,
    save a token-classifier pipeline; the training record goes to `nlp.meta["medllm_training"]`.
    `labels` default to those of the examples' spans (sorted)."""
    if labels is None:
        labels = sorted({label for example in train_examples for _, _, label in example["spans"]})
    nlp = build_token_classifier_pipeline(
        labels,
        base_model=base_model,
        lang=lang,
        seed=seed,
        max_length=max_length,
        stride=stride,
        scheme=scheme,
    )
    record = train_pipeline(nlp, train_examples, seed=seed, **training)
    record["trained_on"] = trained_on
    nlp.meta["name"] = "token_classifier"
    nlp.meta["medllm_training"] = record
    if output is not None:
        nlp.to_disk(output)
        logger.info("saved %s", output)
    return nlp, record
