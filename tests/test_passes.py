"""Network passes at inference: composition order of forward and inverse fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dccnn_deploy.runtime.passes import run_passes


def _blob(centre: float, shape=(24, 24, 24)) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    return np.exp(-((idx - np.array(centre, dtype=np.float32).reshape(3, 1, 1, 1)) ** 2).sum(0) / 20.0).astype(np.float32)


def _half_step_network(moving: np.ndarray, fixed: np.ndarray, inverse: bool = True):
    """A 'network' that recovers half of a pure translation between two blobs (by centroids);
    ``inverse=False`` skips its inverse path, as the torch backend does."""
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in moving.shape], indexing="ij"))
    centroid = lambda im: (idx * im).reshape(3, -1).sum(1) / im.sum()  # noqa: E731
    shift = 0.5 * (centroid(moving) - centroid(fixed))  # fixed x -> moving x + shift
    fwd = np.broadcast_to(shift.reshape(3, 1, 1, 1), (3, *moving.shape)).copy()
    return fwd, (-fwd if inverse else None)


def test_passes_compose_towards_the_full_translation():
    moving, fixed = _blob((14.0, 12.0, 12.0)), _blob((10.0, 12.0, 12.0))
    errors = []
    for passes in (1, 2, 3):
        fwd, inv = run_passes(_half_step_network, moving, fixed, passes)
        centre = fwd[0, :, 12, 12, 12].numpy()
        errors.append(abs(centre[0] - 4.0))
        # the inverse undoes the forward map (constant fields: exact up to interpolation)
        assert np.allclose(inv[0, :, 12, 12, 12].numpy(), -centre, atol=0.05)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.7


def test_one_pass_is_the_network_itself_and_passes_are_checked():
    moving, fixed = _blob((14.0, 12.0, 12.0)), _blob((10.0, 12.0, 12.0))
    fwd, inv = run_passes(_half_step_network, moving, fixed, 1)
    ref_fwd, ref_inv = _half_step_network(moving, fixed)
    assert torch.equal(fwd[0], torch.from_numpy(ref_fwd)) and torch.equal(inv[0], torch.from_numpy(ref_inv))
    with pytest.raises(ValueError):
        run_passes(_half_step_network, moving, fixed, 0)


def test_forward_only_passes_give_the_same_forward_map_and_no_inverse():
    moving, fixed = _blob((16.0, 12.0, 12.0)), _blob((8.0, 12.0, 12.0))
    calls = []

    def network(m, f, inverse=True):
        calls.append(inverse)
        return _half_step_network(m, f, inverse)

    both = run_passes(network, moving, fixed, 3)
    fwd, inv = run_passes(network, moving, fixed, 3, inverse=False)
    assert inv is None and torch.equal(fwd, both[0])
    assert calls == [True] * 3 + [False] * 3  # the backend is told, pass after pass


def test_inverse_consistency_keeps_the_given_inverse_when_the_numerical_one_folds(monkeypatch):
    from dccnn_deploy.ops import invert

    fwd = torch.zeros(1, 3, 12, 12, 12)
    given = torch.zeros(1, 3, 12, 12, 12)
    folded = torch.zeros(1, 3, 12, 12, 12)
    folded[0, 0, 6] = 3.0  # a sheet pushed past its neighbours: det J <= 0
    monkeypatch.setattr(invert, "invert_displacement", lambda f, it, init=None: folded)
    monkeypatch.setattr(invert, "repair_folds", lambda d, **kw: d)  # a fold that smoothing cannot remove
    assert invert.make_inverse_consistent(fwd, given)[1] is given
    monkeypatch.setattr(invert, "invert_displacement", lambda f, it, init=None: given + 0.0)
    assert invert.make_inverse_consistent(fwd, folded)[1] is not folded
    # no inverse given: the fallback (the network's inverse) is asked for only when the numerical one folds
    asked = []
    fallback = lambda: asked.append(1) or given  # noqa: E731
    assert invert.make_inverse_consistent(fwd, None, fallback=fallback)[1] is not given and not asked
    monkeypatch.setattr(invert, "invert_displacement", lambda f, it, init=None: folded)
    assert invert.make_inverse_consistent(fwd, None, fallback=fallback)[1] is given and asked == [1]
    assert invert.make_inverse_consistent(fwd, None)[1] is folded  # nothing better to offer


def test_numerical_inverse_from_scratch_matches_the_one_started_from_a_near_inverse():
    from dccnn_deploy.ops.invert import inverse_residual, make_inverse_consistent
    from dccnn_deploy.ops.smoothing import gaussian_smooth

    gen = torch.Generator().manual_seed(0)
    fwd = 3.0 * gaussian_smooth(torch.randn(1, 3, 20, 20, 20, generator=gen), 3.0)
    fwd = fwd * (2.0 / float(fwd.abs().max()))  # smooth, up to 2 voxels
    _, started = make_inverse_consistent(fwd, -fwd)
    _, scratch = make_inverse_consistent(fwd, None)
    inner = (slice(None), slice(None), *(slice(4, -4),) * 3)  # away from the border padding
    assert float(inverse_residual(fwd, scratch)[inner].max()) < 0.02
    assert float((scratch - started)[inner].abs().max()) < 0.02


def test_inverse_consistency_repairs_a_folded_forward_field_locally():
    from dccnn_deploy.ops.invert import make_inverse_consistent
    from dccnn_deploy.ops.jacobian import jacobian_determinant

    fwd = torch.zeros(1, 3, 16, 16, 16)
    fwd[0, 0, 8, 6:10, 6:10] = 3.0  # a patch pushed past its neighbours: det J <= 0 next to it
    assert int((jacobian_determinant(fwd) <= 0).sum()) > 0
    repaired, inverse = make_inverse_consistent(fwd, None)
    assert int((jacobian_determinant(repaired) <= 0).sum()) == 0
    assert int((jacobian_determinant(inverse) <= 0).sum()) == 0
    assert torch.equal(repaired[..., :4, :, :], fwd[..., :4, :, :])  # far from the fold: untouched
    clean = 0.3 * torch.sin(torch.linspace(0, 3, 16)).expand(1, 3, 16, 16, 16).contiguous()
    assert make_inverse_consistent(clean, None)[0] is clean  # a fold-free field is returned as given


def test_nearly_folded_forward_nodes_are_smoothed_too():
    """Nodes compressed below FORWARD_MIN_DETERMINANT (the written 1 mm warp can fold between
    them) are smoothed; a field compressed less is returned as given."""
    from dccnn_deploy.ops.invert import FORWARD_MIN_DETERMINANT, make_inverse_consistent
    from dccnn_deploy.ops.jacobian import jacobian_determinant

    def squeezed(amount: float) -> torch.Tensor:  # a slab compressed along axis 0, det ~1 - amount
        fwd = torch.zeros(1, 3, 16, 16, 16)
        fwd[0, 0, 8:] = -amount * torch.arange(8.0).view(8, 1, 1) - amount * 0.5
        return fwd

    near = squeezed(0.98)
    assert 0 < float(jacobian_determinant(near).min()) < FORWARD_MIN_DETERMINANT
    repaired = make_inverse_consistent(near, None)[0]
    assert float(jacobian_determinant(repaired).min()) >= FORWARD_MIN_DETERMINANT
    assert torch.equal(repaired[..., :4, :, :], near[..., :4, :, :])  # far from it: untouched
    mild = squeezed(0.5)
    assert make_inverse_consistent(mild, None)[0] is mild


def test_settled_passes_end_when_a_pass_stops_improving_the_alignment():
    from dccnn_deploy.runtime.passes import settle_passes

    moving, fixed = _blob((16.0, 12.0, 12.0)), _blob((8.0, 12.0, 12.0))
    full = settle_passes(_half_step_network, moving, fixed, 8, min_gain=None)
    assert full.kept == 8 and full.scores == []
    settled = settle_passes(_half_step_network, moving, fixed, 8, min_gain=1e-3)
    gains = np.diff(settled.scores)
    assert 1 <= settled.kept < 8 and len(settled.scores) == settled.kept + 2  # the pass that stopped them was scored
    assert (gains[:-1] >= 1e-3).all() and gains[-1] < 1e-3
    again = run_passes(_half_step_network, moving, fixed, settled.kept)
    assert torch.allclose(settled.forward, again[0]) and torch.allclose(settled.inverse, again[1])


def test_an_aligned_pair_keeps_no_pass():
    """A network that returns a small field of its own on a pair already aligned (as a trained one
    does on an image against itself): every pass lowers the similarity, none is kept."""
    from dccnn_deploy.runtime.passes import settle_passes

    image = _blob((12.0, 12.0, 12.0)) + 0.3 * _blob((8.0, 15.0, 10.0))
    rng = np.random.default_rng(0)

    def wobbly(m, f, inverse=True):
        field = 0.4 * rng.standard_normal((3, *m.shape)).astype(np.float32)
        return field, (-field if inverse else None)

    result = settle_passes(wobbly, image, image, 5)
    assert result.kept == 0 and len(result.scores) == 2 and result.scores[1] < result.scores[0]
    assert not result.forward.any() and not result.inverse.any() and result.forward.shape == (1, 3, *image.shape)
    assert settle_passes(wobbly, image, image, 5, inverse=False).inverse is None
