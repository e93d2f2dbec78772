#!/usr/bin/env bash
# A GPU training burst from the current weights (one command, ~10 minutes of GPU time):
#   bash scripts/gpu_train.sh OUT [MINUTES=9]
# Needs gpu_pack/ from scripts/gpu_train_prepare.sh (carried with the tree) and PyTorch with CUDA;
# installs nothing from a registry: missing pure-Python modules come from gpu_pack/wheels.
# Trains the default recipe (configs/default.toml) on the whole 2 mm grid (no windows), batch 4,
# bf16 autocast, from gpu_pack/init.pt, stops after MINUTES, validates, and writes
#   OUT/run/{last,best}.pt, OUT/run/log.csv, OUT/train.log and OUT/model.pt (released best.pt).
# GPU_TRAIN_DRY_RUN=1: CPU, 2 steps, for CI. GPU_TRAIN_ARGS: extra `dccnn train` options.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_train.sh OUT [MINUTES]}
MINUTES=${2:-9}
PACK=${GPU_PACK:-gpu_pack}
mkdir -p "$OUT"
DEPS="$OUT/.deps"
missing=$(python3 - <<'PY'
import importlib.util
need = {"nibabel": "nibabel", "rich": "rich", "typer": "typer", "click": "click", "shellingham": "shellingham",
        "markdown_it": "markdown_it_py", "mdurl": "mdurl", "pygments": "pygments",
        "typing_extensions": "typing_extensions", "packaging": "packaging"}
print(" ".join(w for m, w in need.items() if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  wheels=()
  for w in $missing; do wheels+=("$(ls "$PACK"/wheels/${w}-*.whl 2>/dev/null | head -n 1)"); done
  python3 -m pip install -q --no-index --no-deps --target "$DEPS" "${wheels[@]}"
fi
export PYTHONPATH="$PWD:$DEPS${PYTHONPATH:+:$PYTHONPATH}"
if [ "${GPU_TRAIN_DRY_RUN:-0}" = 1 ]; then
  device=cpu; extra=(--iterations 2 --set crop_shape=[32,32,32] --set val_every=1000)
else
  device=cuda; extra=(--iterations 100000 --set crop_shape=[] --set batch_size=4 --set val_every=200
                      --set checkpoint_every=100 --time-limit "$MINUTES")
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/train.log"
python3 -m dccnn_deploy.cli.app train --config "${GPU_TRAIN_CONFIG:-configs/default.toml}" \
  --packed "$PACK/training.npz" --init "$PACK/init.pt" --out "$OUT/run" --device "$device" --no-progress \
  "${extra[@]}" ${GPU_TRAIN_ARGS:-} 2>&1 | tee -a "$OUT/train.log"
python3 -m dccnn_deploy.cli.app release "$OUT/run/best.pt" -o "$OUT/model.pt" --overwrite | tee -a "$OUT/train.log"
