"""Fine-tuning: training data readers, prompt/completion records, LoRA training, resume, outputs.

The fast tests train a tiny random Llama built in the test; the slow test trains the packaged
SmolLM2-135M-Instruct for three steps.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import pytest

from spacy_medllm.cli import main as cli
from spacy_medllm.core.adapter_settings import load_prompt_settings
from spacy_medllm.core.examples import (
    SeedRecovery,
    deduplicate,
    filter_labels,
    make_example,
    read_docbin,
    read_examples,
    read_jsonl,
    read_seed_json,
    remove_shared,
    seed_answer_order,
    shared_inputs,
    split_example,
)
from spacy_medllm.core.labels import LabelSet
from spacy_medllm.core.prompts import PromptBuilder
from spacy_medllm.training.checkpoints import last_checkpoint
from spacy_medllm.training.collate import PaddingCollator, completion_loss, prefix_cache_inputs
from spacy_medllm.training.config import FinetuneConfig, resolve_bf16, validate_config
from spacy_medllm.training.examples import chunk_examples
from spacy_medllm.training.records import (
    IGNORE_INDEX,
    boundary_is_stable,
    build_records,
    records_sha256,
)
from spacy_medllm.training.trainer import finetune
from spacy_medllm.util.machine import cpu_supports_bf16
from tests.gold_examples import GOLD, LABELS, VOCAB_TEXTS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# peft reads the attribute that transformers 5 renamed; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")

ROOT = Path(__file__).resolve().parent.parent
SEED_TRAIN = ROOT / "corpus" / "seed_ae_emails" / "train.json"
SEED_TEST = ROOT / "corpus" / "seed_ae_emails" / "test.json"


def gold_example(text: str, pairs, index: int = 0):
    spans = [(text.index(s), text.index(s) + len(s), label) for s, label in pairs]
    return make_example(text, spans, id=f"gold:{index}")


@pytest.fixture(scope="module")
def examples():
    return [gold_example(text, pairs, i) for i, (text, pairs) in enumerate(GOLD)]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with a ChatML tokenizer trained on this module's texts."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from .tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(
        tmp_path_factory.mktemp("ft_tiny_lm"), VOCAB_TEXTS, max_position_embeddings=512, seed=0
    )


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_base: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_base))


def tiny_config(base: Path, output: Path, **overrides) -> FinetuneConfig:
    settings = dict(
        base_model=str(base),
        output_dir=str(output),
        labels=LABELS,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        learning_rate=1e-2,
        max_steps=4,
        per_device_train_batch_size=2,
        warmup_ratio=0.0,
        save_steps=2,
        logging_steps=1,
        max_length=512,
        # One thread: tiny matrices gain nothing from two, and a busy machine makes torch's
        # threads wait on each other.
        num_threads=1,
        bf16=False,
        progress=False,
    )
    settings.update(overrides)
    return FinetuneConfig(**settings)


def adapter_tensors(adapter_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


# -- readers ---------------------------------------------------------------------------------------


def test_read_jsonl_spans_and_checks(tmp_path: Path):
    path = tmp_path / "data.jsonl"
    lines = [
        {
            "id": 7,
            "text": "Aspirin gave me a headache.",
            "entities": [
                {"start": 18, "end": 26, "label": "ADVERSE_EVENT", "text": "headache"},
                {"start": 0, "end": 7, "label": "DRUG"},
            ],
        },
        {"text": "Nothing here.", "spans": []},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf8")
    examples = read_examples(path)
    assert [e["id"] for e in examples] == ["7", "data:2"]
    assert examples[0]["spans"] == [(0, 7, "DRUG"), (18, 26, "ADVERSE_EVENT")]
    assert examples[0]["answer_entities"] is None
    assert examples[1]["spans"] == []
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(
            {
                "text": "Aspirin",
                "entities": [{"start": 0, "end": 3, "label": "DRUG", "text": "Aspirin"}],
            }
        ),
        encoding="utf8",
    )
    with pytest.raises(ValueError, match="does not match"):
        read_jsonl(bad)
    bad.write_text(json.dumps({"text": "abc", "spans": [{"start": 1, "end": 9, "label": "X"}]}))
    with pytest.raises(ValueError, match="outside the text"):
        read_jsonl(bad)


def test_read_docbin(tmp_path: Path):
    import spacy
    from spacy.tokens import DocBin

    nlp = spacy.blank("en")
    doc = nlp("Abilify made me dizzy.")
    doc.ents = [doc.char_span(0, 7, "DRUG"), doc.char_span(16, 21, "ADVERSE_EVENT")]
    DocBin(docs=[doc, nlp("No entities.")]).to_disk(tmp_path / "train.spacy")
    examples = read_docbin(tmp_path / "train.spacy")
    assert examples[0]["text"] == "Abilify made me dizzy."
    assert examples[0]["spans"] == [(0, 7, "DRUG"), (16, 21, "ADVERSE_EVENT")]
    assert examples[1]["spans"] == []


def test_seed_answer_keeps_paraphrases_in_gold_order():
    text = "I take Xanax. Since then I feel very sleepy and I have headaches."
    gold = [
        ("Xanax", "DRUG"),
        ("headaches", "ADVERSE_EVENT"),
        ("drowsiness", "ADVERSE_EVENT"),
        ("sleepy", "ADVERSE_EVENT"),
    ]
    answer, spans, steps = seed_answer_order(text, gold)
    # Found strings by position; the paraphrase "drowsiness" stays right after "headaches",
    # the gold string listed before it.
    assert answer == [gold[0], gold[3], gold[1], gold[2]]
    assert steps == ["exact", "exact", "", "exact"]
    assert [text[s:e] for s, e, _ in spans] == ["Xanax", "sleepy", "headaches"]
    answer, spans, steps = seed_answer_order("xanax made me dizzy", [("Xanax", "DRUG")])
    assert steps == ["case_insensitive"] and spans == [(0, 5, "DRUG")]


def test_seed_reader_counts_dedup_and_leaks():
    recovery = SeedRecovery()
    train = read_seed_json(SEED_TRAIN, recovery=recovery)
    test = read_seed_json(SEED_TEST)
    assert len(train) == 700 and len(test) == 59
    assert recovery.n_strings == 2097
    assert recovery.exact + recovery.case_insensitive + recovery.unrecovered == 2097
    assert recovery.unrecovered == 317  # paraphrased gold strings: in the answer, without a span
    first = json.loads(json.loads(SEED_TRAIN.read_text())[0]["output"])
    assert train[0]["answer_entities"][0] == (first["drug_name"], "DRUG")
    assert {label for e in train for _, label in e["answer_entities"]} == set(LABELS)
    # Every gold string is answered, also the paraphrased ones.
    assert sum(len(e["answer_entities"]) for e in train) == 2097
    assert len(deduplicate(train)) == 682
    assert len(deduplicate(train + test)) == 735
    leaks = shared_inputs(train, test)
    assert len(leaks) == 6
    assert not shared_inputs(remove_shared(train, test), test)


def test_filter_labels(examples):
    kept, removed = filter_labels(examples, ["DRUG"])
    assert removed == sum(len(pairs) for _, pairs in GOLD) - len(GOLD)
    assert all(label == "DRUG" for e in kept for _, _, label in e["spans"])


# -- records ---------------------------------------------------------------------------------------


def test_record_prompt_ids_equal_inference_ids(examples, tiny_base, tiny_tokenizer):
    from spacy_medllm.generators.hf.generator import HFGenerator

    builder = PromptBuilder(LabelSet(LABELS))
    records = build_records(examples, builder, tiny_tokenizer)
    generator = HFGenerator(model=str(tiny_base))
    for example, record in zip(examples, records, strict=True):
        inference_ids = generator.encode_prompt(builder.messages(example["text"]))
        n = record["n_prompt_tokens"]
        assert record["input_ids"][:n] == inference_ids
        assert record["labels"][:n] == [IGNORE_INDEX] * n
        assert record["labels"][n:] == record["input_ids"][n:]
        assert all(label != IGNORE_INDEX for label in record["labels"][n:])
        # The completion is the canonical answer and the end-of-turn token, nothing else.
        answer = builder.answer_for_spans(example["text"], example["spans"])
        assert record["completion"] == answer + tiny_tokenizer.eos_token
        assert record["input_ids"][-1] == tiny_tokenizer.eos_token_id
        assert tiny_tokenizer.decode(record["input_ids"][n:], skip_special_tokens=True) == answer
        # No merge across the boundary: the prompt ends with a newline.
        assert boundary_is_stable(tiny_tokenizer, record)
    assert records_sha256(records) == records_sha256(
        build_records(examples, builder, tiny_tokenizer)
    )


def test_trimmed_logits_give_the_same_loss(examples, tiny_base, tiny_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    records = build_records(examples, PromptBuilder(LabelSet(LABELS)), tiny_tokenizer)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_base)).eval()
    pad = tiny_tokenizer.pad_token_id
    full = PaddingCollator(pad)(records[:4])
    trimmed = PaddingCollator(pad, trim_logits=True)(records[:4])
    keep = trimmed["logits_to_keep"]
    first_answer = min(r["n_prompt_tokens"] for r in records[:4])
    assert keep == full["input_ids"].shape[1] - first_answer + 1
    assert trimmed["labels"].shape[1] == keep
    assert int((trimmed["labels"] != IGNORE_INDEX).sum()) == int(
        (full["labels"] != IGNORE_INDEX).sum()
    )
    with torch.no_grad():
        loss_full = model(**full).loss
        out = model(**trimmed)
    assert out.logits.shape[1] == keep
    torch.testing.assert_close(out.loss, loss_full)


def test_a_shared_prefix_gives_the_same_loss_and_gradients(examples, tiny_base, tiny_tokenizer):
    """The prompt head a batch shares runs once; loss and LoRA gradients equal the full batch's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    records = build_records(examples, PromptBuilder(LabelSet(LABELS)), tiny_tokenizer)[:4]
    assert len({len(r["input_ids"]) for r in records}) > 1  # rows of different lengths: padding
    pad = tiny_tokenizer.pad_token_id
    full = PaddingCollator(pad, trim_logits=True)(records)
    split = PaddingCollator(pad, trim_logits=True, share_prefix=True)(records)
    prefix = split.pop("prefix_input_ids")
    shared = prefix.shape[1]
    assert PaddingCollator.MIN_SHARED_PREFIX <= shared < min(r["n_prompt_tokens"] for r in records)
    assert torch.equal(full["input_ids"][:, :shared], prefix.expand(len(records), -1))
    assert torch.equal(split["input_ids"], full["input_ids"][:, shared:])
    # The mask still covers prefix + rest: the Trainer's token count is unchanged.
    assert torch.equal(split["attention_mask"], full["attention_mask"])
    assert torch.equal(split["labels"], full["labels"])
    assert split["logits_to_keep"] == full["logits_to_keep"]

    # Random LoRA weights (B not zero), so that every adapter matrix gets a gradient.
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_base)), lora).train()

    def loss_and_gradients(batch, prefix_ids=None):
        model.zero_grad()
        inputs = dict(batch)
        if prefix_ids is not None:
            inputs.update(prefix_cache_inputs(model, prefix_ids, len(records)))
        loss = model(**inputs).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.detach(), grads

    loss_full, grads_full = loss_and_gradients(full)
    loss_split, grads_split = loss_and_gradients(split, prefix)
    torch.testing.assert_close(loss_split, loss_full)
    assert grads_full.keys() == grads_split.keys()
    for name, grad in grads_full.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads_split[name], grad, rtol=1e-4, atol=1e-6)


