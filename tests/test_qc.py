"""The QC montage (registration/qc.py): layout, colours and the PNG it writes."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dccnn_deploy.registration import qc


def test_jacobian_colours_blue_white_red():
    rgb = qc.colormap_rdbu_r(np.array([0.0, 1.0, 2.0, -5.0, 9.0]), 0.0, 2.0)
    assert tuple(rgb[0]) == (5, 48, 97)  # compressed: dark blue
    assert tuple(rgb[1]) == (247, 247, 247)  # volume kept: white
    assert tuple(rgb[2]) == (103, 0, 31)  # expanded: dark red
    assert tuple(rgb[3]) == tuple(rgb[0]) and tuple(rgb[4]) == tuple(rgb[2])  # clipped


def test_montage_shows_the_volumes_in_their_columns(tmp_path):
    shape = (20, 24, 28)
    fixed = np.zeros(shape, np.float32)
    moved = np.ones(shape, np.float32)
    jac = np.full(shape, 2.0, np.float32)
    jac[10, 12, 14] = -1.0
    image = qc.render_qc(fixed, moved, np.zeros((3, *shape), np.float32), jac, title="a -> b")
    step = qc.TILE + qc.MARGIN
    assert image.shape == (qc.HEADER + 3 * step, qc.LABEL_WIDTH + 5 * step + qc.COLORBAR_WIDTH, 3)
    centre = (qc.HEADER + qc.TILE // 2, qc.LABEL_WIDTH + qc.TILE // 2)  # middle of the first tile

    def pixel(col: int, row: int = 0) -> tuple[int, ...]:
        return tuple(image[centre[0] + row * step + 20, centre[1] + col * step + 20])

    assert pixel(0) == (0, 0, 0)  # fixed: black
    assert pixel(1) == (255, 255, 255)  # moved: white
    assert {pixel(2, r) for r in range(3)} <= {(0, 0, 0), (255, 255, 255)}  # checkerboard of the two
    assert pixel(4, 2) == (103, 0, 31)  # Jacobian 2: red
    path = tmp_path / "qc.png"
    qc.save_qc_png(path, fixed, moved, np.zeros((3, *shape), np.float32), jac, title="a -> b")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (image.shape[1], image.shape[0])
        assert np.array_equal(np.asarray(png.convert("RGB")), image)
