#!/usr/bin/env bash
# Set-up and entry points:  ./run.sh demo            (the method end to end on synthetic data)
#                           ./run.sh test            (the test suite, but the baselines' tests)
#                           ./run.sh test-baselines  (the paper's baselines' tests, own environment)
# Creates .venv (or $HF_LANDMARK_VENV), installs torch and the package, then runs.
# torch: kept if the environment already has it; else $TORCH_SPEC if set; else the CUDA
# build where nvidia-smi exists, and torch==2.13.0 (the CPU wheel on CPU-only machines that
# provide it locally) otherwise.
# The baselines (hf-landmark[baselines]) need torchvision built for the same torch; they get
# their own environment, .venv-baselines (or $HF_LANDMARK_BASELINES_VENV), with
# $BASELINES_TORCH_SPEC (default: torch==2.14.1 torchvision==0.29.1, a matching pair).
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

# setup_env VENV EXTRAS MODULES TORCH_SPEC...: the environment's python in $PY; the torch
# spec is installed unless MODULES (e.g. "torch, torchvision") already import.
setup_env() {
  local venv=$1 extras=$2 modules=$3
  shift 3
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  PY="$venv/bin/python"
  if ! "$PY" -c "import $modules" >/dev/null 2>&1; then
    "$PY" -m pip install "$@"
  fi
  "$PY" -m pip install -q -e ".[$extras]"
}

if [ "${1:-}" = "test-baselines" ]; then
  shift
  # shellcheck disable=SC2086
  setup_env "${HF_LANDMARK_BASELINES_VENV:-.venv-baselines}" "test,baselines" "torch, torchvision" ${BASELINES_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
  exec "$PY" -m pytest -q -m baselines "$@"
fi

if [ -n "${TORCH_SPEC:-}" ]; then
  TORCH=$TORCH_SPEC
elif command -v nvidia-smi >/dev/null 2>&1; then
  TORCH="torch>=2.6"
else
  TORCH="torch==2.13.0"
fi
setup_env "${HF_LANDMARK_VENV:-.venv}" test torch "$TORCH"
VENV=${HF_LANDMARK_VENV:-.venv}

case "${1:-}" in
  test)
    shift
    exec "$PY" -m pytest -q -m "not baselines" "$@"
    ;;
  demo)
    shift
    exec "$VENV/bin/hf-landmark" demo --output-dir outputs/demo "$@"
    ;;
  *)
    echo "usage: ./run.sh test [pytest args] | ./run.sh test-baselines [pytest args] | ./run.sh demo [demo args]" >&2
    exit 2
    ;;
esac