def test_no_shared_prefix_when_rows_differ_early_or_a_batch_has_one_row():
    collate = PaddingCollator(0, share_prefix=True)
    head = list(range(1, 21))
    rows = [
        {"input_ids": [*head, 30, 31, 32], "labels": [IGNORE_INDEX] * 21 + [31, 32]},
        {"input_ids": [*head, 40, 41], "labels": [IGNORE_INDEX] * 21 + [41]},
    ]
    batch = collate(rows)
    assert batch["prefix_input_ids"].tolist() == [head]
    assert "prefix_input_ids" not in collate(rows[:1])
    # The prefix stops before the position whose logits predict the first answer token.
    early = [
        {"input_ids": r["input_ids"], "labels": [IGNORE_INDEX] * 18 + r["input_ids"][18:]}
        for r in rows
    ]
    assert collate(early)["prefix_input_ids"].shape[1] == 17
    # Fewer than MIN_SHARED_PREFIX shared tokens: no split.
    differ = {"input_ids": [1, 2, 3, 77, *rows[1]["input_ids"][4:]], "labels": rows[1]["labels"]}
    assert "prefix_input_ids" not in collate([rows[0], differ])


def test_records_reject_labels_outside_the_label_set(examples, tiny_tokenizer):
    with pytest.raises(ValueError, match="not in the label set"):
        build_records(examples, PromptBuilder(LabelSet(["DRUG"])), tiny_tokenizer)


