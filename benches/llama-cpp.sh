#!/usr/bin/env bash
# Builds llama.cpp tools once, outside the repository, from the llama-cpp-python sdist on PyPI
# (its vendored llama.cpp; cmake ~10 minutes on 2 cores, ../shared/TOOLCHAIN.md), and prints the
# bin directory. Shared by benches/e2e/run.sh and benches/interop/gguf_llama_cpp.py.
#
#   LLAMA_BIN=$(benches/llama-cpp.sh llama-quantize llama-perplexity)
#
# Environment: LLAMA_BIN (an existing build/bin: printed, nothing built), E2E_DIR (cache,
# ~/.cache/lowbit-e2e), LLAMA_CPP_PYTHON_VERSION (0.3.36), LLAMA_CMAKE_FLAGS (each flag set gets
# its own build), PY (the python whose pip downloads the sdist; python3).
set -euo pipefail
if [ -n "${LLAMA_BIN:-}" ]; then
  echo "$LLAMA_BIN"
  exit 0
fi
E2E_DIR=${E2E_DIR:-$HOME/.cache/lowbit-e2e}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
LLAMA_CMAKE_FLAGS=${LLAMA_CMAKE_FLAGS:-}
mkdir -p "$E2E_DIR"
flags_id=$(printf '%s' "$LLAMA_CMAKE_FLAGS" | sha256sum | cut -c1-8)
build="$E2E_DIR/llama-build-$LLAMA_CPP_PYTHON_VERSION-$flags_id"
missing=()
for t in "$@"; do
  [ -x "$build/bin/$t" ] || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  src="$E2E_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
  if [ ! -d "$src/vendor/llama.cpp" ]; then
    tarball="$E2E_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
    [ -s "$tarball" ] || "${PY:-python3}" -m pip download --quiet --no-binary :all: --no-deps \
      --dest "$E2E_DIR" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >&2
    tar -xzf "$tarball" -C "$E2E_DIR"
  fi
  # LLAMA_CMAKE_FLAGS is a list of flags: split on spaces on purpose.
  # shellcheck disable=SC2086
  cmake -S "$src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF $LLAMA_CMAKE_FLAGS >&2
  cmake --build "$build" --target "${missing[@]}" -j "$(nproc)" >&2
fi
echo "$build/bin"
