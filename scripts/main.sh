#!/usr/bin/env bash
# The main job: set up ./.venv, get the data, run a study, write results and figures.
#   no CUDA GPU -> the CPU study on long-tailed Fashion-MNIST (preset `cpu-quick`, ~10 min on 2 cores)
#   CUDA GPU    -> the paper's long-tailed CIFAR presets (torchvision downloads CIFAR)
# Override with PRESET=<name> (see `python -m cbnotes presets`) and OUT=<folder>.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
FMNIST_DEB_DIR=/usr/share/datasets/fashion-mnist
if [ ! -d "$FMNIST_DEB_DIR" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "Installing Fashion-MNIST from Debian (package dataset-fashion-mnist) ..."
    { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
        || echo "Could not install dataset-fashion-mnist; torchvision will try to download it."
fi
OUT=${OUT:-outputs/main}
.venv/bin/python -m cbnotes run --preset "${PRESET:-auto}" --out "$OUT" --download
.venv/bin/python -m cbnotes figures --out "$OUT"
echo "Results: $OUT/summary.csv, one JSON per run in $OUT/runs/, figures in $OUT/figures/"