def test_seed_records_keep_the_gold_strings(tiny_tokenizer):
    example = make_example(
        "I take Xanax and feel sleepy.",
        [(7, 12, "DRUG")],
        [("Xanax", "DRUG"), ("drowsiness", "ADVERSE_EVENT")],
    )
    record = build_records([example], PromptBuilder(LabelSet(LABELS)), tiny_tokenizer)[0]
    assert json.loads(record["completion"][: -len(tiny_tokenizer.eos_token)]) == [
        {"text": "Xanax", "label": "DRUG"},
        {"text": "drowsiness", "label": "ADVERSE_EVENT"},
    ]


# -- validation ------------------------------------------------------------------------------------


def test_validate_config_refuses_4bit_and_bf16_without_cuda():
    with pytest.raises(ValueError, match=r"load_in_4bit.*CUDA"):
        validate_config(FinetuneConfig(load_in_4bit=True), cuda_available=False)
    with pytest.raises(ValueError, match="bf16"):
        validate_config(FinetuneConfig(bf16=True), cuda_available=False)
    # A CPU with native bfloat16 (AMX, AVX512-BF16) may train in bf16.
    validate_config(FinetuneConfig(bf16=True), cuda_available=False, cpu_bf16_supported=True)
    with pytest.raises(ValueError, match="bfloat16"):
        validate_config(FinetuneConfig(bf16=True), cuda_available=True, bf16_supported=False)
    with pytest.raises(ValueError, match="load_in_4bit"):
        validate_config(FinetuneConfig(load_in_4bit=True, device="cpu"), cuda_available=True)
    with pytest.raises(ValueError, match=r"lora_r.*\n- .*warmup_ratio"):
        validate_config(FinetuneConfig(lora_r=0, warmup_ratio=1.5), cuda_available=False)
    validate_config(FinetuneConfig(), cuda_available=False)
    validate_config(FinetuneConfig(load_in_4bit=True, bf16=True), cuda_available=True)


def test_bf16_default_follows_the_hardware():
    assert resolve_bf16(None, use_cuda=True, cuda_bf16=True, cpu_bf16=False)
    assert not resolve_bf16(None, use_cuda=True, cuda_bf16=False, cpu_bf16=True)
    assert resolve_bf16(None, use_cuda=False, cuda_bf16=False, cpu_bf16=True)
    assert not resolve_bf16(None, use_cuda=False, cuda_bf16=False, cpu_bf16=False)
    assert not resolve_bf16(False, use_cuda=True, cuda_bf16=True, cpu_bf16=True)


