"""An adapter made ready to ship: smaller weights, the prompt settings, a record, a checksum.

`package_adapter` copies a fine-tuning run's adapter to a folder that can go into a package or a
model repository: the LoRA weights in safetensors at a smaller dtype (bfloat16 halves them; they
are added to float32 base weights when merged, so the answers barely move, which
`tests/test_default_adapter.py` checks against the float32 adapter), `adapter_config.json` with
the base model named by reference, `prompt_template.json` (what `medllm_ner` needs to prompt as
the adapter was trained), the training record without its per-step log, and `SHA256SUMS`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from spacy_medllm.core.adapter_settings import PROMPT_TEMPLATE_FILE

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
RECORD = "training_record.json"
SUMS = "SHA256SUMS"
DTYPES = ("bfloat16", "float16", "float32")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_adapter(
    adapter: str | Path, output: str | Path, *, dtype: str = "bfloat16"
) -> dict[str, Any]:
    """Write the shippable copy of `adapter` (a run folder or its adapter/ folder) to `output`;
    returns {file: sha256} and the sizes. The same adapter always gives the same bytes."""
    import torch
    from safetensors.torch import load_file, save_file

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    source = Path(adapter)
    if (source / "adapter").is_dir():
        source = source / "adapter"
    for name in (WEIGHTS, CONFIG, PROMPT_TEMPLATE_FILE):
        if not (source / name).is_file():
            raise FileNotFoundError(f"{source} has no {name}: not a finished fine-tuning run")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(source / WEIGHTS))
    converted = {
        name: t.to(getattr(torch, dtype)).contiguous() for name, t in sorted(tensors.items())
    }
    save_file(converted, str(output / WEIGHTS), metadata={"format": "pt"})
    shutil.copyfile(source / CONFIG, output / CONFIG)
    shutil.copyfile(source / PROMPT_TEMPLATE_FILE, output / PROMPT_TEMPLATE_FILE)
    if (source / RECORD).is_file():
        record = json.loads((source / RECORD).read_text(encoding="utf8"))
        training = record.get("training", {})
        training.pop("log", None)  # the per-step log is long and says nothing a user needs
        record["packaged"] = {"dtype": dtype, "source_sha256": _sha256(source / WEIGHTS)}
        (output / RECORD).write_text(
            json.dumps(record, indent=2, ensure_ascii=False, sort_keys=True) + "\n",
            encoding="utf8",
        )
    files = sorted(p.name for p in output.iterdir() if p.is_file() and p.name not in (SUMS,))
    sums = {name: _sha256(output / name) for name in files if name != "MODEL_CARD.md"}
    (output / SUMS).write_text(
        "".join(f"{digest}  {name}\n" for name, digest in sums.items()), encoding="utf8"
    )
    return {
        "output": str(output),
        "dtype": dtype,
        "sha256": sums,
        "weights_bytes": (output / WEIGHTS).stat().st_size,
        "parameters": sum(t.numel() for t in converted.values()),
    }


def check_sums(folder: str | Path) -> list[str]:
    """The files of a packaged adapter whose sha256 differs from its SHA256SUMS (none: intact)."""
    folder = Path(folder)
    wrong = []
    for line in (folder / SUMS).read_text(encoding="utf8").splitlines():
        digest, _, name = line.partition("  ")
        if not (folder / name).is_file() or _sha256(folder / name) != digest:
            wrong.append(name)
    return wrong
