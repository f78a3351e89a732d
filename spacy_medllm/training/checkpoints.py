"""What a fine-tuning run leaves on disk: checkpoints to resume from, the adapter and its record.

`<output>/checkpoints/` holds Trainer checkpoints and `run.json` (what they were trained on,
checked on resume); `<output>/adapter/` the LoRA weights (safetensors), `prompt_template.json`
and `training_record.json`. `adapter_is_up_to_date` lets a rerun skip a finished run.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
from collections.abc import Mapping
from dataclasses import MISSING, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from spacy_medllm.core.adapter_settings import PROMPT_TEMPLATE_FILE
from spacy_medllm.core.labels import LabelSet
from spacy_medllm.core.prompts import PromptBuilder, PromptTemplate
from spacy_medllm.training.config import FinetuneConfig

logger = logging.getLogger("spacy_medllm")


CHECKPOINTS_DIR = "checkpoints"

ADAPTER_DIR = "adapter"

RUN_FILE = "run.json"

TRAINING_RECORD_FILE = "training_record.json"

# Settings that must not change when a run resumes from its checkpoints (the data too).
_RUN_KEYS = (
    "base_model",
    "labels",
    "label_definitions",
    "prompt_template",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "lora_layers",
    "use_dora",
    "use_rslora",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "warmup_ratio",
    "lr_scheduler_type",
    "weight_decay",
    "max_length",
    "seed",
    "load_in_4bit",
    "optim",
)


def _state_is_whole(path: Path) -> bool:
    """trainer_state.json exists and parses (transformers does not write it atomically: a kill
    while it is written leaves a cut file)."""
    try:
        return isinstance(json.loads(path.read_text(encoding="utf8")), dict)
    except (OSError, ValueError):
        return False


def last_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (its trainer_state.json is written last, and whole), or
    None.

    Incomplete checkpoints (a save interrupted half-way) are deleted.
    """
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for path in folder.glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    for _, path in sorted(found, reverse=True):
        if _state_is_whole(path / "trainer_state.json"):
            return path
        if is_main_process():
            logger.warning("Deleting the incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


def adapter_is_up_to_date(adapter_dir: Path, config: FinetuneConfig, data_sha256: str) -> bool:
    """True when `adapter_dir` holds a finished run with these data and settings.

    A finished run is one whose training record says it reached its last step; the settings
    compared are those that define the run (`_RUN_KEYS`) and its length (epochs, max_steps).
    """
    record_file = adapter_dir / TRAINING_RECORD_FILE
    if not (record_file.is_file() and (adapter_dir / "adapter_model.safetensors").is_file()):
        return False
    try:
        record = json.loads(record_file.read_text(encoding="utf8"))
        previous = record["settings"]
        training = record["training"]
        same_data = record["data"]["sha256"] == data_sha256
    except (KeyError, TypeError, ValueError):
        return False
    wanted = config.to_dict()
    keys = (*_RUN_KEYS, "num_train_epochs", "max_steps")
    same_settings = all(recorded(previous, key) == wanted[key] for key in keys)
    finished = training.get("global_step") is not None and training.get("global_step") >= (
        training.get("max_steps") or 0
    )
    return same_data and same_settings and finished


def recorded(settings: Mapping[str, Any], key: str) -> Any:
    """A setting as a run recorded it; a setting added after the run was recorded counts as its
    default (so a new option does not make every earlier run stale)."""
    if key in settings:
        return settings[key]
    default = next((f.default for f in fields(FinetuneConfig) if f.name == key), None)
    return None if default is MISSING else default


def run_identity(config: FinetuneConfig, data_sha256: str) -> dict[str, Any]:
    settings = config.to_dict()
    return {"data_sha256": data_sha256, **{key: settings[key] for key in _RUN_KEYS}}


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in (
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "safetensors",
        "tokenizers",
        "datasets",
        "bitsandbytes",
        "spacy",
        "spacy-medllm",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    if versions["spacy-medllm"] is None:
        from spacy_medllm.about import __version__

        versions["spacy-medllm"] = __version__
    return versions


def base_model_identity(reference: str, resolved: str) -> dict[str, Any]:
    """What the base model was: the reference, and for a local folder its name and source file."""
    folder = Path(resolved)
    info: dict[str, Any] = {"reference": reference}
    if folder.is_dir():
        info["folder_name"] = folder.name
        source = folder / "medllm_source.json"
        if source.is_file():
            info["source"] = json.loads(source.read_text(encoding="utf8"))
    else:
        info["hub_id"] = resolved
    return info


def save_adapter(
    model: Any,
    adapter_dir: Path,
    base_model: str,
    builder: PromptBuilder,
    label_set: LabelSet,
    template: PromptTemplate,
    record: Mapping[str, Any],
    max_chunk_tokens: int | None = None,
) -> None:
    """Write the adapter folder next to its final place, then swap it in."""
    tmp = adapter_dir.with_name(f".{adapter_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
    # Name the base model by the reference the user gave, not by a cache path. (Set only in the
    # saved file: peft looks the name up as a folder or a hub repo when it saves.)
    config_file = tmp / "adapter_config.json"
    adapter_config = json.loads(config_file.read_text(encoding="utf8"))
    adapter_config["base_model_name_or_path"] = base_model
    config_file.write_text(
        json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf8"
    )
    # peft's model card names the base model by its cache path and is boilerplate otherwise.
    (tmp / "README.md").unlink(missing_ok=True)
    prompt = {
        "labels": list(label_set.labels),
        "label_definitions": dict(label_set.definitions),
        "template": template.to_dict(),
        "prompt_fingerprint": builder.fingerprint,
        "max_chunk_tokens": max_chunk_tokens,
    }
    (tmp / PROMPT_TEMPLATE_FILE).write_text(
        json.dumps(prompt, indent=2, ensure_ascii=False) + "\n", encoding="utf8"
    )
    (tmp / TRAINING_RECORD_FILE).write_text(
        json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf8"
    )
    pickles = [p.name for p in tmp.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if pickles:
        raise RuntimeError(f"Refusing to publish an adapter with pickle files: {pickles}")
    if adapter_dir.exists():
        old = adapter_dir.with_name(f".{adapter_dir.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.rename(adapter_dir, old)
        os.rename(tmp, adapter_dir)
        shutil.rmtree(old)
    else:
        os.rename(tmp, adapter_dir)


def is_main_process() -> bool:
    """Rank 0 of a distributed launch (accelerate/torchrun set RANK), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0
