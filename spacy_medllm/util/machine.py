"""The machine a result was measured on: CPU, native bfloat16, threads, library versions."""

from __future__ import annotations

import os
import platform
from typing import Any


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512-BF16), as torch sees it."""
    import torch

    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, name, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # pragma: no cover - private torch helpers may change
            continue
    return False


def machine_info() -> dict[str, Any]:
    """CPU count, torch threads and library versions (torch only if importable)."""
    from importlib import metadata

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_available"] = len(os.sched_getaffinity(0))
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
        info["cpu_bf16"] = cpu_supports_bf16()
    except ImportError:
        info["torch_threads"] = None
    for package in ("torch", "transformers", "spacy", "peft", "seqeval", "bert-score"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info
