"""Where llama.cpp's tools are: the converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py)
and the binaries llama-server and llama-quantize that `scripts/install_llama_cpp_tools.sh`
installs into `<sys.prefix>/opt/llama.cpp`. `MEDLLM_LLAMA_CPP` points elsewhere (a folder with
`bin/` and `convert/`, e.g. a llama.cpp checkout built by hand)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ENV_VAR = "MEDLLM_LLAMA_CPP"
INSTALL_HINT = "install them with: bash scripts/install_llama_cpp_tools.sh .venv/bin/python"


class ToolsNotInstalledError(FileNotFoundError):
    """llama.cpp's converters or binaries are not installed."""


def tools_dir() -> Path:
    """The folder with llama.cpp's `bin/` and `convert/` (it may not exist)."""
    configured = os.environ.get(ENV_VAR)
    return Path(configured).expanduser() if configured else Path(sys.prefix) / "opt" / "llama.cpp"


def binary(name: str) -> Path:
    """The path of llama.cpp binary `name` (llama-server, llama-quantize)."""
    path = tools_dir() / "bin" / name
    if path.is_file() and os.access(path, os.X_OK):
        return path
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolsNotInstalledError(
        f"{name} was not found in {path.parent} (nor on PATH); {INSTALL_HINT}, or set "
        f"{ENV_VAR} to a folder with bin/{name}"
    )


def converter(name: str) -> Path:
    """The path of llama.cpp's converter script `name` (convert_hf_to_gguf.py, ...)."""
    path = tools_dir() / "convert" / name
    if not path.is_file():
        raise ToolsNotInstalledError(
            f"llama.cpp's {name} was not found in {path.parent}; {INSTALL_HINT}"
        )
    return path


def missing_tools() -> str | None:
    """Why the tools cannot be used here (a reason to skip), or None."""
    try:
        for name in ("llama-server", "llama-quantize"):
            binary(name)
        for name in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py"):
            converter(name)
        import gguf  # noqa: F401
    except (ToolsNotInstalledError, ImportError) as error:
        return str(error)
    return None


def run_tool(command: list[str], what: str, log: Path | None = None) -> None:
    """Run a converter or binary; on failure raise with the end of its output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    output = (result.stdout or "") + (result.stderr or "")
    if log is not None:
        with log.open("a", encoding="utf8") as handle:
            handle.write(f"$ {' '.join(command)}\n{output}\n")
    if result.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise RuntimeError(f"{what} failed (exit code {result.returncode}):\n{tail}")


def version() -> str | None:
    """The llama-cpp-python version whose llama.cpp the tools come from (VERSION file)."""
    stamp = tools_dir() / "VERSION"
    return stamp.read_text(encoding="utf8").strip() if stamp.is_file() else None
