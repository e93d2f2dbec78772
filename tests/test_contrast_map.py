"""Contrast mapping before the network (issue 15): a T2-like moving image becomes T1-like."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from dccnn_deploy.preprocess.contrast_map import fit_contrast_map, map_contrast
from dccnn_deploy.registration.contrast import network_input
from dccnn_deploy.registration.pipeline import _passes
from dccnn_deploy.similarity import SAME_CONTRAST_MIN_CORRELATION, contrast_agreement


def _tissues(shape=(24, 28, 20), seed=0) -> np.ndarray:
    """Nested ellipsoid shells (0 background, 1 CSF, 2 grey, 3 white) with a wobbly boundary."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0)) + 0.05 * np.sin(7 * grid[0]) * np.cos(5 * grid[1])
    labels = np.select([r < 0.4, r < 0.6, r < 0.8], [3, 2, 1], 0)
    return labels, rng


def _paint(labels: np.ndarray, lut: list[float], rng, noise: float = 0.02) -> np.ndarray:
    img = np.asarray(lut, dtype=np.float32)[labels]
    return np.where(labels > 0, np.clip(img + rng.normal(0, noise, labels.shape), 0.06, 1.0), 0.0).astype(np.float32)


def test_map_contrast_turns_an_inverted_contrast_into_the_fixed_one():
    labels, rng = _tissues()
    t1 = _paint(labels, [0.0, 0.25, 0.55, 0.9], rng)
    t2 = _paint(labels, [0.0, 0.95, 0.6, 0.3], rng)
    before = contrast_agreement(torch.from_numpy(t2), torch.from_numpy(t1))
    mapped, _ = map_contrast(t2, t1)
    after = contrast_agreement(torch.from_numpy(mapped), torch.from_numpy(t1))
    assert before < 0 and after > 0.9
    for tissue, value in ((1, 0.25), (2, 0.55), (3, 0.9)):
        assert abs(float(np.median(mapped[labels == tissue])) - value) < 0.05
    assert np.array_equal(mapped[labels == 0], t2[labels == 0])  # background untouched


def test_an_inverted_images_darkest_tissue_is_mapped_not_left_as_background():
    """Inverting an image (max - value) makes its brightest tissue about as dark as the
    background; enclosed by brighter tissue, it is still tissue and gets the fixed contrast."""
    labels, rng = _tissues()
    t1 = _paint(labels, [0.0, 0.25, 0.55, 0.98], rng, noise=0.005)
    inverted = np.where(labels > 0, 1.0 - t1, 0.0).astype(np.float32)  # white matter ~0.02 < 0.05
    assert np.median(inverted[labels == 3]) < 0.05
    mapped, kind = map_contrast(inverted, t1)
    assert kind == "rank (decreasing)"
    assert abs(float(np.median(mapped[labels == 3])) - 0.98) < 0.05  # white matter bright again
    assert np.array_equal(mapped[labels == 0], inverted[labels == 0])  # background untouched


def test_no_monotone_fit_gives_a_local_map_that_tells_apart_tissues_of_one_intensity():
    """One moving intensity (0.5) is two fixed tissues (0.2 on the left, 0.45 on the right), and
    the relation is not monotone (0.2 -> 0.9, 0.5 -> 0.2 / 0.45, 0.8 -> 0.9): a single
    E[fixed | moving] gives both ~0.33; the local map gives each its own."""
    rng = np.random.default_rng(0)
    moving, fixed = np.zeros((2, 40, 40, 40), dtype=np.float32)
    tissue = (slice(4, 36),) * 3
    z = np.arange(40)[None, None, :]
    x = np.arange(40)[:, None, None]
    for image, values in ((moving, (0.2, 0.5, 0.5, 0.8)), (fixed, (0.9, 0.2, 0.45, 0.9))):
        painted = np.select([z < 14, (z < 26) & (x < 20), z < 26, z >= 26], values, 0.0) + np.zeros((40, 40, 40))
        image[tissue] = (painted + rng.normal(0, 0.01, painted.shape))[tissue]
    fitted = fit_contrast_map(moving, fixed)
    assert fitted.kind == "local conditional mean" and fitted.grid_only
    mapped = fitted(moving)
    middle = (slice(None), slice(4, 36), slice(16, 24))
    left, right = mapped[middle][4:12], mapped[middle][28:36]
    assert abs(float(np.median(left)) - 0.2) < 0.07 and abs(float(np.median(right)) - 0.45) < 0.07
    assert np.array_equal(mapped[:4], moving[:4])  # background untouched
    with pytest.raises(ValueError, match="its own grid"):
        fitted(moving[:20])