def test_finetune_validates_before_loading_anything(examples, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = FinetuneConfig(
        base_model=str(tmp_path / "no-such-model"), output_dir=str(tmp_path), load_in_4bit=True
    )
    with pytest.raises(ValueError, match="load_in_4bit"):
        finetune(config, examples)
    assert not (tmp_path / "checkpoints").exists()


# -- training --------------------------------------------------------------------------------------


def test_lora_training_lowers_the_loss_and_writes_a_safe_adapter(
    examples, tiny_base, tiny_tokenizer, tmp_path
):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    builder = PromptBuilder(LabelSet(LABELS))
    records = build_records(examples, builder, tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    torch.set_num_threads(1)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base))
    loss_before = completion_loss(base, records, pad)

    config = tiny_config(tiny_base, tmp_path / "run", max_steps=8, save_steps=4)
    adapter = finetune(config, examples)
    assert adapter == tmp_path / "run" / "adapter"

    # Outputs: safetensors, no pickles, the base model by reference, prompt and record files.
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    assert {"prompt_template.json", "training_record.json"} <= names
    assert not [p for p in adapter.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == config.base_model
    settings = load_prompt_settings(adapter)
    assert settings["labels"] == LABELS
    assert (
        PromptBuilder(
            LabelSet(settings["labels"], settings["label_definitions"]), settings["template"]
        ).fingerprint
        == builder.fingerprint
    )
    record = json.loads((adapter / "training_record.json").read_text())
    assert record["data"]["sha256"] == records_sha256(records)
    assert record["data"]["n_records"] == len(examples)
    assert record["training"]["global_step"] == 8
    assert record["training"]["train_tokens"] > 0 and record["training"]["tokens_per_second"] > 0
    assert record["training"]["final_loss"] is not None
    training_memory = record["training"]["memory"]
    # the loop's own block (the high-water mark on Linux), with figures a reader can use
    assert training_memory["method"] == (
        "vmhwm" if sys.platform.startswith("linux") else training_memory["method"]
    )
    assert training_memory["peak_rss_mib"] >= training_memory["end_rss_mib"] > 0
    assert record["versions"]["peft"] and record["versions"]["transformers"]
    assert record["seed"] == config.seed and record["settings"]["lora_r"] == 4
    assert [entry["step"] for entry in record["training"]["log"]] == list(range(1, 9))
    assert record["effective"]["shared_prefix"] is True

    # The adapter loads with peft, changes the outputs and lowers the loss on its data.
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_base)), str(adapter)
    )
    batch = torch.tensor([records[0]["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=batch).logits, tuned(input_ids=batch).logits)
    loss_after = completion_loss(tuned, records, pad)
    assert loss_after < loss_before - 0.5, (loss_before, loss_after)


def test_training_with_and_without_a_shared_prefix_agrees(examples, tiny_base, tmp_path):
    """The Trainer path of the shared prefix: same losses step by step, same tokens counted."""
    shared = finetune(tiny_config(tiny_base, tmp_path / "shared", max_steps=4), examples)
    plain = finetune(
        tiny_config(tiny_base, tmp_path / "plain", max_steps=4, share_prefix=False), examples
    )
    a = json.loads((shared / "training_record.json").read_text())
    b = json.loads((plain / "training_record.json").read_text())
    assert a["effective"]["shared_prefix"] is True and b["effective"]["shared_prefix"] is False
    assert a["training"]["train_tokens"] == b["training"]["train_tokens"] > 0
    losses_a = [entry["loss"] for entry in a["training"]["log"]]
    losses_b = [entry["loss"] for entry in b["training"]["log"]]
    assert len(losses_a) == 4
    assert losses_a == pytest.approx(losses_b, rel=1e-3)
    assert losses_a[-1] < losses_a[0]


def test_evaluation_loss_with_a_shared_prefix_is_the_full_batch_loss(
    examples, tiny_base, tiny_tokenizer, tmp_path
):
    """Evaluation batches go through the same shared-prefix path; their loss must not change."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train, held_out = examples[:4], examples[4:]
    adapter = finetune(tiny_config(tiny_base, tmp_path / "eval", max_steps=4), train, held_out)
    record = json.loads((adapter / "training_record.json").read_text())
    assert record["data"]["n_eval_records"] == len(held_out) >= 2
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_base)), str(adapter)
    )
    records = build_records(held_out, PromptBuilder(LabelSet(LABELS)), tiny_tokenizer)
    expected = completion_loss(tuned, records, tiny_tokenizer.pad_token_id)
    assert record["training"]["eval_loss"] == pytest.approx(expected, rel=1e-4)


def test_the_adapter_serves_inference(examples, tiny_base, tmp_path):
    from spacy_medllm.generators.hf.generator import HFGenerator

    adapter = finetune(tiny_config(tiny_base, tmp_path / "run", max_steps=2), examples)
    builder = PromptBuilder(LabelSet(LABELS))
    generator = HFGenerator(model=str(tiny_base), adapter=str(adapter), max_new_tokens=8)
    [response] = generator([builder.messages(examples[0]["text"])])
    assert isinstance(response, str)


def test_dora_and_rslora_adapters_train_save_and_merge_for_inference(
    examples, tiny_base, tiny_tokenizer, tmp_path
):
    """DoRA learns a magnitude vector per adapted weight; rsLoRA scales by alpha / sqrt(r). Both
    reach the adapter config, and the merged inference model computes what peft's model does."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from spacy_medllm.generators.hf.generator import HFGenerator

    config = tiny_config(tiny_base, tmp_path / "dora", max_steps=4, use_dora=True, use_rslora=True)
    adapter = finetune(config, examples)
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["use_dora"] is True and adapter_config["use_rslora"] is True
    tensors = adapter_tensors(adapter)
    magnitudes = [name for name in tensors if "lora_magnitude_vector" in name]
    assert magnitudes and len(magnitudes) == sum(".lora_A." in name for name in tensors)
    record = json.loads((adapter / "training_record.json").read_text())
    assert record["settings"]["use_dora"] is True and record["training"]["global_step"] == 4

    records = build_records(examples, PromptBuilder(LabelSet(LABELS)), tiny_tokenizer)
    batch = torch.tensor([records[0]["input_ids"]])
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_base)), str(adapter)
    ).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_base)).eval()
    generator = HFGenerator(
        model=str(tiny_base), adapter=str(adapter), dtype="float32", max_new_tokens=4
    )
    generator.initialize()
    with torch.no_grad():
        expected = tuned(input_ids=batch).logits
        merged = generator._model(input_ids=batch).logits
        assert not torch.allclose(expected, plain(input_ids=batch).logits, atol=1e-4)
    torch.testing.assert_close(merged, expected, atol=1e-4, rtol=1e-4)


