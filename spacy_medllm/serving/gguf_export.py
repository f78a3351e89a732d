"""Export a fine-tuned medllm model to GGUF for llama.cpp (and anything else that reads GGUF).

`export_gguf(source, output)` takes a saved `medllm_ner` pipeline, a fine-tuning output folder or
an adapter folder and writes, with llama.cpp's own converters (`tools.converter`) and
`llama-quantize`:

- `lora-f16.gguf`: the LoRA adapter for llama.cpp's `--lora` on the base model (and, on request,
  the base model itself as `base-f16.gguf`);
- `merged-f16.gguf`, `merged-q8_0.gguf` (and `merged-q4_k_m.gguf` on request): the base model
  with the adapter folded in, what `serve` serves by default;
- `medllm-serving.json`: what the component needs to prompt the served model exactly as it was
  trained (labels, definitions, prompt template, piece size), the files with their sha256 and
  sizes, the base model, and the llama.cpp version.

The merge is peft's `merge_and_unload` on the base model in float32 (the weights the adapter was
trained on: a packaged alias is its dequantised GGUF). Nothing is downloaded; no pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spacy_medllm.core.adapter_settings import PROMPT_TEMPLATE_FILE, load_prompt_settings
from spacy_medllm.serving.tools import binary, converter, run_tool, version

logger = logging.getLogger(__name__)

MANIFEST = "medllm-serving.json"
MERGED_TYPES = ("f16", "q8_0", "q4_k_m")
# convert_hf_to_gguf writes these itself; the others come from llama-quantize on the f16 file.
CONVERTER_TYPES = ("f16", "q8_0")


def find_adapter(source: str | Path) -> tuple[Path, str]:
    """(adapter folder, base model reference) of a pipeline folder, a fine-tuning output folder
    or an adapter folder."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a pipeline, run or adapter folder")
    candidates = [
        path,
        path / "adapter",
        *sorted(path.glob("*/generator/adapter")),  # a saved pipeline: <component>/generator
    ]
    for folder in candidates:
        if (folder / "adapter_config.json").is_file():
            return folder, _base_model(folder)
    raise FileNotFoundError(
        f"no LoRA adapter (adapter_config.json) in {path}, {path / 'adapter'} or a pipeline "
        "component's generator/adapter folder"
    )


