#!/usr/bin/env bash
# Create ./.venv and install cbnotes (editable) with its test and notebook extras.
# torch/torchvision are pinned for reproducible CI by .ci/constraints.txt; pyproject.toml itself
# declares lower bounds only, so `pip install cbnotes` on Colab keeps Colab's own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet --constraint .ci/constraints.txt --editable ".[dev]"
.venv/bin/python -c "import torch, cbnotes; print(f'cbnotes {cbnotes.__version__}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
