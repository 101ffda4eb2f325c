#!/usr/bin/env bash
# The GPU machine check (#28): one training on one GPU, an ONNX deployment answering on the GPU,
# serving req/s GPU vs CPU (bench/gpu_check.py). Exits 0 with one line where there is no GPU.
#   bench/gpu_check.sh [--epochs 3] [--seconds 15] [--keep]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${KILN_PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: no GPU on this machine (nvidia-smi not found); nothing measured"
  exit 0
fi
exec "$py" "$here/bench/gpu_check.py" "$@"
