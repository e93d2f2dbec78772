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


def _grid_lines(shape: tuple[int, int], spacing: int = 5) -> np.ndarray:
    img = np.zeros(shape, np.float32)
    img[::spacing, :] = 1.0
    img[:, ::spacing] = 1.0
    return img


def _warped_grid_slices(forward: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """A line grid deformed by the in-plane components of ``forward`` on each mid-slice."""
    import torch
    import torch.nn.functional as F

    views = []
    for axis in range(3):
        plane = [k for k in range(3) if k != axis]
        disp = np.take(forward, centre[axis], axis=1 + axis)[plane]  # (2, a, b)
        a, b = disp.shape[1:]
        ii, jj = np.meshgrid(np.arange(a), np.arange(b), indexing="ij")
        gx = 2 * (jj + disp[1]) / max(b - 1, 1) - 1
        gy = 2 * (ii + disp[0]) / max(a - 1, 1) - 1
        grid = torch.from_numpy(np.stack([gx, gy], -1)[None].astype(np.float32))
        lines = torch.from_numpy(_grid_lines((a, b)))[None, None]
        views.append(np.rot90(F.grid_sample(lines, grid, align_corners=True, padding_mode="border")[0, 0].numpy()))
    return views


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

    centre = tuple(n // 2 for n in fixed.shape)
    warped_grid = _warped_grid_slices(forward, centre)
    columns = [
        ("fixed", fixed, "gray", (0, 1)),
        ("moved", moved, "gray", (0, 1)),
        ("checkerboard", None, "gray", (0, 1)),
        ("warped grid", "grid", "gray", (0, 1)),
        ("Jacobian det", jacobian, "RdBu_r", (0, 2)),
    ]
    fig, axes = plt.subplots(3, len(columns), figsize=(3 * len(columns), 9), dpi=80)
    for col, (name, vol, cmap, (lo, hi)) in enumerate(columns):
        if vol is None:
            views = [_checkerboard(f, m) for f, m in zip(_slices(fixed, centre), _slices(moved, centre))]
        elif isinstance(vol, str):
            views = warped_grid
        else:
            views = _slices(vol, centre)
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
