#!/usr/bin/env bash
# GPU check (issue 12), one command, under 8 minutes on a GPU machine without registry access:
#   bash scripts/gpu_check.sh OUT_DIR [DATA_DIR] [more scripts/gpu_check.py options]
# DATA_DIR: moving_g.npy/fixed_g.npy (+ moving.nii.gz/fixed.nii.gz), made with
#   python scripts/gpu_check.py --prepare DATA_DIR --moving M.nii.gz --fixed F.nii(.gz)
# WHEELS=DIR: wheels to install without an index first (e.g. nibabel, where it is missing).
# Writes OUT_DIR/gpu_check.csv. `--dry-run` runs everything on the CPU with a tiny model (CI).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR [DATA_DIR] [gpu_check.py options]}
shift
DATA_ARGS=()
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    DATA_ARGS=(--data "$1")
    shift
fi
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ] && ! python3 -c "import nibabel" 2>/dev/null; then
    python3 -m pip install --quiet --no-index --no-deps --target "$OUT/site-packages" "$WHEELS"/*.whl
    export PYTHONPATH="$OUT/site-packages${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout "${GPU_CHECK_TIMEOUT:-470}" python3 scripts/gpu_check.py --out "$OUT" "${DATA_ARGS[@]}" "$@"
