#!/usr/bin/env bash
# CI: the wheel works on its own. Build it from a clean copy of the tree, check that it carries
# the default model and the sample pair, install it into a fresh venv (the package only from the
# wheel; torch and the other dependencies from the system site-packages), and run `dccnn demo`
# in a folder away from the checkout.   Usage: scripts/check_wheel.sh [KEEP_DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d)}
[ $# -ge 1 ] || trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/src"
# tracked and new (not ignored) files only: no stale build/ or dist/ in the wheel
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$WORK/src"
python3 -m pip wheel "$WORK/src" -w "$WORK/dist" --no-deps --no-build-isolation -q
WHEEL=$(ls "$WORK"/dist/dccnn_deploy-*.whl)
echo "built $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1))"
python3 - "$WHEEL" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["dccnn_deploy/data/models/dccnn-default.pt", "dccnn_deploy/data/models/dccnn-default.md",
        "dccnn_deploy/data/sample/colin27_brain_2mm.nii.gz", "dccnn_deploy/data/sample/icbm2009a_brain_2mm.nii.gz"]
missing = [n for n in need if n not in names]
import shutil
compiled = any(n.startswith("dccnn_deploy/_native/_trilinear") and n.endswith(".so") for n in names)
if not compiled and (shutil.which("cc") or shutil.which("gcc")):  # a compiler was there: it must have been built
    missing.append("the compiled sampler dccnn_deploy/_native/_trilinear*.so")
sys.exit(f"wheel lacks {missing}" if missing else 0)
PY
python3 -m venv --system-site-packages "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --no-deps "$WHEEL"
cd "$WORK"
env -u DCCNN_MODELS -u PYTHONPATH "$WORK/venv/bin/python" - "$WORK/venv" <<'PY'
import sys
from pathlib import Path
import dccnn_deploy
from dccnn_deploy.models import default_model_path
venv = Path(sys.argv[1]).resolve()
where, model = Path(dccnn_deploy.__file__).resolve(), default_model_path()
assert venv in where.parents, f"dccnn_deploy imported from {where}, not from the venv"
assert model is not None and venv in model.resolve().parents, f"default model {model} is not the wheel's"
import shutil
from dccnn_deploy.ops import native
compiler = shutil.which("cc") or shutil.which("gcc")
assert native.available() or not compiler, "the wheel's compiled sampler does not load"
sampler = "compiled sampler loaded" if native.available() else "no C compiler: PyTorch sampling"
print(f"imports from {where.parent}; default model {model.name}; {sampler}")
PY
env -u DCCNN_MODELS -u PYTHONPATH "$WORK/venv/bin/dccnn" demo -o "$WORK/demo"
env -u DCCNN_MODELS -u PYTHONPATH "$WORK/venv/bin/python" - "$WORK" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1]).resolve()
report = json.loads((work / "demo" / "report.json").read_text())
assert report["model"] and str(work / "venv") in report["model"]["path"], report["model"]
assert (work / "demo" / "inv_warp.nii.gz").is_file() and (work / "demo" / "qc.png").is_file()
print(f"demo ok: NCC {report['similarity']['after_affine']['ncc']:.3f} -> {report['similarity']['after']['ncc']:.3f} "
      f"with {Path(report['model']['path']).name} from the wheel")
PY
echo "wheel check passed"
