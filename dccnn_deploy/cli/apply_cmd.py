"""``dccnn apply WARP IMAGE... -o OUT``: apply a saved warp (or affine) to other images and label maps.

One input and ``-o x.nii.gz``: that file. Several inputs (or ``-o`` a folder): each input's file
name in the folder ``OUT``. ``--labels`` makes every input a label map (nearest neighbour);
``--label-map`` adds label maps next to intensity images. The transform is read and sampled
once; all outputs are written together (staged) or none.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from dccnn_deploy.cli.common import console, fail, user_errors

if TYPE_CHECKING:
    import numpy as np
    import torch

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh")


def warp_points(warp: Path, reference: Optional[Path]) -> "tuple[torch.Tensor, np.ndarray]":
    """World points ``(1, 3, *grid)`` to sample at, and the output grid's affine."""
    import numpy as np
    import torch

    from dccnn_deploy.io import load_itk_affine, load_itk_displacement, load_volume
    from dccnn_deploy.preprocess.grid import Grid
    from dccnn_deploy.transform import Registration

    if warp.name.lower().endswith(".h5"):
        return composite_points(warp, reference)
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


def composite_points(path: Path, reference: Optional[Path]) -> "tuple[torch.Tensor, np.ndarray]":
    """World points of an ITK composite (``.h5``) on the reference grid (default: the grid of the
    field applied first). Fields displace by zero outside their grid, as in ITK."""
    import numpy as np
    import torch

    from dccnn_deploy.io import load_itk_composite, load_volume
    from dccnn_deploy.preprocess.grid import Grid
    from dccnn_deploy.transform import Registration, sample_at
    from dccnn_deploy.transform import apply_matrix

    steps = load_itk_composite(path)
    if reference is not None:
        ref = load_volume(reference)
        grid = Grid(ref.shape, ref.affine)
    elif isinstance(steps[-1], tuple):
        grid = Grid(steps[-1][0].shape[:3], steps[-1][1])
    else:
        fail(f"{path}: a transform that starts with an affine needs --reference (the output grid)")
    points = Registration(affine=np.eye(4), grid=grid).forward_points(grid)
    for step in reversed(steps):  # ITK applies the last transform first
        if isinstance(step, tuple):
            disp, affine = step
            moved = np.stack([sample_at(disp[..., k], affine, points) for k in range(3)])
            points = points + torch.from_numpy(moved)[None]
        else:
            points = apply_matrix(step, points)
    return points, grid.affine


def output_paths(inputs: list[Path], out: Path) -> list[Path]:
    """Where each input goes: ``out`` itself for one input named like an image, else ``out/<name>``."""
    if len(inputs) == 1 and out.name.lower().endswith(IMAGE_SUFFIXES) and not out.is_dir():
        return [out]
    names = [p.name for p in inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        fail(f"inputs share the file name {duplicates[0]!r}; apply them in separate runs")
    return [out / n for n in names]


def apply(
    warp: Path = typer.Argument(..., help="fwd_warp.nii.gz / inv_warp.nii.gz, fwd_transform.h5 / inv_transform.h5, or affine.mat/.txt."),
    images: List[Path] = typer.Argument(..., help="Images (or label maps) to resample, one or more."),
    out: Path = typer.Option(..., "-o", "--out", help="Output NIfTI (one input) or output folder."),
    labels: bool = typer.Option(False, "--labels", help="Every input is a label map (nearest neighbour)."),
    label_maps: List[Path] = typer.Option([], "--label-map", help="A label map to resample too (repeatable)."),
    reference: Optional[Path] = typer.Option(None, help="Output grid for an affine-only transform."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Resample IMAGES through WARP onto the warp's grid (ITK convention: out(x) = image(T(x)))."""
    with user_errors():
        from dccnn_deploy.io import check_outputs_free, load_volume, save_volume
        from dccnn_deploy.registration.outputs import StagedOutputs
        from dccnn_deploy.transform import sample_at

        inputs = [(p, labels) for p in images] + [(p, True) for p in label_maps]
        targets = output_paths([p for p, _ in inputs], out)
        check_outputs_free(targets, overwrite=overwrite)
        volumes = [load_volume(p, kind="labels" if is_labels else "image") for p, is_labels in inputs]
        points, affine = warp_points(warp, reference)
        folder = targets[0].parent
        with StagedOutputs(folder, overwrite) as staged:
            for vol, (_, is_labels), target in zip(volumes, inputs, targets):
                save_volume(staged.path(target.name), sample_at(vol.data, vol.affine, points, labels=is_labels), affine)
            written = staged.commit()
    for path in written:
        console.print(f"wrote {path}")
