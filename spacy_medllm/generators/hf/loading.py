"""Loading a causal LM for generation: adapters, dtypes, quantisation, the output head, stop ids.

Everything here imports torch, transformers and peft inside the functions that need them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

ADAPTER_DIR = "adapter"

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")

# Written by fine-tuning (spacy_medllm.training.checkpoints) next to the weights: copied along when
# present (provenance).
ADAPTER_EXTRA_FILES = ("prompt_template.json", "training_record.json")

DTYPES = ("auto", "float32", "bfloat16", "float16")

QUANTIZE_MODES = ("none", "int8")

# End-of-turn markers of common chat templates; generation also stops at those the vocab has.
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")

# Tokenizers without a real limit report a huge model_max_length; ignore values above this.
_SANE_MAX_LENGTH = 10_000_000


def validate_quantization(load_in_4bit: bool, cuda_available: bool, device: str = "auto") -> None:
    """Raise a clear ValueError when 4-bit loading is asked for where it cannot work.

    4-bit loading (bitsandbytes NF4) runs on CUDA GPUs only. `HFGenerator` calls this in
    `initialize()`, before any weights are read: finding out whether CUDA is available means
    importing torch, which building a generator must not do.
    """
    if not load_in_4bit:
        return
    fix = (
        "Set load_in_4bit = false (config: [components.<name>.generator] load_in_4bit = false, or "
        "HFGenerator(load_in_4bit=False)) to load the model in full precision instead."
    )
    if device == "cpu" or device.startswith("mps"):
        raise ValueError(f"load_in_4bit = true needs a CUDA GPU but device = {device!r}. {fix}")
    if not cuda_available:
        raise ValueError(
            "load_in_4bit = true needs a CUDA GPU and the bitsandbytes package, and no CUDA device "
            f"is available on this machine. {fix}"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(
            f"load_in_4bit = true needs the bitsandbytes package (pip install bitsandbytes). {fix}"
        )


def validate_int8(quantize: str, device: str, load_in_4bit: bool, merged: bool) -> None:
    """Raise a clear ValueError where int8 weights cannot work (before any weights are read).

    merged: False when a LoRA adapter would stay unmerged (merge_adapter = false)."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if quantize == "none":
        return
    if device != "cpu":
        raise ValueError(
            f"quantize = 'int8' runs on the CPU only (torch's dynamic int8 Linear kernels), but "
            f"the device is {device!r}. On a GPU use dtype = 'bfloat16' or load_in_4bit = true."
        )
    if load_in_4bit:
        raise ValueError("quantize = 'int8' and load_in_4bit = true exclude each other.")
    if not merged:
        raise ValueError(
            "quantize = 'int8' needs merge_adapter = true: the LoRA weights are folded into the "
            "base model before its Linear layers are quantized."
        )


def quantize_int8(model: Any) -> Any:
    """The model with every nn.Linear replaced by torch's dynamic int8 Linear (weights stored in
    int8 per output channel, activations quantized per batch on the fly).

    CPU decoding streams every weight from memory at each step, so a quarter of the bytes makes
    a step cheaper (training/reports/decode.md: a batch-8 step 98 instead of 240 ms). torch
    2.13 marks `torch.ao.quantization.quantize_dynamic` as deprecated in favour of torchao, but
    torchao 0.18's int8 configs ran a SmolLM2-sized MLP at 1.2x (weight-only) and 0.1x (dynamic
    activations) of float32's speed in eager mode on the 2-core AMD machine, so the torch API is
    used and its warning silenced. Answers change, and for a model as small as SmolLM2-135M far
    too much (seed e-mails: F1 0.533 instead of 0.860, README "Constrained decoding"): measure
    F1 before relying on it.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def check_adapter_dir(adapter: str | Path) -> Path:
    """The adapter folder if it holds a PEFT adapter in safetensors; a clear error otherwise."""
    path = Path(adapter).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"The LoRA adapter folder {str(path)!r} does not exist. Give a folder with "
            f"{' and '.join(ADAPTER_FILES)}, or adapter = null for the base model alone."
        )
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"The LoRA adapter folder {str(path)!r} has no adapter_config.json."
        )
    if not (path / "adapter_model.safetensors").is_file():
        if any(path.glob("adapter_model*.bin")):
            raise ValueError(
                f"The LoRA adapter in {str(path)!r} is saved as a pickle (adapter_model.bin), "
                "which is not loaded for safety. Save it again with safe_serialization=True."
            )
        raise FileNotFoundError(
            f"The LoRA adapter folder {str(path)!r} has no adapter_model.safetensors."
        )
    return path


def encode_prompt_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt: exactly what inference feeds the model, and training must.

    Chat templates usually write the BOS themselves (SmolLM2's BOS is `<|im_start|>`); then the
    tokenizer must not add special tokens again. Texts without the BOS (the plain template) get the
    tokenizer's own special tokens, as the model saw in pretraining.
    """
    bos = getattr(tokenizer, "bos_token", None)
    add_special_tokens = not (bos and bos in text)
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def float32_output_head(model: Any) -> Any:
    """Prepare the model's output head to compute the logits in float32; call the returned
    function after the model is cast to a lower precision (None: the head is not a plain Linear,
    e.g. a LoRA layer left unmerged).

    Greedy answers part where two tokens are nearly tied, and bfloat16 logits (8 bits of mantissa)
    break such ties by rounding: on the seed test e-mails bfloat16 weights alone cost 0.007 F1
    unconstrained and 0.045 grounded, while a float32 head on bfloat16 layers gave float32's F1 (see
    the README's "Generation speed"). The head is untied from the input embeddings (those
    are cast), keeps its weights as they are now (float32 when loaded so) and casts its input.
    """
    import torch

    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return None
    weight = head.weight.detach().to(torch.float32).clone()
    bias = None if head.bias is None else head.bias.detach().to(torch.float32).clone()

    def install() -> None:
        head.weight = torch.nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            head.bias = torch.nn.Parameter(bias, requires_grad=False)
        head.register_forward_pre_hook(lambda module, args: (args[0].to(torch.float32), *args[1:]))

    return install


