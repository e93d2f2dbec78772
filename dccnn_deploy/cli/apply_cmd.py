"""``dccnn apply WARP IMAGE -o OUT``: apply a saved warp (or affine) to another image or label map."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import typer

from dccnn_deploy.cli.common import console, fail, refuse_existing, user_errors
from dccnn_deploy.io import load_itk_affine, load_itk_displacement, load_volume, save_volume
from dccnn_deploy.preprocess.grid import Grid
from dccnn_deploy.transform import Registration, sample_at


def warp_points(warp: Path, reference: Optional[Path]) -> tuple[torch.Tensor, np.ndarray]:
    """World points ``(1, 3, *grid)`` to sample at, and the output grid's affine."""
    if warp.name.endswith((".mat", ".txt", ".tfm")):
        if reference is None:
            fail(f"{warp}: an affine transform needs --reference (the output grid)")
        ref = load_volume(reference)
        grid = Grid(ref.shape, ref.affine)
        return Registration(affine=load_itk_affine(warp), grid=grid).forward_points(grid), ref.affine
    disp, affine = load_itk_displacement(warp)
    grid = Grid(disp.shape[:3], affine)
    base = Registration(affine=np.eye(4), grid=grid).forward_points(grid)
    return base + torch.from_numpy(np.ascontiguousarray(disp.transpose(3, 0, 1, 2)))[None].float(), affine


def apply(
    warp: Path = typer.Argument(..., help="fwd_warp.nii.gz / inv_warp.nii.gz, or affine.mat/.txt."),
    image: Path = typer.Argument(..., help="Image or label map to resample."),
    out: Path = typer.Option(..., "-o", "--out", help="Output NIfTI."),
    labels: bool = typer.Option(False, "--labels", help="Nearest-neighbour sampling for label maps."),
    reference: Optional[Path] = typer.Option(None, help="Output grid for an affine-only transform."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Resample IMAGE through WARP onto the warp's grid (ITK convention: out(x) = image(T(x)))."""
    with user_errors():
        refuse_existing(out, overwrite)
        vol = load_volume(image, kind="labels" if labels else "image")
        points, affine = warp_points(warp, reference)
        save_volume(out, sample_at(vol.data, vol.affine, points, labels=labels), affine, overwrite=overwrite)
    console.print(f"wrote {out}")