def test_a_monotone_map_that_leaves_the_pair_disagreeing_gives_way_to_the_local_map(monkeypatch):
    labels, rng = _tissues()
    t1 = _paint(labels, [0.0, 0.25, 0.55, 0.9], rng)
    t2 = _paint(labels, [0.0, 0.95, 0.6, 0.3], rng)
    assert fit_contrast_map(t2, t1).kind == "rank (decreasing)"
    assert fit_contrast_map(t2, t1, monotone=False).kind == "local conditional mean"
    import dccnn_deploy.similarity as similarity

    # before; the moving image mapped: the rank map (still disagreeing), the local map; the fixed image mapped: the same
    verdicts = iter([-0.5, 0.1, 0.8, 0.1, 0.7])
    monkeypatch.setattr(similarity, "contrast_agreement", lambda *_: next(verdicts))
    given = network_input(types.SimpleNamespace(moving_g=t2, fixed_g=t1))
    assert given.info == {"agreement": -0.5, "mapped": True, "map": "local conditional mean", "agreement_after": 0.8,
                          "mapped_image": "moving", "agreement_after_other": 0.7}
    assert given.contrast_map.grid_only and np.array_equal(given.moving, given.contrast_map(t2))
    assert given.fixed is t1 and given.side == "moving"


def test_the_image_whose_map_agrees_better_is_the_one_mapped(monkeypatch):
    """Either image can go into the other's contrast (the network is symmetric): the fixed one
    when its map brings the pair into clearly better agreement, else the moving one."""
    labels, rng = _tissues()
    t1 = _paint(labels, [0.0, 0.25, 0.55, 0.9], rng)
    t2 = _paint(labels, [0.0, 0.95, 0.6, 0.3], rng)
    import dccnn_deploy.similarity as similarity

    verdicts = iter([-0.6, SAME_CONTRAST_MIN_CORRELATION + 0.01, SAME_CONTRAST_MIN_CORRELATION + 0.1])
    monkeypatch.setattr(similarity, "contrast_agreement", lambda *_: next(verdicts))
    given = network_input(types.SimpleNamespace(moving_g=t1, fixed_g=t2))
    assert given.side == "fixed" and given.info["mapped_image"] == "fixed"
    assert given.moving is t1 and np.array_equal(given.fixed, given.contrast_map(t2))
    assert given.contrast_map.kind == "rank (decreasing)"
    assert given.info["agreement_after"] > given.info["agreement_after_other"]
    from dccnn_deploy.registration.contrast import FIXED_MAP_MARGIN

    near_tie = SAME_CONTRAST_MIN_CORRELATION + 0.01 + FIXED_MAP_MARGIN / 2  # the fixed map barely better: the moving one
    verdicts = iter([-0.6, SAME_CONTRAST_MIN_CORRELATION + 0.01, near_tie])
    given = network_input(types.SimpleNamespace(moving_g=t1, fixed_g=t2))
    assert given.side == "moving" and given.fixed is t2 and given.info["agreement_after_other"] == round(near_tie, 4)
    monkeypatch.undo()  # the real measure: mapping either way makes the pair agree
    given = network_input(types.SimpleNamespace(moving_g=t1, fixed_g=t2))
    assert given.info["mapped"] and min(given.info["agreement_after"], given.info["agreement_after_other"]) > 0.8
    mapped = given.moving if given.side == "moving" else given.fixed
    assert contrast_agreement(torch.from_numpy(mapped), torch.from_numpy(t1 if given.side == "fixed" else t2)) > 0.8


