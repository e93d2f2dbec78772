"""``qc.png``: three orthogonal mid-slices of fixed, moved, checkerboard, warped grid, Jacobian.

Drawn with NumPy and Pillow (no plotting library: importing and laying out a matplotlib figure
cost ~2 s of the ~8 s outputs stage, issue 12): a 3 x 5 montage of tiles, column titles, row
labels, a title line with the folded-voxel count and a colour bar for the Jacobian determinant.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TILE = 200  # pixels of a panel's longer side
MARGIN = 8
LABEL_WIDTH = 70
HEADER = 52  # title line + column titles
COLORBAR_WIDTH = 64
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
#: ColorBrewer RdBu anchors reversed (blue = 0 -> white = 1 -> red = 2 for the Jacobian)
_RDBU_R = np.array([
    (5, 48, 97), (33, 102, 172), (67, 147, 195), (146, 197, 222), (209, 229, 240), (247, 247, 247),
    (253, 219, 199), (244, 165, 130), (214, 96, 77), (178, 24, 43), (103, 0, 31),
], dtype=np.float64)
COLUMNS = ("fixed", "moved", "checkerboard", "warped grid", "Jacobian det")
ROWS = ("sagittal", "coronal", "axial")
JACOBIAN_RANGE = (0.0, 2.0)


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


def colormap_rdbu_r(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """RGB ``uint8`` (``(*values.shape, 3)``) of ``values`` on the reversed RdBu scale over ``[lo, hi]``."""
    t = np.clip((np.nan_to_num(values, nan=lo) - lo) / (hi - lo), 0.0, 1.0) * (len(_RDBU_R) - 1)
    below = np.minimum(np.floor(t).astype(np.int64), len(_RDBU_R) - 2)
    frac = (t - below)[..., None]
    return np.rint(_RDBU_R[below] * (1 - frac) + _RDBU_R[below + 1] * frac).astype(np.uint8)


def _gray(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    g = np.rint(np.clip((np.nan_to_num(values, nan=lo) - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def _tile(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` scaled by nearest neighbour so its longer side is :data:`TILE`, centred on a white tile."""
    h, w = rgb.shape[:2]
    scale = TILE / max(h, w, 1)
    rows = np.minimum((np.arange(max(1, round(h * scale))) / scale).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(max(1, round(w * scale))) / scale).astype(np.int64), w - 1)
    scaled = rgb[rows][:, cols]
    tile = np.full((TILE, TILE, 3), 255, np.uint8)
    top, left = (TILE - scaled.shape[0]) // 2, (TILE - scaled.shape[1]) // 2
    tile[top: top + scaled.shape[0], left: left + scaled.shape[1]] = scaled
    return tile


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def render_qc(fixed: np.ndarray, moved: np.ndarray, forward: np.ndarray, jacobian: np.ndarray,
              title: str = "") -> np.ndarray:
    """The QC montage as an RGB ``uint8`` image ``(height, width, 3)`` (see :func:`save_qc_png`)."""
    from PIL import Image, ImageDraw

    centre = tuple(n // 2 for n in fixed.shape)
    fixed_s, moved_s = _slices(fixed, centre), _slices(moved, centre)
    panels = [
        [_gray(v, 0, 1) for v in fixed_s],
        [_gray(v, 0, 1) for v in moved_s],
        [_gray(_checkerboard(f, m), 0, 1) for f, m in zip(fixed_s, moved_s)],
        [_gray(v, 0, 1) for v in _warped_grid_slices(forward, centre)],
        [colormap_rdbu_r(v, *JACOBIAN_RANGE) for v in _slices(jacobian, centre)],
    ]
    step = TILE + MARGIN
    width = LABEL_WIDTH + len(COLUMNS) * step + COLORBAR_WIDTH
    height = HEADER + len(ROWS) * step
    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    for col, views in enumerate(panels):
        for row, rgb in enumerate(views):
            top, left = HEADER + row * step, LABEL_WIDTH + col * step
            canvas[top: top + TILE, left: left + TILE] = _tile(rgb)
    # colour bar beside the Jacobian column: 2 at the top, 0 at the bottom
    bar_h = len(ROWS) * step - MARGIN
    bar = colormap_rdbu_r(np.linspace(JACOBIAN_RANGE[1], JACOBIAN_RANGE[0], bar_h)[:, None].repeat(14, 1), *JACOBIAN_RANGE)
    bar_left = LABEL_WIDTH + len(COLUMNS) * step
    canvas[HEADER: HEADER + bar_h, bar_left: bar_left + 14] = bar

    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    folded = int((np.asarray(jacobian) <= 0).sum())
    draw.text((MARGIN, 6), f"{title}   folded voxels (J<=0): {folded}", fill=TEXT, font=_font(15))
    font = _font(13)
    for col, name in enumerate(COLUMNS):
        draw.text((LABEL_WIDTH + col * step + TILE // 2, HEADER - 6), name, fill=TEXT, font=font, anchor="ms")
    for row, name in enumerate(ROWS):
        draw.text((MARGIN, HEADER + row * step + TILE // 2), name, fill=TEXT, font=font, anchor="lm")
    for value, frac in ((JACOBIAN_RANGE[1], 0.0), (1.0, 0.5), (JACOBIAN_RANGE[0], 1.0)):
        draw.text((bar_left + 18, HEADER + frac * (bar_h - 1)), f"{value:g}", fill=TEXT, font=font, anchor="lm")
    return np.asarray(image)


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
    from PIL import Image

    Image.fromarray(render_qc(fixed, moved, forward, jacobian, title)).save(path, format="PNG", compress_level=6)