def test_a_run_recorded_before_an_option_existed_is_still_up_to_date(examples, tiny_base, tmp_path):
    """A setting added later counts as its default when an older run's files lack it: the run is
    neither trained again nor refused for resuming."""
    config = tiny_config(tiny_base, tmp_path / "old", max_steps=2)
    adapter = finetune(config, examples)
    record_file = adapter / "training_record.json"
    record = json.loads(record_file.read_text())
    for key in ("use_dora", "use_rslora"):
        del record["settings"][key]
    record_file.write_text(json.dumps(record))
    before = (adapter / "adapter_model.safetensors").stat().st_mtime_ns
    assert finetune(config, examples) == adapter
    assert (adapter / "adapter_model.safetensors").stat().st_mtime_ns == before
    # A changed setting still makes it stale.
    dora = tiny_config(tiny_base, tmp_path / "old", max_steps=2, use_dora=True)
    assert finetune(dora, examples, resume=False) == adapter
    assert json.loads(record_file.read_text())["settings"]["use_dora"] is True


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bfloat16")
def test_bf16_on_a_cpu_with_native_bfloat16(examples, tiny_base, tmp_path):
    from transformers import TrainerCallback

    seen = set()

    class WatchDtype(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            layer = model.get_base_model().model.layers[0].self_attn.q_proj
            layer.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))

    adapter = finetune(
        tiny_config(tiny_base, tmp_path / "bf16", max_steps=2, bf16=None),
        examples,
        callbacks=[WatchDtype()],
    )
    record = json.loads((adapter / "training_record.json").read_text())
    assert record["effective"]["bf16"] is True
    import torch

    assert seen == {torch.bfloat16}  # autocast computes in bf16; the weights stay fp32
    assert {t.dtype for t in adapter_tensors(adapter).values()} == {torch.float32}


class _Interrupted(Exception):
    pass


def _interrupt_at(step: int):
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == step:  # the checkpoint of `step` has been saved
                raise _Interrupted

    return Interrupt()


