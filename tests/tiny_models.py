"""Tiny random models for tests: a 2-layer Llama with a ChatML tokenizer, and a random LoRA adapter.

They are built in code in a few seconds, need no download, and load through the same code paths
as real models (`HFGenerator(model=str(folder))`). Same seed, same files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# SmolLM2-135M-Instruct's chat template, with a shorter default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Extra training text so that JSON answers and chat markers tokenize compactly.
_JSON_TEXTS = [
    '[{"text": "aspirin", "label": "DRUG"}, {"text": "headache", "label": "SYMPTOM"}]',
    '[]  {} [ ] { } : , " \\" \\n',
    "system user assistant\n",
]

PathLike = str | Path


def _build_tokenizer(vocab_texts: Iterable[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [*list(vocab_texts), *_JSON_TEXTS]
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_causal_lm(
    path: PathLike,
    vocab_texts: Iterable[str],
    max_position_embeddings: int = 256,
    seed: int = 0,
    vocab_size: int = 600,
    tie_word_embeddings: bool = False,
) -> Path:
    """Save a random 2-layer Llama (hidden 64) and a byte-level BPE ChatML tokenizer into `path`;
    `tie_word_embeddings` shares the output head with the input embeddings (as SmolLM2 does)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(vocab_texts, vocab_size)
    tokenizer.model_max_length = max_position_embeddings
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_position_embeddings,
        # Larger than the usual 0.02 so that random logits have clear winners: greedy decoding
        # then does not hinge on rounding noise.
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return path


def build_random_lora_adapter(
    base_path: PathLike, out_path: PathLike, r: int = 4, seed: int = 0
) -> Path:
    """Save a LoRA adapter with random (non-identity) weights on q_proj, v_proj of `base_path`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out_path = Path(out_path)
    base = AutoModelForCausalLM.from_pretrained(str(base_path), use_safetensors=True)
    config = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    model = get_peft_model(base, config)
    model.save_pretrained(str(out_path), safe_serialization=True)
    return out_path


def build_tiny_causal_lm_with_tokenizer(
    path: PathLike, tokenizer_folder: PathLike, seed: int = 0, max_position_embeddings: int = 1024
) -> Path:
    """A random 2-layer Llama (hidden 64, tied output head) with the tokenizer and chat template
    of `tokenizer_folder` (a real model's, e.g. SmolLM2's: llama.cpp's converter recognises its
    pre-tokenizer, which it refuses for a tokenizer trained in a test)."""
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = pad
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    template = Path(tokenizer_folder) / "chat_template.jinja"
    if template.is_file():
        shutil.copy2(template, path / "chat_template.jinja")
    return path


def overfit_config(
    base: PathLike, output_dir: PathLike, labels: Iterable[str], max_steps: int, batch_size: int,
    **extra,
):  # fmt: skip
    """FinetuneConfig that makes a tiny model learn a handful of gold answers by heart: rank-8
    LoRA on every linear layer, a high constant learning rate, fp32, one thread, no checkpoints
    or progress bars. `extra` sets or overrides any other field."""
    from spacy_medllm.training.config import FinetuneConfig

    settings = {
        "base_model": str(base),
        "output_dir": str(output_dir),
        "labels": list(labels),
        "lora_r": 8,
        "lora_alpha": 16,
        "target_modules": "all-linear",
        "learning_rate": 2e-2,
        "max_steps": max_steps,
        "per_device_train_batch_size": batch_size,
        "warmup_ratio": 0.0,
        "lr_scheduler_type": "constant",
        "save_steps": 1000,
        "max_length": 512,
        "num_threads": 1,
        "bf16": False,
        "progress": False,
        **extra,
    }
    return FinetuneConfig(**settings)
