"""Outputs of a registration: computed into a staging folder, then moved into place together.

Files (``out/``): ``moved.nii.gz`` (moving on the fixed grid), ``inverse_moved.nii.gz`` (fixed
on the moving grid), ``fwd_warp.nii.gz`` / ``inv_warp.nii.gz`` (ITK/ANTs displacement fields
including the affine: physical mm, LPS, X×Y×Z×1×3, on the fixed / moving grid),
``affine.mat`` / ``affine.txt`` (the affine alone, ITK), ``jacobian.nii.gz`` (det of the full
forward map on the fixed grid), ``qc.png``, ``report.json``, and ``moved_labels.nii.gz`` when
label maps are given.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from pathlib import Path

import numpy as np
import torch

from dccnn_deploy.io import Volume, save_itk_affine, save_itk_displacement, save_volume
from dccnn_deploy.io.staging import StagedOutputs
from dccnn_deploy.losses import local_ncc
from dccnn_deploy.metrics import dice, folding_percent, hd95, inverse_consistency, mean_of, ncc, ssim
from dccnn_deploy.ops.warp import warp_gridsample
from dccnn_deploy.preprocess.grid import Grid
from dccnn_deploy.registration.qc import save_qc_png
from dccnn_deploy.transform import Registration, map_jacobian, sample_at, world_displacement

if TYPE_CHECKING:  # the pipeline imports this module
    from dccnn_deploy.registration.pipeline import PreparedPair

OUTPUT_FILES = (
    "moved.nii.gz",
    "inverse_moved.nii.gz",
    "fwd_warp.nii.gz",
    "inv_warp.nii.gz",
    "affine.mat",
    "affine.txt",
    "jacobian.nii.gz",
    "qc.png",
    "report.json",
)
LABEL_OUTPUT = "moved_labels.nii.gz"


def _image_metrics(moved: np.ndarray, fixed: np.ndarray) -> dict[str, float]:
    """Similarity on the model grid: global NCC, local NCC (9^3), SSIM."""
    lncc = float(local_ncc(torch.from_numpy(moved)[None, None], torch.from_numpy(fixed)[None, None])[0])
    return {"ncc": ncc(moved, fixed), "local_ncc": lncc, "ssim": ssim(moved, fixed, data_range=1.0)}


def _label_metrics(moved: np.ndarray, fixed: np.ndarray, spacing) -> dict:
    labels = sorted(int(l) for l in np.unique(fixed) if l != 0)
    d = dice(moved, fixed, labels)
    h = hd95(moved, fixed, spacing, labels)
    return {"dice_mean": mean_of(d), "hd95_mean_mm": mean_of(h), "dice": {str(k): v for k, v in d.items()}}


def _field_metrics(registration: Registration) -> dict:
    if registration.forward is None:
        return {"folding_percent_forward": 0.0, "folding_percent_inverse": 0.0}
    fwd, inv = registration.forward[0], registration.inverse[0]
    return {
        "folding_percent_forward": folding_percent(fwd),
        "folding_percent_inverse": folding_percent(inv),
        "inverse_consistency_voxels": inverse_consistency(fwd, inv),
    }


def stage_outputs(
    staged: StagedOutputs,
    registration: Registration,
    moving: Volume,
    fixed: Volume,
    prepared: "PreparedPair",
    labels: tuple[Volume, Volume] | None,
    report: dict,
    qc: bool = True,
) -> None:
    """Compute every output into ``staged`` and add the quality figures to ``report``."""
    fixed_grid, moving_grid = Grid(fixed.shape, fixed.affine), Grid(moving.shape, moving.affine)
    fwd_points = registration.forward_points(fixed_grid)
    save_volume(staged.path("moved.nii.gz"), sample_at(moving.data, moving.affine, fwd_points), fixed.affine)
    save_itk_displacement(staged.path("fwd_warp.nii.gz"), world_displacement(fwd_points, fixed_grid), fixed.affine)
    save_volume(staged.path("jacobian.nii.gz"), map_jacobian(fwd_points, fixed_grid), fixed.affine)
    if labels is not None:
        moved_labels = sample_at(labels[0].data, moving.affine, fwd_points, labels=True)
        save_volume(staged.path(LABEL_OUTPUT), moved_labels, fixed.affine)
        affine_only = Registration(affine=registration.affine, grid=registration.grid)
        affine_labels = sample_at(labels[0].data, moving.affine, affine_only.forward_points(fixed_grid), labels=True)
        report["labels"] = {
            "after_affine": _label_metrics(affine_labels, labels[1].data, fixed.spacing),
            "after": _label_metrics(moved_labels, labels[1].data, fixed.spacing),
        }
    del fwd_points
    inv_points = registration.inverse_points(moving_grid)
    save_volume(staged.path("inverse_moved.nii.gz"), sample_at(fixed.data, fixed.affine, inv_points), moving.affine)
    save_itk_displacement(staged.path("inv_warp.nii.gz"), world_displacement(inv_points, moving_grid), moving.affine)
    del inv_points
    save_itk_affine(staged.path("affine.mat"), registration.affine)
    save_itk_affine(staged.path("affine.txt"), registration.affine)

    moving_g, fixed_g = prepared.moving_g, prepared.fixed_g
    moved_g = moving_g
    if registration.forward is not None:
        moved_g = warp_gridsample(torch.from_numpy(moving_g)[None, None], registration.forward)[0, 0].numpy()
    report["similarity"] = {
        "before": _image_metrics(prepared.unaligned_g, fixed_g),
        "after_affine": _image_metrics(moving_g, fixed_g),
        "after": _image_metrics(moved_g, fixed_g),
    }
    report["fields"] = _field_metrics(registration)
    if qc:
        fwd = registration.forward[0].numpy() if registration.forward is not None else np.zeros((3, *fixed_g.shape), np.float32)
        from dccnn_deploy.metrics import jacobian_map

        save_qc_png(
            staged.path("qc.png"), fixed_g, moved_g, fwd, jacobian_map(fwd),
            title=f"{Path(str(moving.path)).name} -> {Path(str(fixed.path)).name}",
        )


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")


__all__ = ["OUTPUT_FILES", "LABEL_OUTPUT", "StagedOutputs", "stage_outputs", "write_json", "OutputExistsError"]
