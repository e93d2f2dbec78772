"""Why the painted donor head -> brain case fails in the affine stage (issue 15).

usage: python benchmarks/head_strip_diagnosis.py [--cases donor_9861_10021+mhead,colinhead_icbm]
       [--head-litres L] [--work DIR]

Per case (``benchmarks/register_real.py`` names): the tissue volume of each image (what
``preprocess/brain_mask.has_skull`` compares with ``HEAD_LITRES``), the head/brain decision and
which image is stripped, the label Dice without registration and after ``register_affine``, and,
for the moving head, the Dice of the template brain mask carried onto it
(``template_brain_mask``) against its true brain (labels > 0, the donors' interior filled).
``--head-litres`` replaces ``HEAD_LITRES`` (default 2.4 L) to see what stripping would do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import register_real  # noqa: E402  (the case builders; not edited here)


def _case(brains: Path, work: Path, name: str) -> dict:
    if name.startswith("donor_"):
        return register_real.make_donor_case(brains, work, name)
    return next(c for c in register_real.real_cases(brains, work) if c["name"] == name)


def _true_brain(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Boolean brain of a label map (a DK map's unlabelled interior filled) and its affine."""
    from dccnn_deploy.io import load_volume
    from dccnn_deploy.train.synth import fill_interior

    lab = load_volume(path, kind="labels")
    brain = fill_interior(lab.data.astype(np.int32), register_real.INTERIOR_LABEL) > 0 if "native_dk" in str(path) else lab.data > 0
    return brain, lab.affine


def diagnose(case: dict) -> dict:
    """Tissue litres, content, stripping, Dice none / affine, template-mask Dice of the moving head."""
    from dccnn_deploy.io import load_volume
    from dccnn_deploy.metrics import dice, mean_of
    from dccnn_deploy.preprocess.affine import _prepare, _template_to, register_affine
    from dccnn_deploy.preprocess.brain_mask import template_brain_mask, tissue_litres
    from dccnn_deploy.preprocess.grid import Grid, resample_to_grid

    moving, fixed = load_volume(case["moving"]), load_volume(case["fixed"])
    prepared = [_prepare(v.data, v.affine, 2.0) for v in (moving, fixed)]
    litres = [round(tissue_litres(p.data[0, 0].numpy(), p.affine), 2) for p in prepared]
    res = register_affine(moving.data, moving.affine, fixed.data, fixed.affine)
    m_lab, f_lab = load_volume(case["moving_labels"], kind="labels"), load_volume(case["fixed_labels"], kind="labels")
    labels = sorted(int(v) for v in np.unique(f_lab.data) if v)

    def label_dice(matrix: np.ndarray) -> float:
        moved = resample_to_grid(m_lab.data, m_lab.affine, Grid(f_lab.shape, f_lab.affine), matrix, order=0)
        return round(mean_of(dice(moved, f_lab.data, labels)), 3)

    head = prepared[0].data[0, 0].numpy()
    mask = template_brain_mask(head, prepared[0].affine, _template_to) > 0.5
    brain, brain_affine = _true_brain(case["moving_labels"])
    truth = resample_to_grid(brain.astype(np.uint8), brain_affine, Grid(head.shape, prepared[0].affine), order=0) > 0
    mask_dice = 2.0 * float((mask & truth).sum()) / float(mask.sum() + truth.sum())
    return {"case": case["name"], "tissue_litres": litres, "content": list(res.content), "stripped": list(res.stripped),
            "dice_none": label_dice(np.eye(4)), "dice_affine": label_dice(res.matrix),
            "det": round(float(np.linalg.det(res.matrix[:3, :3])), 2),
            "template_mask_dice": round(mask_dice, 3), "template_mask_volume_ratio": round(float(mask.sum() / truth.sum()), 2)}


def main() -> None:
    import json

    import dccnn_deploy.preprocess.brain_mask as brain_mask

    ap = argparse.ArgumentParser()
    ap.add_argument("--brains", type=Path, default=Path.home() / ".cache/dccnn/brains")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dccnn-final-sanity"))
    ap.add_argument("--cases", default="donor_9861_10021+mhead,colinhead_icbm")
    ap.add_argument("--head-litres", type=float, default=None)
    args = ap.parse_args()
    if args.head_litres is not None:
        brain_mask.HEAD_LITRES = args.head_litres  # read by has_skull at each call
    for name in args.cases.split(","):
        print(json.dumps(diagnose(_case(args.brains, args.work, name))), flush=True)


if __name__ == "__main__":
    main()
