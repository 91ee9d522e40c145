#!/usr/bin/env bash
# One command for a CUDA machine: exactness under deterministic and default cuDNN settings,
# and the speed tables (float32 and bf16 autocast, eager and compiled) in docs/benchmarks/gpu/.
# About 5 minutes on one modern GPU. Needs the project installed (make install, or pip install -e .).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg
exec "$PYTHON" benchmarks/gpu_check.py "$@"
