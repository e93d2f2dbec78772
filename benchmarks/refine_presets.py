"""Refine presets vs ANTs SyN on held-out real pairs, judged on the *written 1 mm warps*.

usage: python benchmarks/refine_presets.py [--refine 0,fast] [--cases donor_9861_10021,...]
       [--similarity auto] [--work DIR] [--model CKPT] [--passes 1,5] [--no-ants]

For each case (built by ``benchmarks/register_real.py``'s case builders; ``xdonor_A_B`` is
``donor_A_B+contrast``: the fixed image painted with its own random contrast) and each ``--refine`` value, ``dccnn register`` runs in a child process WITHOUT
label maps (so the time is the registration, not the evaluation), then the written
``fwd_warp.nii.gz`` / ``inv_warp.nii.gz`` are evaluated here exactly as for ANTs SyN (its
transforms composed into one displacement field per direction by ``antsApplyTransforms``):

* Dice: the moving labels resampled by SimpleITK through the forward field (nearest);
* %J<=0 and inverse consistency (mm) of the written fields: ``warp_checks.py`` (direction-aware
  Jacobian, worse of the two; ``|inv(fwd(x)) - x|`` by SimpleITK over the fixed brain labels);
* time: wall seconds of our whole ``dccnn register`` command vs SyN's ``ants.registration`` call.
Both sides run with one thread (``OMP_NUM_THREADS=1``, ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``),
in the same run, so the time ratio holds under load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from register_real import make_donor_case, real_cases  # noqa: E402  (the one set of case builders)
from warp_checks import folding_percent_of, inverse_consistency_mm  # noqa: E402

SYN_RUNNER = r'''
import sys, json, time, ants
moving, fixed, prefix = sys.argv[1:4]
m, f = ants.image_read(moving), ants.image_read(fixed)
t = time.time()
reg = ants.registration(fixed=f, moving=m, type_of_transform="SyN")
seconds = time.time() - t
ants.apply_transforms(fixed=f, moving=m, transformlist=reg["fwdtransforms"], compose=prefix + "fwd_")
ants.apply_transforms(fixed=m, moving=f, transformlist=reg["invtransforms"], whichtoinvert=[True, False],
                      compose=prefix + "inv_")
print(json.dumps({"seconds": seconds}))
'''
ONE_THREAD = {"OMP_NUM_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def _run(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed: {res.stderr.strip()[-800:]}")
    return time.perf_counter() - start, res.stdout


def evaluate_warps(fwd: Path, inv: Path, case: dict) -> dict:
    """Dice, %J<=0 and inverse consistency (mm) of a forward / inverse displacement-field pair."""
    import SimpleITK as sitk

    from dccnn_deploy.metrics import dice, mean_of

    t_fwd = sitk.DisplacementFieldTransform(sitk.ReadImage(str(fwd), sitk.sitkVectorFloat64))
    fixed_lab = sitk.ReadImage(str(case["fixed_labels"]))
    moved = sitk.Resample(sitk.ReadImage(str(case["moving_labels"])), fixed_lab, t_fwd, sitk.sitkNearestNeighbor, 0)
    fl, ml = sitk.GetArrayFromImage(fixed_lab), sitk.GetArrayFromImage(moved)
    labels = sorted(int(v) for v in np.unique(fl) if v)

    ic = inverse_consistency_mm(fwd, inv, case["fixed_labels"])
    return {
        "dice": mean_of(dice(ml, fl, labels)),
        "fold": max(folding_percent_of(fwd), folding_percent_of(inv)),
        "ic_mm": ic["mean"], "ic_p95_mm": ic["p95"],
    }


def run_ours(case: dict, out: Path, refine: str, similarity: str, model: str | None, passes: int | None = None) -> dict:
    cmd = [sys.executable, "-m", "dccnn_deploy.cli.app", "register", str(case["moving"]), str(case["fixed"]),
           "-o", str(out), "--overwrite", "--refine", refine, "--similarity", similarity]
    if model:
        cmd += ["--model", model]
    if passes:
        cmd += ["--passes", str(passes)]
    wall, _ = _run(cmd)
    rep = json.loads((out / "report.json").read_text())
    result = evaluate_warps(out / "fwd_warp.nii.gz", out / "inv_warp.nii.gz", case)
    return {**result, "seconds": wall, "refine_s": rep["seconds"].get("refine", 0.0),
            "invert_s": rep["seconds"].get("invert", 0.0), "refine": rep.get("refine")}


def run_syn(case: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cached = out / "syn_eval.json"
    if cached.exists():
        return json.loads(cached.read_text())
    prefix = str(out / "syn_")
    _, stdout = _run([sys.executable, "-c", SYN_RUNNER, str(case["moving"]), str(case["fixed"]), prefix])
    seconds = json.loads(stdout.strip().splitlines()[-1])["seconds"]
    result = {**evaluate_warps(Path(prefix + "fwd_comptx.nii.gz"), Path(prefix + "inv_comptx.nii.gz"), case),
              "seconds": seconds}
    cached.write_text(json.dumps(result))
    return result


def build_cases(names: list[str], brains: Path, work: Path) -> list[dict]:
    """``register_real`` cases by name (``donor_A_B[+mhead][+fhead][+contrast]`` included), plus
    ``xdonor_A_B``: the same as ``donor_A_B+contrast`` (independent contrasts)."""
    needs_real = any(not n.startswith(("donor_", "xdonor_")) for n in names)
    real = {c["name"]: c for c in real_cases(brains, work)} if needs_real else {}
    cases = []
    for name in names:
        if name.startswith("donor_"):
            cases.append(make_donor_case(brains, work, name))
        elif name.startswith("xdonor_"):
            case = make_donor_case(brains, work, name[1:] + "+contrast")
            cases.append({**case, "name": name, "metric": "DK Dice, independent contrasts"})
        elif name in real:
            cases.append(real[name])
        else:
            raise SystemExit(f"unknown case {name}")
    return cases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--brains", type=Path, default=Path.home() / ".cache/dccnn/brains")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dccnn-refine-bench"))
    ap.add_argument("--refine", default="0,fast", help="comma-separated --refine values, one run each")
    ap.add_argument("--similarity", default="auto")
    ap.add_argument("--model", default=None)
    ap.add_argument("--cases", default="donor_9861_10021,donor_10021_9861,colin_icbm")
    ap.add_argument("--no-ants", action="store_true")
    ap.add_argument("--passes", default="", help="comma-separated network passes, one run each (default: the model's)")
    args = ap.parse_args()
    pass_counts = [int(p) for p in args.passes.split(",") if p] or [None]
    rows = []
    for case in build_cases(args.cases.split(","), args.brains, args.work):
        syn = None if args.no_ants else run_syn(case, args.work / case["name"] / "syn")
        print(json.dumps({"case": case["name"], "syn": syn}), flush=True)
        for refine in args.refine.split(","):
            for passes in pass_counts:
                label = refine if passes is None else f"{refine}, {passes} pass"
                out = args.work / case["name"] / (f"dccnn_{refine}" + ("" if passes is None else f"_p{passes}"))
                ours = run_ours(case, out, refine, args.similarity, args.model, passes)
                print(json.dumps({"case": case["name"], "refine": label, "ours": ours}), flush=True)
                rows.append((case["name"], label, ours, syn))
    print("\n| pair | refine | Dice | %J<=0 | inv. cons. mm (mean / p95) | s (refine s) | SyN Dice | SyN %J<=0 "
          "| SyN inv. cons. mm | SyN s | time / SyN |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, refine, o, s in rows:
        syn_cols = (f"{s['dice']:.3f} | {s['fold']:.4f} | {s['ic_mm']:.3f} | {s['seconds']:.0f} | "
                    f"{o['seconds'] / s['seconds']:.2f}" if s else "- | - | - | - | -")
        print(f"| {name} | {refine} | {o['dice']:.3f} | {o['fold']:.4f} | {o['ic_mm']:.3f} / {o['ic_p95_mm']:.3f} | "
              f"{o['seconds']:.0f} ({o['refine_s']:.0f}) | {syn_cols} |")


if __name__ == "__main__":
    main()
