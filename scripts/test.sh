#!/usr/bin/env bash
# Set up ./.venv (scripts/setup.sh), lint, and run every test: the package's unit and
# integration tests, every notebook through papermill in smoke mode, and nbval on the
# committed outputs of the cells marked `# NBVAL_CHECK_OUTPUT`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/get_data.sh  # real Fashion-MNIST for the one test that reads it (else skipped)
bash scripts/get_slide_assets.sh  # reveal.js + MathJax (npm), Chromium (apt) for tests/test_slides.py
export MPLBACKEND=Agg PYTHONHASHSEED=0
.venv/bin/ruff check .
.venv/bin/ruff format --check cbnotes tests benchmarks scripts
.venv/bin/python scripts/notebooks.py check
.venv/bin/python -m pytest tests notebooks --nbval-lax \
    --nbval-sanitize-with tests/nbval_sanitize.cfg "$@"
