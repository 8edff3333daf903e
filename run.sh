#!/usr/bin/env bash
# Set-up and entry points:  ./run.sh demo   (the method end to end on synthetic data)
#                           ./run.sh test   (the whole test suite)
# Creates .venv (or $HF_LANDMARK_VENV), installs torch and the package, then runs.
# torch: kept if the environment already has it; else $TORCH_SPEC if set; else the CUDA
# build where nvidia-smi exists, and torch==2.13.0 (the CPU wheel on CPU-only machines that
# provide it locally) otherwise.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${HF_LANDMARK_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    "$PY" -m pip install "$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install "torch>=2.6"
  else
    "$PY" -m pip install "torch==2.13.0"
  fi
fi
"$PY" -m pip install -q -e ".[test]"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

case "${1:-}" in
  test)
    shift
    exec "$PY" -m pytest -q "$@"
    ;;
  demo)
    shift
    exec "$VENV/bin/hf-landmark" demo --output-dir outputs/demo "$@"
    ;;
  *)
    echo "usage: ./run.sh test [pytest args] | ./run.sh demo [demo args]" >&2
    exit 2
    ;;
esac
