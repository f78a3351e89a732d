"""Batches for fine-tuning: padding per batch, the shared prompt head, the loss on answer tokens,
and the Trainer that feeds them (a reproducible length-grouped order).

`PaddingCollator` pads each batch to its longest record (after the prompt head every row shares,
when `share_prefix` is on); `completion_loss` is the cross-entropy over the answer tokens only,
computed from logits kept from the first answer position on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from spacy_medllm.generators.hf.decoding import common_prefix_length
from spacy_medllm.generators.hf.loading import cache_keyword, forward_parameters
from spacy_medllm.training.records import (
    IGNORE_INDEX,
)


class PaddingCollator:
    """Pads a batch of records to its longest one (right padding): pad ids, mask 0, labels -100.

    trim_logits: also pass `logits_to_keep` so that the model computes output logits only for
    the positions that can carry a loss (from the earliest answer token of the batch on), and cut
    the labels to match. The loss is the same; the prompt positions' vocabulary projection and
    softmax (most of the sequence, 49k-wide for SmolLM2) are skipped.

    share_prefix: when every record of the batch starts with the same tokens (the system prompt and
    the chat template up to the user's text: about 40% of a seed e-mail record), at least
    MIN_SHARED_PREFIX of them and all before the first answer token, cut them off into
    `prefix_input_ids` (1 x P). `input_ids` and `labels` then hold the rest of each row, while
    `attention_mask` still covers prefix + rest, so token counts are unchanged. The Trainer runs the
    prefix once, repeats its key/value cache over the rows, and runs the rest on top
    (`_trainer_class`); the loss and the gradients are those of the full batch, for a fraction of
    the prompt's compute.
    """

    MIN_SHARED_PREFIX = 16

    def __init__(
        self,
        pad_token_id: int,
        pad_to_multiple_of: int | None = None,
        trim_logits: bool = False,
        share_prefix: bool = False,
    ) -> None:
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.trim_logits = trim_logits
        self.share_prefix = share_prefix

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            step = self.pad_to_multiple_of
            width = (width + step - 1) // step * step
        input_ids, attention_mask, labels = [], [], []
        first_answer = width
        for feature in features:
            ids = list(feature["input_ids"])
            pad = width - len(ids)
            input_ids.append(ids + [self.pad_token_id] * pad)
            attention_mask.append([1] * len(ids) + [0] * pad)
            row = list(feature["labels"])
            labels.append(row + [IGNORE_INDEX] * pad)
            first_answer = min(
                first_answer, next((i for i, x in enumerate(row) if x != IGNORE_INDEX), width)
            )
        batch = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
        shared = self._shared_length(features, first_answer) if self.share_prefix else 0
        if shared:
            batch["prefix_input_ids"] = batch["input_ids"][:1, :shared]
            batch["input_ids"] = batch["input_ids"][:, shared:]
            batch["labels"] = batch["labels"][:, shared:]
            width -= shared
            first_answer -= shared
        if self.trim_logits:
            # Logits at position t predict token t + 1: keep them from the position before the
            # first answer token. The loss shifts labels by one within what is kept.
            keep = max(1, width - max(first_answer - 1, 0))
            batch["labels"] = batch["labels"][:, width - keep :]
            batch["logits_to_keep"] = keep
        return batch

    def _shared_length(self, features: Sequence[Mapping[str, Any]], first_answer: int) -> int:
        """Leading tokens all rows share, ending before the position whose logits predict the
        first answer token (its label, and every later one, stays with the rows); 0 if fewer
        than MIN_SHARED_PREFIX or a single row."""
        if len(features) < 2:
            return 0
        first = list(features[0]["input_ids"])
        # Every row keeps at least one token of its own.
        shared = min(first_answer - 1, min(len(f["input_ids"]) for f in features) - 1)
        for feature in features[1:]:
            shared = common_prefix_length(first[:shared], feature["input_ids"])
        return shared if shared >= self.MIN_SHARED_PREFIX else 0


def prefix_cache_inputs(model: Any, prefix_ids: Any, rows: int) -> dict[str, Any]:
    """Run the batch's shared prefix (1 x P) once, with gradients, and return the keyword that
    hands its key/value cache, repeated over `rows` rows, to the forward pass of the rest.

    The repeat is a differentiable copy, so backpropagation sums the rows' gradients into the one
    prefix pass: the loss and the gradients equal those of running every row in full. Positions
    continue from P (right padding: every row's own tokens start right after the prefix).
    """
    keyword = cache_keyword(model)
    extra = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    output = model(input_ids=prefix_ids, use_cache=True, **extra)
    cache = getattr(output, "cache", None) or output.past_key_values
    if rows > 1:
        cache.batch_repeat_interleave(rows)
    return {keyword: cache, "use_cache": True}


def accepts_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in forward_parameters(model)


def completion_loss(
    model: Any, records: Sequence[Mapping[str, Any]], pad_token_id: int, batch_size: int = 8
) -> float:
    """Mean cross-entropy per answer token of `records` under `model` (no gradients)."""
    import torch

    collate = PaddingCollator(pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            batch = collate(records[start : start + batch_size])
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            ).logits.float()
            labels = batch["labels"][:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += float(loss)
            count += int((labels != IGNORE_INDEX).sum())
    if was_training:
        model.train()
    return total / count if count else float("nan")


def trainer_class() -> Any:
    """transformers' Trainer, with length grouping that is reproducible across a resume.

    Trainer's own LengthGroupedSampler draws its order from the global RNG, so after a resume
    that crosses an epoch boundary the batches differ from an uninterrupted run. Here each
    epoch's order is drawn from a generator seeded with data_seed + epoch (the Trainer calls
    set_epoch), as accelerate's seedable sampler does for plain random order; every process of a
    distributed run also gets the same order.
    """
    import torch
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
            super().__init__(batch_size, lengths=lengths)
            self.seed = seed
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
            return iter(indices)

    class MedLLMTrainer(Trainer):
        # Answer tokens a step divides its summed loss by (None: the step's own count). A fixed
        # number weighs every answer token of the run alike: with the step's own count, the
        # answers of a batch of short `[]` records (length grouping puts them together) weigh
        # several times what the same decision weighs in a batch of long answers, which teaches
        # a small model to answer `[]` on data with many texts without entities.
        answer_token_scale: float | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            prefix = inputs.pop("prefix_input_ids", None)
            if prefix is not None:
                inputs = {**inputs, **prefix_cache_inputs(model, prefix, len(inputs["input_ids"]))}
            if self.answer_token_scale is not None and model.training:
                num_items_in_batch = torch.tensor(self.answer_token_scale)
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            strategy = getattr(self.args, "train_sampling_strategy", None)
            grouped = (
                strategy == "group_by_length"
                if strategy is not None
                else getattr(self.args, "group_by_length", False)
            )
            if not grouped or dataset is None:
                return super()._get_train_sampler(train_dataset)
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                [len(item["input_ids"]) for item in dataset],
                seed,
            )

    return MedLLMTrainer
