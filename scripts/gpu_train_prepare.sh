#!/usr/bin/env bash
# Prepare a GPU training burst on THIS machine (where the brains, nibabel and a registry are):
#   bash scripts/gpu_train_prepare.sh [INIT_WEIGHTS]
# writes gpu_pack/ (gitignored, ~20 MB): training.npz (the default recipe's data, already on the
# model grid), init.pt (the weights to continue from: INIT_WEIGHTS, default the shipped model) and
# wheels/ (pure-Python packages the GPU machine may lack: nibabel, rich, typer and theirs).
# Then carry gpu_pack to the GPU machine (device tool: carry ["gpu_pack"]) and run
#   bash scripts/gpu_train.sh OUT [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
INIT=${1:-models/dccnn-default.pt}
mkdir -p gpu_pack/wheels
rm -f gpu_pack/training.npz
dccnn train --config configs/default.toml --pack-data gpu_pack/training.npz
cp "$INIT" gpu_pack/init.pt
python3 -m pip download -q --no-deps --only-binary=:all: -d gpu_pack/wheels \
  nibabel rich typer click shellingham markdown-it-py mdurl pygments typing_extensions packaging
du -sh gpu_pack