def cache_keyword(model: Any) -> str:
    """The keyword a key/value cache goes to the model by: `cache` since transformers renamed
    `past_key_values`."""
    return "cache" if "cache" in forward_parameters(model) else "past_key_values"


def forward_parameters(model: Any) -> Any:
    """The parameters of the underlying transformers model's forward (through a distributed
    wrapper's `.module` and a peft model, whose own forward takes **kwargs)."""
    import inspect

    base = getattr(model, "module", model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return inspect.signature(type(base).forward).parameters


def find_stop_ids(tokenizer: Any, model: Any) -> list[int]:
    """The token ids generation stops at: the model's and tokenizer's end-of-sequence ids and the
    end-of-turn markers of common chat templates that the vocabulary has."""
    ids = set()
    for source in (
        getattr(model.generation_config, "eos_token_id", None),
        tokenizer.eos_token_id,
    ):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
    return sorted(ids)


def load_causal_lm(
    model_path: str,
    adapter: Path | None,
    *,
    device: str,
    dtype: Any,
    load_in_4bit: bool = False,
    merge_adapter: bool = True,
    float32_head: bool = True,
    quantize: str = "none",
    torch_compile: bool = False,
) -> Any:
    """The base model from `model_path` with the LoRA `adapter` (merged unless `merge_adapter` is
    False or the weights are 4-bit), on `device` in `dtype` (a torch dtype), ready for inference.

    `float32_head`: compute the logits with a float32 copy of the output head
    (`float32_output_head`); `quantize = "int8"`: int8 Linear weights (`quantize_int8`).
    """
    import torch
    from transformers import AutoModelForCausalLM

    # On the CPU the weights load in float32 and are cast once the adapter is merged: merging
    # into bfloat16 weights would round the small LoRA product away, and the output head
    # keeps the float32 values (see `float32_output_head`).
    cast_after_load = not load_in_4bit and device == "cpu" and dtype != torch.float32
    kwargs: dict[str, Any] = {
        "dtype": torch.float32 if cast_after_load else dtype,
        "use_safetensors": True,
        "trust_remote_code": False,
    }
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": torch.device(device)}
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if not load_in_4bit:
        model = model.to(device)
    if adapter is not None:
        from spacy_medllm.generators.packaged import quiet_optional_kernels

        quiet_optional_kernels()
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        if merge_adapter and not load_in_4bit:
            # Folding the LoRA product into the weights once saves two small matmuls per
            # adapted layer and token (about a quarter of CPU decoding time for SmolLM2).
            model = model.merge_and_unload()
    install_head = None
    if float32_head:
        install_head = float32_output_head(model)
    if cast_after_load:
        model = model.to(dtype)
    if install_head is not None:
        install_head()
    model.eval()
    if quantize == "int8":
        model = quantize_int8(model)
    if torch_compile:
        model.forward = torch.compile(model.forward, dynamic=True)
    return model


def model_context_length(config: Any, tokenizer: Any, name: str) -> int:
    """The context: max_position_embeddings, capped by a sane tokenizer model_max_length."""
    from spacy_medllm.generators.base import GenerationError

    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    context = None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            context = value
            break
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit <= _SANE_MAX_LENGTH:
        context = min(context, limit) if context else limit
    if context is None:
        raise GenerationError(f"Cannot tell the context length of {name!r}.")
    return context