def test_resume_continues_from_the_last_checkpoint(examples, tiny_base, tmp_path):
    output = tmp_path / "run"
    finetune(tiny_config(tiny_base, output, max_steps=4, save_steps=2), examples)
    assert last_checkpoint(output / "checkpoints").name == "checkpoint-4"
    adapter = finetune(tiny_config(tiny_base, output, max_steps=6, save_steps=2), examples)
    record = json.loads((adapter / "training_record.json").read_text())
    assert record["training"]["resumed_from"] == "checkpoint-4"
    assert record["training"]["global_step"] == 6
    # Only steps 5 and 6 ran in the second call.
    assert [entry["step"] for entry in record["training"]["log"]] == [5, 6]
    state = json.loads((output / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert record["training"]["session_tokens"] < record["training"]["train_tokens"]

    # Other settings cannot resume these checkpoints; resume=False starts over.
    changed = tiny_config(tiny_base, output, max_steps=6, learning_rate=1e-3)
    with pytest.raises(ValueError, match="learning_rate"):
        finetune(changed, examples)
    adapter = finetune(changed, examples, resume=False)
    record = json.loads((adapter / "training_record.json").read_text())
    assert record["training"]["resumed_from"] is None
    assert record["training"]["log"][0]["step"] == 1


def test_a_checkpoint_with_a_cut_state_file_is_not_resumed(tmp_path):
    # A kill while transformers writes trainer_state.json (not atomic) leaves a cut file: that
    # checkpoint is incomplete, deleted, and the one before it is resumed.
    folder = tmp_path / "checkpoints"
    for step in (2, 4):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}" / "trainer_state.json").write_text('{"global_step": 2}')
    (folder / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4, "log_hi')
    assert last_checkpoint(folder).name == "checkpoint-2"
    assert not (folder / "checkpoint-4").exists()


def test_a_finished_run_is_up_to_date_and_is_not_trained_again(examples, tiny_base, tmp_path):
    config = tiny_config(tiny_base, tmp_path / "run", max_steps=2)
    adapter = finetune(config, examples)
    weights = adapter / "adapter_model.safetensors"
    before = (weights.stat().st_mtime_ns, weights.read_bytes())
    record_before = json.loads((adapter / "training_record.json").read_text())

    # Same data and settings: nothing is trained or written.
    assert finetune(config, examples) == adapter
    assert (weights.stat().st_mtime_ns, weights.read_bytes()) == before
    assert json.loads((adapter / "training_record.json").read_text()) == record_before

    # Other data: not up to date (the checkpoints refuse to resume with other data).
    with pytest.raises(ValueError, match="other data or settings"):
        finetune(config, examples[:-1])
    # A longer run: trained further from the last checkpoint, and the adapter changes.
    longer = finetune(tiny_config(tiny_base, tmp_path / "run", max_steps=4), examples)
    record = json.loads((longer / "training_record.json").read_text())
    assert record["training"]["global_step"] == 4
    assert record["training"]["resumed_from"] == "checkpoint-2"
    assert weights.read_bytes() != before[1]


def test_last_checkpoint_skips_a_half_written_one(tmp_path):
    for step in (2, 4, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    # checkpoint-10 was interrupted before its trainer_state.json (written last) existed.
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert not (tmp_path / "checkpoint-10").exists()
    assert last_checkpoint(tmp_path / "missing") is None


def test_an_interrupted_run_resumes_to_the_same_adapter(examples, tiny_base, tmp_path):
    import torch

    config = tiny_config(tiny_base, tmp_path / "interrupted", max_steps=6, save_steps=2)
    with pytest.raises(_Interrupted):
        finetune(config, examples, callbacks=[_interrupt_at(4)])
    assert not (tmp_path / "interrupted" / "adapter").exists()
    resumed = finetune(config, examples)
    record = json.loads((resumed / "training_record.json").read_text())
    assert record["training"]["resumed_from"] == "checkpoint-4"
    straight = finetune(tiny_config(tiny_base, tmp_path / "straight", max_steps=6), examples)
    a, b = adapter_tensors(resumed), adapter_tensors(straight)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)


def test_command_line_with_top_layers_only(tiny_base, tmp_path):
    data = tmp_path / "train.jsonl"
    lines = []
    for text, pairs in GOLD * 2:  # repeats are dropped
        entities = [
            {"start": text.index(s), "end": text.index(s) + len(s), "label": label}
            for s, label in pairs
        ]
        lines.append(json.dumps({"text": text, "entities": entities}))
    data.write_text("\n".join(lines) + "\n", encoding="utf8")
    output = tmp_path / "cli"
    argv = [
        "finetune",
        "--train",
        str(data),
        "--output",
        str(output),
        "--base-model",
        str(tiny_base),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--lora-r",
        "2",
        "--lora-top-layers",
        "1",
        "--num-threads",
        "1",
        "--no-group-by-length",
        "--gradient-checkpointing",
    ]
    assert cli(argv) == 0
    adapter = output / "adapter"
    record = json.loads((adapter / "training_record.json").read_text())
    assert record["data"]["n_examples"] == len(GOLD)
    assert record["settings"]["labels"] == LABELS  # found in the data, in order
    assert record["effective"]["lora_layers"] == [1]
    assert record["settings"]["gradient_checkpointing"] is True
    layers = {name.split("layers.")[1].split(".")[0] for name in adapter_tensors(adapter)}
    assert layers == {"1"}


# -- training on pieces (max_chunk_tokens) -------------------------------------------------------


def long_gold_example(repeats: int = 2):
    """The gold sentences joined into one multi-sentence text, spans at their offsets."""
    text, spans = "", []
    for sentence, pairs in GOLD * repeats:
        start = len(text) + (1 if text else 0)
        text = f"{text} {sentence}" if text else sentence
        for string, label in pairs:
            at = start + sentence.index(string)
            spans.append((at, at + len(string), label))
    return make_example(text, spans, id="long")


def test_split_example_shifts_spans_and_joins_pieces_a_span_crosses():
    text = "Abilify made me dizzy. Metformin gave me nausea. Zoloft."
    spans = [(0, 7, "DRUG"), (23, 32, "DRUG"), (41, 47, "ADVERSE_EVENT"), (49, 55, "DRUG")]
    example = make_example(text, spans, id="e")
    pieces = split_example(example, [(0, 22), (23, 48), (49, 56)])
    assert [p["id"] for p in pieces] == ["e#0", "e#1", "e#2"]
    assert [p["text"] for p in pieces] == ["Abilify made me dizzy.", text[23:48], "Zoloft."]
    for piece in pieces:  # every span keeps its string in its piece
        assert {piece["text"][s:e] for s, e, _ in piece["spans"]} <= {
            "Abilify",
            "Metformin",
            "nausea",
            "Zoloft",
        }
    assert sum(len(p["spans"]) for p in pieces) == len(spans)
    # a boundary inside "Metformin" (23-32) joins the two pieces it would cut
    joined = split_example(example, [(0, 27), (28, 48), (49, 56)])
    assert [p["text"] for p in joined] == [text[0:48], "Zoloft."]
    assert [joined[0]["text"][s:e] for s, e, _ in joined[0]["spans"]] == [
        "Abilify",
        "Metformin",
        "nausea",
    ]
    # one range: the example itself, under its own id
    assert split_example(example, [(0, 56)]) == [example]
    # a span that no range covers means the ranges are wrong
    with pytest.raises(ValueError, match="fall outside"):
        split_example(example, [(0, 22)])


def test_string_answers_are_not_cut():
    example = make_example("Abilify made me dizzy. It hurt.", (), [("dizziness", "ADVERSE_EVENT")])
    with pytest.raises(ValueError, match="answer_entities"):
        split_example(example, [(0, 22), (23, 31)])
    assert split_example(example, [(0, 31)])[0]["answer_entities"] == [
        ("dizziness", "ADVERSE_EVENT")
    ]


@pytest.mark.parametrize("max_chunk_tokens", [20, 40])
def test_training_pieces_are_the_pieces_medllm_ner_prompts(
    tiny_base, tiny_tokenizer, max_chunk_tokens
):
    """Trained on pieces, read in pieces: the same text ranges, so the same prompts."""
    import spacy

    from spacy_medllm.pipeline.component import get_record

    example = long_gold_example()
    builder = PromptBuilder(LabelSet(LABELS))
    pieces = chunk_examples([example], builder, tiny_tokenizer, max_chunk_tokens)
    assert 1 < len(pieces) < 2 * len(GOLD)  # several sentences fit one piece, not all of them
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "medllm_ner",
        config={
            "labels": LABELS,
            "max_chunk_tokens": max_chunk_tokens,
            "save_io": True,
            "generator": {
                "@misc": "medllm.HFGenerator.v1",
                "model": str(tiny_base),
                "max_new_tokens": 4,
            },
        },
    )
    doc = nlp(example["text"])
    ranges = [(c["start"], c["end"]) for c in get_record(doc)["chunks"]]
    assert [example["text"][s:e] for s, e in ranges] == [p["text"] for p in pieces]
    # the same prompt messages, so (test above) the same prompt token ids
    assert [c["prompt"] for c in get_record(doc)["chunks"]] == [
        builder.messages(p["text"]) for p in pieces
    ]
    strings = [p["text"][s:e] for p in pieces for s, e, _ in p["spans"]]
    assert strings == [example["text"][s:e] for s, e, _ in example["spans"]]


def test_finetuning_on_pieces_records_them_and_the_pipeline_reads_in_pieces(
    examples, tiny_base, tmp_path
):
    from spacy_medllm.pipeline.assemble import build_pipeline

    adapter = finetune(
        tiny_config(tiny_base, tmp_path / "run", max_steps=2, max_chunk_tokens=12),
        [long_gold_example(), *examples],
    )
    record = json.loads((adapter / "training_record.json").read_text())
    assert record["settings"]["max_chunk_tokens"] == 12
    assert record["data"]["n_examples"] == 1 + len(examples)
    # the long text is cut; the one-sentence texts fit whole
    assert record["data"]["n_pieces"] > 1 + len(examples)
    assert load_prompt_settings(adapter)["max_chunk_tokens"] == 12
    pipe = build_pipeline(str(tiny_base), str(tmp_path / "run")).get_pipe("medllm_ner")
    assert pipe.max_chunk_tokens == 12
    pipe = build_pipeline(str(tiny_base), str(adapter), max_chunk_tokens=40).get_pipe("medllm_ner")
    assert pipe.max_chunk_tokens == 40
    # an adapter trained on whole texts leaves the pipeline reading whole texts
    whole = finetune(tiny_config(tiny_base, tmp_path / "whole", max_steps=1), examples)
    assert load_prompt_settings(whole)["max_chunk_tokens"] is None
    assert (
        build_pipeline(str(tiny_base), str(whole)).get_pipe("medllm_ner").max_chunk_tokens is None
    )


def test_command_line_max_chunk_tokens_zero_means_whole_texts(tmp_path, capsys):
    def setting(*extra):
        argv = ["finetune", "--train", "x.jsonl", "--output", str(tmp_path), "--show-config"]
        assert cli([*argv, *extra]) == 0
        return json.loads(capsys.readouterr().out)["max_chunk_tokens"]

    assert setting() is None
    assert setting("--max-chunk-tokens", "0") is None
    assert setting("--max-chunk-tokens", "96") == 96


@pytest.mark.parametrize("value", [0, -3, True, 2.5])
def test_max_chunk_tokens_must_be_a_positive_whole_number(value, tmp_path):
    config = FinetuneConfig(output_dir=str(tmp_path), max_chunk_tokens=value)
    with pytest.raises(ValueError, match="max_chunk_tokens"):
        validate_config(config, cuda_available=False, cpu_bf16_supported=False)


# -- the packaged model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_folder() -> Path:
    pytest.importorskip("torch")
    from spacy_medllm.generators.packaged import ModelNotAvailableError, resolve_base_model

    try:
        return Path(resolve_base_model("smollm2-135m-instruct"))
    except ModelNotAvailableError as err:
        pytest.skip(str(err))


@pytest.mark.slow
def test_smollm2_records_match_inference_tokens(smollm2_folder):
    from transformers import AutoTokenizer

    from spacy_medllm.generators.hf.generator import HFGenerator

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_folder))
    builder = PromptBuilder(LabelSet(LABELS))
    examples = read_seed_json(SEED_TRAIN)[:20]
    records = build_records(examples, builder, tokenizer)
    generator = HFGenerator(model="smollm2-135m-instruct")
    for example, record in zip(examples, records, strict=True):
        ids = generator.encode_prompt(builder.messages(example["text"]))
        assert record["input_ids"][: record["n_prompt_tokens"]] == ids
        assert boundary_is_stable(tokenizer, record)
        assert record["input_ids"][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.slow
def test_smollm2_three_lora_steps(smollm2_folder, tmp_path):
    examples = read_seed_json(SEED_TRAIN)[:8]
    config = FinetuneConfig(
        base_model="smollm2-135m-instruct",
        output_dir=str(tmp_path / "smollm2"),
        labels=LABELS,
        max_steps=3,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_steps=3,
        num_threads=2,
        progress=False,
    )
    start = time.perf_counter()
    adapter = finetune(config, examples)
    seconds = time.perf_counter() - start
    record = json.loads((adapter / "training_record.json").read_text())
    training = record["training"]
    print(
        f"\nSmolLM2-135M LoRA r=16 all-linear, batch 4: {training['tokens_per_second']:.0f} "
        f"tokens/s, {training['session_seconds']:.1f} s for 3 steps ({seconds:.1f} s in all), "
        f"losses {[round(e['loss'], 3) for e in training['log']]}"
    )
    assert training["global_step"] == 3
    assert (
        json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
        == "smollm2-135m-instruct"
    )
    assert record["base_model"]["source"]["alias"] == "smollm2-135m-instruct"


# -- the recipe for data as it comes: texts without entities, training length ------------------


def test_cap_empty_keeps_every_entity_text_and_a_share_of_the_empty_ones() -> None:
    from spacy_medllm.training.examples import cap_empty

    full = [gold_example(text, pairs, i) for i, (text, pairs) in enumerate(GOLD)]  # 6
    empty = [make_example(f"Nothing to report on day {i}.", id=f"e{i}") for i in range(30)]
    mixed = [x for pair in zip(full * 2, empty[:12], strict=True) for x in pair] + empty[12:]
    kept, stats = cap_empty(mixed, 1 / 3, seed=7)
    # empty / all <= 1/3: 6 empty texts next to 12 with entities
    assert stats == {
        "n_with_entities": 12,
        "n_empty": 30,
        "n_empty_kept": 6,
        "empty_share": 6 / 18,
        "max_empty_share": 1 / 3,
    }
    assert [e for e in kept if e["spans"]] == [e for e in mixed if e["spans"]]  # order kept
    again, _ = cap_empty(mixed, 1 / 3, seed=7)
    other, _ = cap_empty(mixed, 1 / 3, seed=8)
    assert again == kept and other != kept  # a hash of seed and text: repeatable, seed-dependent
    assert [e["id"] for e in kept] == [e["id"] for e in mixed if e in kept]
    everything, stats = cap_empty(mixed, None)
    assert everything == mixed and stats["n_empty_kept"] == 30
    assert cap_empty(empty, 0.33)[0] == []  # no entity anywhere: nothing to balance them with


@pytest.mark.parametrize(
    "n_records, epochs", [(676, 3.0), (800, 2.5), (2000, 1.0), (20_000, 1.0), (100, 3.0)]
)
def test_auto_epochs_scale_training_to_the_data(n_records, epochs) -> None:
    from spacy_medllm.training.config import auto_epochs

    assert auto_epochs(n_records) == epochs


def test_a_run_on_mostly_empty_texts_records_the_recipe(tiny_base, tmp_path, caplog) -> None:
    """Empty texts are capped, the epochs come from the data, an undefined label is named."""
    full = [gold_example(text, pairs, i) for i, (text, pairs) in enumerate(GOLD)]
    empty = [make_example(f"No side effects noted at visit {i}.", id=f"e{i}") for i in range(12)]
    config = tiny_config(
        tiny_base,
        tmp_path / "mostly_empty",
        max_steps=-1,
        num_train_epochs=None,
        labels=["DRUG", "ADVERSE_EVENT", "SIDE_NOTE"],
    )
    with caplog.at_level(logging.WARNING, logger="spacy_medllm"):
        adapter = finetune(config, full + empty)
    record = json.loads((adapter / "training_record.json").read_text())
    assert record["data"]["empty"]["n_empty"] == 12
    assert record["data"]["empty"]["n_empty_kept"] == 2  # 0.33 / 0.67 * 6 = 2.96 -> 2
    assert record["data"]["n_records"] == 8
    assert record["data"]["labels_without_definition"] == ["SIDE_NOTE"]
    assert "SIDE_NOTE" in caplog.text and "--label-definitions" in caplog.text
    # 8 records: auto epochs 3.0, batch 2 -> 12 steps
    assert record["settings"]["num_train_epochs"] == 3.0
    assert record["training"]["global_step"] == 12


def test_weighted_training_sources(tmp_path) -> None:
    from spacy_medllm.training.examples import load_training_examples, parse_source, weighted

    assert parse_source("a/b.jsonl") == (Path("a/b.jsonl"), 1.0)
    assert parse_source("a/b.jsonl@0.5") == (Path("a/b.jsonl"), 0.5)
    assert parse_source("me@home/b.jsonl") == (Path("me@home/b.jsonl"), 1.0)
    with pytest.raises(ValueError, match="positive"):
        parse_source("b.jsonl@-1")
    ten = [make_example(f"Text number {i}.", id=str(i)) for i in range(10)]
    assert len(weighted(ten, 2)) == 20 and len(weighted(ten, 0.3)) == 3
    half = weighted(ten, 1.5)
    assert len(half) == 15 and half[:10] == ten and set(map(id, half[10:])) <= set(map(id, ten))
    assert weighted(ten, 0.3) == weighted(ten, 0.3)  # deterministic
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(
        "".join(json.dumps({"text": f"A {i}.", "entities": []}) + "\n" for i in range(4))
    )
    second.write_text(
        "".join(json.dumps({"text": f"B {i}.", "entities": []}) + "\n" for i in range(10))
    )
    examples = load_training_examples([first, f"{second}@0.5", f"{first}@2"])
    assert len(examples) == 4 + 5 + 8


def test_run_normalization_weighs_every_answer_token_alike(
    examples, tiny_base, tiny_tokenizer, tmp_path
):
    """With loss_normalization "run" a step's loss is its summed answer-token loss divided by a
    fixed number, not by the step's own token count: a batch of short `[]` answers then weighs
    no more per token than a batch of long ones."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from spacy_medllm.training.collate import trainer_class

    builder = PromptBuilder(LabelSet(LABELS))
    records = build_records(examples[:3], builder, tiny_tokenizer)
    batch = PaddingCollator(tiny_tokenizer.pad_token_id)(records)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_base)).train()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = trainer_class()(model=model, args=args)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        summed = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)).float(),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        n_tokens = int((labels != IGNORE_INDEX).sum())
        own = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(n_tokens))
        trainer.answer_token_scale = 50.0
        fixed = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(n_tokens))
    assert torch.isclose(own, summed / n_tokens, rtol=1e-4)
    assert torch.isclose(fixed, summed / 50.0, rtol=1e-4)
