"""Metrics on constructed shapes with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dccnn_deploy.metrics import (
    dice,
    folding_percent,
    hd95,
    inverse_consistency,
    jacobian_map,
    mean_of,
    ncc,
    ssim,
)


def _cube(shape, lo, hi, label=1):
    a = np.zeros(shape, np.int32)
    a[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = label
    return a


def test_dice_constructed_overlap():
    a = _cube((20, 20, 20), (0, 0, 0), (10, 10, 10))
    b = _cube((20, 20, 20), (5, 0, 0), (15, 10, 10))  # half overlap
    assert dice(a, a) == {1: 1.0}
    assert dice(a, b)[1] == pytest.approx(0.5)
    two = a + 2 * _cube((20, 20, 20), (12, 12, 12), (16, 16, 16))
    d = dice(two, a)
    assert d[1] == 1.0 and d[2] == 0.0 and mean_of(d) == 0.5
    assert np.isnan(dice(a, a, labels=[7])[7])


def test_hd95_of_shifted_cube_in_mm():
    a = _cube((30, 30, 30), (5, 5, 5), (15, 15, 15))
    b = _cube((30, 30, 30), (8, 5, 5), (18, 15, 15))  # 3 voxels along axis 0
    assert hd95(a, a)[1] == 0.0
    assert hd95(a, b)[1] == pytest.approx(3.0)
    assert hd95(a, b, spacing=(2.0, 1.0, 1.0))[1] == pytest.approx(6.0)
    assert np.isnan(hd95(a, np.zeros_like(a), labels=[1])[1])


def test_ssim_and_ncc():
    rng = np.random.default_rng(0)
    a = rng.random((16, 16, 16)).astype(np.float32)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert ssim(a, rng.random((16, 16, 16))) < 0.3
    assert ncc(a, 2 * a + 1) == pytest.approx(1.0)
    assert ncc(a, -a) == pytest.approx(-1.0)


def test_jacobian_and_folding_percent():
    disp = np.zeros((3, 8, 8, 8), np.float32)
    disp[0] = 0.5 * np.arange(8).reshape(8, 1, 1)  # det = 1.5
    assert np.allclose(jacobian_map(disp), 1.5, atol=1e-5)
    assert folding_percent(disp) == 0.0
    disp[0, :4] = -2.0 * np.arange(4).reshape(4, 1, 1)  # folds in the first half
    assert folding_percent(disp) == pytest.approx(37.5)  # slices 0-2 fold; slice 3 straddles the jump


def test_inverse_consistency_of_translation_pair():
    f = torch.zeros(3, 10, 10, 10)
    f[0] = 1.0
    ic = inverse_consistency(f, -f)
    assert ic["mean"] < 0.11  # only the clamped border slice deviates
    ic_bad = inverse_consistency(f, f)
    assert ic_bad["mean"] == pytest.approx(2.0, abs=0.11)
