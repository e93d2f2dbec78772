"""``qc.png``: three orthogonal mid-slices of fixed, moved, checkerboard, warped grid, Jacobian."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    rows, cols = np.indices(a.shape)
    mask = ((rows * tiles // a.shape[0]) + (cols * tiles // a.shape[1])) % 2 == 0
    return np.where(mask, a, b)


def _slices(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Sagittal, coronal, axial slices of an RAS volume, oriented for display (up = S / A)."""
    i, j, k = centre
    return [np.rot90(volume[i, :, :]), np.rot90(volume[:, j, :]), np.rot90(volume[:, :, k])]


def _grid_lines(shape: tuple[int, int], spacing: int = 6) -> np.ndarray:
    img = np.zeros(shape, np.float32)
    img[::spacing, :] = 1.0
    img[:, ::spacing] = 1.0
    return img


def save_qc_png(
    path: Path,
    fixed: np.ndarray,
    moved: np.ndarray,
    forward: np.ndarray,
    jacobian: np.ndarray,
    title: str = "",
) -> None:
    """Write the QC montage. Inputs are on the (RAS) model grid: ``fixed``/``moved``/``jacobian``
    ``(D, H, W)`` and the forward voxel displacement ``(3, D, H, W)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from dccnn_deploy.ops.warp import warp_gridsample

    centre = tuple(n // 2 for n in fixed.shape)
    lines = np.stack([_grid_lines((fixed.shape[1], fixed.shape[2]))] * fixed.shape[0])
    lines = np.maximum(lines, np.stack([_grid_lines((fixed.shape[0], fixed.shape[2]))] * fixed.shape[1], axis=1))
    warped_grid = warp_gridsample(
        torch.from_numpy(lines)[None, None], torch.from_numpy(forward)[None], padding="border"
    )[0, 0].numpy()
    columns = [
        ("fixed", fixed, "gray", (0, 1)),
        ("moved", moved, "gray", (0, 1)),
        ("checkerboard", None, "gray", (0, 1)),
        ("warped grid", warped_grid, "gray", (0, 1)),
        ("Jacobian det", jacobian, "RdBu_r", (0, 2)),
    ]
    fig, axes = plt.subplots(3, len(columns), figsize=(3 * len(columns), 9), dpi=80)
    for col, (name, vol, cmap, (lo, hi)) in enumerate(columns):
        views = (
            [_checkerboard(f, m) for f, m in zip(_slices(fixed, centre), _slices(moved, centre))]
            if vol is None
            else _slices(vol, centre)
        )
        for row, view in enumerate(views):
            ax = axes[row, col]
            im = ax.imshow(view, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
        if name == "Jacobian det":
            fig.colorbar(im, ax=axes[:, col], fraction=0.05)
    for row, label in enumerate(("sagittal", "coronal", "axial")):
        axes[row, 0].set_ylabel(label)
    folded = int((jacobian <= 0).sum())
    fig.suptitle(f"{title}   folded voxels (J<=0): {folded}", fontsize=11)
    fig.savefig(path, format="png")
    plt.close(fig)