def _base_model(adapter: Path) -> str:
    """The base model the adapter was trained on: the generator.json beside it (a pipeline),
    else the training record, else peft's adapter_config.json."""
    generator = adapter.parent / "generator.json"
    if generator.is_file():
        model = json.loads(generator.read_text(encoding="utf8")).get("model")
        if model:
            return str(model)
    record = adapter / "training_record.json"
    if record.is_file():
        base = json.loads(record.read_text(encoding="utf8")).get("base_model") or {}
        if base.get("reference"):
            return str(base["reference"])
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf8"))
    if config.get("base_model_name_or_path"):
        return str(config["base_model_name_or_path"])
    raise ValueError(f"{adapter}: the base model is not recorded; pass base_model")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def merge_adapter(base_folder: str, adapter: Path, target: Path) -> Path:
    """The base model with the LoRA folded in, saved as a Hugging Face folder (safetensors)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        base_folder, dtype=torch.float32, use_safetensors=True, trust_remote_code=False
    )
    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False).merge_and_unload()
    model.save_pretrained(target, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(base_folder, trust_remote_code=False)
    tokenizer.save_pretrained(target)
    # The chat template the component prompts with, also where older converters look for it.
    for name in ("chat_template.jinja", "generation_config.json"):
        if (Path(base_folder) / name).is_file() and not (target / name).exists():
            shutil.copy2(Path(base_folder) / name, target / name)
    return target


def export_gguf(
    source: str | Path,
    output: str | Path,
    *,
    types: Sequence[str] = ("f16", "q8_0"),
    lora: bool = True,
    base: bool = False,
    base_model: str | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Write the GGUF files of `source` (see the module docstring) into `output`; returns the
    manifest (also written as `medllm-serving.json`). `base`: also the base model as
    `base-f16.gguf`, for `--lora` (a packaged base model has its own GGUF already)."""
    from spacy_medllm.generators.packaged import resolve_base_model

    unknown = [t for t in types if t not in MERGED_TYPES]
    if unknown:
        raise ValueError(f"unknown GGUF types {unknown}; choose from {', '.join(MERGED_TYPES)}")
    adapter, recorded_base = find_adapter(source)
    base = base_model or recorded_base
    base_folder = resolve_base_model(base, cache_dir)
    if not (adapter / PROMPT_TEMPLATE_FILE).is_file():
        raise FileNotFoundError(
            f"{adapter} has no {PROMPT_TEMPLATE_FILE}: the prompt the adapter was trained with "
            "is unknown, so a served model could not be prompted the same way"
        )
    settings = load_prompt_settings(adapter)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "export.log"
    log.write_text("", encoding="utf8")
    files: dict[str, dict[str, Any]] = {}
    python = sys.executable
    start = time.perf_counter()

    if lora:
        target = out / "lora-f16.gguf"
        run_tool(
            [python, str(converter("convert_lora_to_gguf.py")), str(adapter), "--base",
             base_folder, "--outfile", str(target), "--outtype", "f16"],
            "convert_lora_to_gguf.py",
            log,
        )  # fmt: skip
        files["lora-f16"] = {"file": target.name, "kind": "lora", "type": "f16"}

    if base:
        target = out / "base-f16.gguf"
        run_tool(
            [python, str(converter("convert_hf_to_gguf.py")), base_folder, "--outfile",
             str(target), "--outtype", "f16"],
            "convert_hf_to_gguf.py (base model)",
            log,
        )  # fmt: skip
        files["base-f16"] = {"file": target.name, "kind": "base", "type": "f16"}

    if types:
        with tempfile.TemporaryDirectory(prefix="medllm-merged-") as tmp:
            merged = merge_adapter(base_folder, adapter, Path(tmp) / "merged")
            for kind in [t for t in types if t in CONVERTER_TYPES] or ["f16"]:
                target = out / f"merged-{kind}.gguf"
                run_tool(
                    [python, str(converter("convert_hf_to_gguf.py")), str(merged), "--outfile",
                     str(target), "--outtype", kind],
                    "convert_hf_to_gguf.py",
                    log,
                )  # fmt: skip
                files[f"merged-{kind}"] = {"file": target.name, "kind": "merged", "type": kind}
        for kind in [t for t in types if t not in CONVERTER_TYPES]:
            target = out / f"merged-{kind}.gguf"
            run_tool(
                [str(binary("llama-quantize")), str(out / "merged-f16.gguf"), str(target),
                 kind.upper()],
                "llama-quantize",
                log,
            )  # fmt: skip
            files[f"merged-{kind}"] = {"file": target.name, "kind": "merged", "type": kind}
        if "f16" not in types and "merged-f16" in files:
            (out / files.pop("merged-f16")["file"]).unlink()

    for entry in files.values():
        path = out / entry["file"]
        entry["bytes"] = path.stat().st_size
        entry["sha256"] = _sha256(path)
    template = settings["template"].to_dict()
    manifest = {
        "format": "spacy-medllm serving 1",
        "source": str(source),
        "adapter_sha256": _sha256(adapter / "adapter_model.safetensors"),
        "base_model": base,
        "labels": settings["labels"],
        "label_definitions": settings["label_definitions"],
        "prompt_template": template,
        "max_chunk_tokens": settings["max_chunk_tokens"],
        "files": files,
        "llama_cpp_python": version(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf8")
    # The prompt settings as the component reads them from an adapter folder.
    shutil.copy2(adapter / PROMPT_TEMPLATE_FILE, out / PROMPT_TEMPLATE_FILE)
    return manifest


def load_manifest(folder: str | Path) -> dict[str, Any]:
    """The `medllm-serving.json` of an export folder."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: export the model first (export-gguf)")
    return json.loads(path.read_text(encoding="utf8"))
