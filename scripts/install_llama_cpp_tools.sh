#!/usr/bin/env bash
# Install llama.cpp's own tools for serving the fine-tuned model (`export-gguf`, `serve`):
#   - the converters convert_hf_to_gguf.py and convert_lora_to_gguf.py (with their `conversion`
#     package) and the matching `gguf` package (gguf-py),
#   - the binaries llama-server (OpenAI-compatible, parallel slots, continuous batching) and
#     llama-quantize,
# all from the llama.cpp that llama-cpp-python 0.3.36 vendors (PyPI has its source; no other
# download). Everything lands in <prefix of PYTHON>/opt/llama.cpp:
#
#   bash scripts/install_llama_cpp_tools.sh [PYTHON]
#
# Compiling the two binaries takes several minutes on 2 cores. Safe to rerun: a working install
# of the pinned version is kept. Built for a fixed x86-64 level (AVX2/FMA/F16C where the CPU has
# them, never AVX-512 or AMX), for the reason given in install_llama_server.sh; no web UI, no
# HTTPS, no downloads at build time.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${1:-python}
LLAMA_CPP_PYTHON_VERSION=0.3.36
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
PREFIX=$("$PY" -c "import sys; print(sys.prefix)")
DEST="$PREFIX/opt/llama.cpp"
STAMP="$DEST/VERSION"

works() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$LLAMA_CPP_PYTHON_VERSION" ] \
    && "$DEST/bin/llama-server" --version > /dev/null 2>&1 \
    && [ -x "$DEST/bin/llama-quantize" ] \
    && [ -f "$DEST/convert/convert_hf_to_gguf.py" ] \
    && "$PY" -c "import gguf" 2> /dev/null
}

if works; then
  echo "[llama.cpp tools] $DEST holds llama.cpp from llama-cpp-python $LLAMA_CPP_PYTHON_VERSION"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "[llama.cpp tools] fetching the source of llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from PyPI"
"$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
  "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$work"
tar -xzf "$work"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION".tar.gz -C "$work"
src="$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"

# The gguf package of the same llama.cpp (the converters import it).
"$PY" -m pip install --disable-pip-version-check -q "$src/gguf-py"

flags=(-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
  -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DCMAKE_BUILD_TYPE=Release)
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
echo "[llama.cpp tools] compiling llama-server and llama-quantize (several minutes)"
cmake -S "$src" -B "$work/build" "${flags[@]}" > "$work/configure.log" 2>&1 \
  || { tail -40 "$work/configure.log" >&2; exit 1; }
cmake --build "$work/build" --config Release --target llama-server llama-quantize \
  > "$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; exit 1; }

rm -rf "$DEST"
mkdir -p "$DEST/bin" "$DEST/convert"
cp "$work/build/bin/llama-server" "$work/build/bin/llama-quantize" "$DEST/bin/"
cp "$src/convert_hf_to_gguf.py" "$src/convert_lora_to_gguf.py" "$DEST/convert/"
cp -r "$src/conversion" "$DEST/convert/"
cp "$src/LICENSE" "$DEST/LICENSE"
echo "$LLAMA_CPP_PYTHON_VERSION" > "$STAMP"
if ! works; then
  echo "[llama.cpp tools] installed in $DEST but llama-server does not run" >&2
  exit 1
fi
echo "[llama.cpp tools] installed in $DEST"
