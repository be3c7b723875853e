#!/usr/bin/env bash
# The main job: set up ./.venv, get the data, run a study, write results and figures.
#   no CUDA GPU -> the CPU study on long-tailed Fashion-MNIST (preset `cpu-quick`, 4 runs, 5-10 min on 2 cores)
#   CUDA GPU    -> the paper's long-tailed CIFAR presets (torchvision downloads CIFAR)
# Override with PRESET=<name> (see `python -m cbnotes presets`) and OUT=<folder>.
# `summary` ends with a few sentences: which loss won by how much, the one-seed caveat, and
# whether the runs match the committed ones in results/cpu-study (and why they may not).
# Exit status: that of `run` (1 when some runs failed; the others are still summarized).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/get_data.sh
OUT=${OUT:-outputs/main}
status=0
# --jobs auto: on a CPU one run per core, one thread each (faster in all than one run on every
# core); on a GPU one run at a time.
.venv/bin/python -m cbnotes run --preset "${PRESET:-auto}" --out "$OUT" --download --jobs auto || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 1 ]; then
  exit "$status"  # a user error (2) or Ctrl-C (130): nothing new to summarize
fi
.venv/bin/python -m cbnotes summary --out "$OUT" --preset "${PRESET:-auto}"
.venv/bin/python -m cbnotes figures --out "$OUT"
echo "Results: $OUT/summary.csv, one JSON per run in $OUT/runs/, figures in $OUT/figures/"
exit "$status"