def test_pipeline_maps_only_different_contrasts_and_then_runs_all_passes():
    labels, rng = _tissues()
    t1 = _paint(labels, [0.0, 0.25, 0.55, 0.9], rng)
    other_t1 = _paint(labels, [0.0, 0.2, 0.5, 0.85], rng)
    t2 = _paint(labels, [0.0, 0.95, 0.6, 0.3], rng)
    network = types.SimpleNamespace(settings=types.SimpleNamespace(inference_passes=5))
    options = types.SimpleNamespace(passes=None)

    same = network_input(types.SimpleNamespace(moving_g=other_t1, fixed_g=t1))
    assert same.contrast_map is None and same.side is None
    info = same.info
    assert same.moving is other_t1 and same.fixed is t1 and not info["mapped"] and _passes(options, network, info) == 5

    given = network_input(types.SimpleNamespace(moving_g=t2, fixed_g=t1))
    info = given.info
    assert given.contrast_map.kind.startswith("rank")
    mapped, source = (given.moving, t2) if given.side == "moving" else (given.fixed, t1)
    assert np.array_equal(given.contrast_map(source), mapped)
    assert info["mapped"] and info["agreement"] < SAME_CONTRAST_MIN_CORRELATION <= info["agreement_after"]
    assert _passes(options, network, info) == 5
    assert _passes(options, network, {"agreement": -0.5, "mapped": True, "agreement_after": 0.5}) == 1
    assert _passes(options, network, {"agreement": -0.5, "mapped": True, "agreement_after": 0.5,
                                      "map": "conditional mean"}) == 1
    assert _passes(options, network, {"agreement": -0.6, "mapped": True, "agreement_after": 0.55,
                                      "map": "rank (decreasing)"}) == 5  # an inverted contrast: all passes
    assert _passes(types.SimpleNamespace(passes=2), network, info) == 2
    assert _passes(options, network, info, preset=1) == 1  # a refine preset's own count
    assert _passes(types.SimpleNamespace(passes=3), network, info, preset=1) == 3  # --passes wins


def test_map_contrast_keeps_the_fixed_contrast_range_when_tissues_overlap():
    """Misaligned tissues pull E[fixed | moving] towards the mean; the quantile stretch gives the
    mapped image the fixed image's intensity distribution back, tissues in the right order."""
    labels, rng = _tissues()
    t1 = _paint(labels, [0.0, 0.25, 0.55, 0.9], rng)
    t2 = _paint(np.roll(labels, 3, axis=0), [0.0, 0.95, 0.6, 0.3], rng)  # 3 voxels off
    mapped, _ = map_contrast(t2, t1)
    inside_m, inside_f = t2 > 0.05, t1 > 0.05
    qs = [0.1, 0.5, 0.9]
    assert np.allclose(np.quantile(mapped[inside_m], qs), np.quantile(t1[inside_f], qs), atol=0.05)
    shifted = np.roll(labels, 3, axis=0)
    medians = [float(np.median(mapped[shifted == k])) for k in (1, 2, 3)]
    assert medians[0] < medians[1] < medians[2]  # CSF dark, grey, white bright: T1 order


def _bin_means(moving: np.ndarray, fixed: np.ndarray, bins: int = 32):
    index = np.clip((moving * bins).astype(int), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    sums = np.bincount(index, weights=fixed, minlength=bins)
    valid = counts > 0
    return sums[valid] / counts[valid], counts[valid]


def test_monotone_direction_tells_inverted_from_scrambled_contrasts():
    from dccnn_deploy.preprocess.contrast_map import monotone_direction

    rng = np.random.default_rng(3)
    moving = rng.random(20_000)
    noise = rng.normal(0, 0.05, moving.shape)
    for fixed, want in ((0.2 + 0.7 * moving + noise, 1), (0.9 - 0.6 * moving + noise, -1),
                        (np.abs(moving - 0.5) * 1.6 + noise, 0)):  # V-shaped (FLAIR-like): neither
        means, counts = _bin_means(moving, fixed)
        assert monotone_direction(means, counts, fixed) == want


def test_an_inverted_image_is_histogram_matched_exactly():
    labels, rng = _tissues()
    t1 = _paint(labels, [0.0, 0.25, 0.55, 0.9], rng)
    inverted = np.where(labels > 0, 1.0 - t1 + 0.06, 0.0).astype(np.float32)
    fixed = np.roll(t1, 2, axis=0)  # tissues still overlapping after an imperfect affine
    mapped, kind = map_contrast(inverted, fixed)
    assert kind == "rank (decreasing)"
    inside = labels > 0
    order = np.argsort(inverted[inside], kind="stable")
    assert np.all(np.diff(mapped[inside][order]) <= 1e-6)  # a decreasing function of the moving intensity
    assert np.corrcoef(mapped[inside], t1[inside])[0, 1] > 0.99
