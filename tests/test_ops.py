"""The one warp (gather) against grid_sample, composition, Jacobian, smoothing, upsampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dccnn_deploy.ops import (
    compose,
    divergence,
    gaussian_smooth,
    identity_grid,
    jacobian_determinant,
    upsample_field,
    warp,
    warp_gridsample,
)


def _reference_grid_sample(vol, disp, padding):
    """grid_sample written out here independently of the package's conversion."""
    d, h, w = vol.shape[2:]
    coords = identity_grid(tuple(disp.shape[2:])) + disp
    gx = coords[:, 2] / (w - 1) * 2 - 1
    gy = coords[:, 1] / (h - 1) * 2 - 1
    gz = coords[:, 0] / (d - 1) * 2 - 1
    grid = torch.stack([gx, gy, gz], dim=-1)
    return F.grid_sample(vol, grid, mode="bilinear", padding_mode=padding, align_corners=True)


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_gather_warp_matches_grid_sample_including_borders(padding):
    torch.manual_seed(0)
    vol = torch.rand(2, 3, 9, 11, 7)
    disp = torch.randn(2, 3, 9, 11, 7) * 3.0  # many samples fall outside the volume
    ref = _reference_grid_sample(vol, disp, padding)
    assert (warp(vol, disp, padding=padding) - ref).abs().max() <= 1e-5
    assert (warp_gridsample(vol, disp, padding=padding) - ref).abs().max() <= 1e-5


def test_warp_to_other_grid_size_and_identity():
    torch.manual_seed(1)
    vol = torch.rand(1, 2, 8, 9, 10)
    assert torch.allclose(warp(vol, torch.zeros(1, 3, 8, 9, 10)), vol, atol=1e-6)
    disp = torch.randn(1, 3, 5, 6, 4)
    assert (warp(vol, disp) - warp_gridsample(vol, disp)).abs().max() <= 1e-5


def test_integer_shift_moves_content():
    vol = torch.zeros(1, 1, 10, 10, 10)
    vol[0, 0, 5, 5, 5] = 1.0
    disp = torch.zeros(1, 3, 10, 10, 10)
    disp[:, 0] = 2.0  # out(p) = vol(p + 2 e_D)
    out = warp(vol, disp)
    assert out[0, 0, 3, 5, 5] == pytest.approx(1.0)
    assert out.sum() == pytest.approx(1.0)


def _affine_field(matrix: torch.Tensor, shape) -> torch.Tensor:
    x = identity_grid(shape)
    return torch.einsum("ij,bjdhw->bidhw", matrix - torch.eye(3), x)


def test_jacobian_of_known_affine_is_exact_everywhere():
    a = torch.tensor([[1.2, 0.1, 0.0], [0.05, 0.9, 0.2], [0.0, -0.1, 1.1]])
    disp = _affine_field(a, (7, 8, 9))
    jac = jacobian_determinant(disp)
    assert jac.shape == (1, 1, 7, 8, 9)
    assert torch.allclose(jac, torch.full_like(jac, float(torch.det(a))), atol=1e-5)
    assert torch.allclose(divergence(disp), torch.full_like(jac, float(torch.trace(a) - 3)), atol=1e-5)


def test_jacobian_detects_folding():
    flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
    assert (jacobian_determinant(_affine_field(flip, (5, 5, 5))) < 0).all()


def test_compose_of_translations_and_inverse():
    shape = (8, 8, 8)
    t1 = torch.zeros(1, 3, *shape)
    t1[:, 0] = 1.5
    t2 = torch.zeros(1, 3, *shape)
    t2[:, 1] = -0.5
    both = compose(t1, t2)
    assert torch.allclose(both[:, 0], torch.full_like(both[:, 0], 1.5))
    assert torch.allclose(both[:, 1], torch.full_like(both[:, 1], -0.5))
    assert compose(t1, -t1)[:, :, 2:-2, 2:-2, 2:-2].abs().max() < 1e-6


def test_gaussian_keeps_constants_and_smooths_noise():
    const = torch.full((1, 1, 6, 7, 8), 2.5)
    assert torch.allclose(gaussian_smooth(const, 1.0), const, atol=1e-6)
    noise = torch.randn(1, 1, 16, 16, 16)
    assert gaussian_smooth(noise, 1.5).std() < 0.5 * noise.std()


@pytest.mark.parametrize("radius", [0, 1, 2, 4])
def test_dilate_equals_a_cubic_max_pool(radius):
    from dccnn_deploy.ops.morphology import dilate

    g = torch.Generator().manual_seed(radius)
    mask = torch.rand((1, 1, 9, 12, 7), generator=g) > 0.97
    mask[0, 0, 0, 0, 0] = mask[0, 0, -1, -1, -1] = True  # corners: borders must not wrap
    expected = F.max_pool3d(mask.float(), 2 * radius + 1, stride=1, padding=radius) > 0
    assert torch.equal(dilate(mask, radius), expected)
    assert torch.equal(dilate(mask.float(), radius), expected)


def test_upsample_field_doubles_a_translation():
    disp = torch.ones(1, 3, 4, 5, 6)
    up = upsample_field(disp)
    assert up.shape == (1, 3, 8, 10, 12)
    assert torch.allclose(up, torch.full_like(up, 2.0))
    up4 = upsample_field(disp, 4)
    assert up4.shape == (1, 3, 16, 20, 24) and torch.allclose(up4, torch.full_like(up4, 4.0))


@pytest.fixture(params=["native", "mosaic"])
def cpu_sampler(request, monkeypatch):
    """Each CPU sampling path of ``ops.warp``: the compiled kernel (skipped where it is not built)
    and PyTorch's (the 2-D mosaic, plain grid_sample) with the kernel switched off."""
    from dccnn_deploy.ops import native

    if request.param == "native" and not native.available():
        pytest.skip("the compiled sampler is not built")
    if request.param == "mosaic":
        monkeypatch.setattr(native, "serves", lambda volume: False)
    return request.param


def _grid_sample_warp(volume, disp, padding):
    """The reference: PyTorch's own 3-D grid_sample at identity + disp (voxels)."""
    from dccnn_deploy.ops.warp import normalised_grid

    return F.grid_sample(volume, normalised_grid(disp, volume.shape[2:]), align_corners=True, padding_mode=padding)


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("shape", [(2, 3, 9, 7, 11), (1, 12, 2, 5, 4), (1, 3, 17, 3, 2), (1, 1, 6, 5, 4), (1, 5, 4, 6, 3)])
def test_trilinear_sampling_matches_grid_sample(padding, shape, cpu_sampler):
    from dccnn_deploy.ops.warp import volume_sampler

    torch.manual_seed(0)
    volume = torch.randn(*shape)
    grid = torch.rand(shape[0], 6, 5, 7, 3) * 2.6 - 1.3  # a third of the points outside
    grid[0, 0, 0, :3] = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [1.0, -1.0, 0.0]])  # corners, faces
    with torch.no_grad():
        want = F.grid_sample(volume, grid, align_corners=True, padding_mode=padding)
        got = volume_sampler(volume, padding)(grid)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-5
    # a ramp along each axis reads back the sample position: exact to ~2e-4 voxel on a model grid
    d, h, w = 80, 96, 112
    points = torch.rand(1, 20, 20, 20, 3) * 1.8 - 0.9
    for axis, n in enumerate((w, h, d)):
        ramp = torch.arange(n, dtype=torch.float32).view([1, 1] + [n if k == 2 - axis else 1 for k in range(3)])
        with torch.no_grad():
            got = volume_sampler(ramp.expand(1, 3, d, h, w).contiguous(), padding)(points)
        assert (got[0] - (points[0, ..., axis] + 1) * 0.5 * (n - 1)).abs().max() < 3e-4
    # with gradients (training, the affine stage), the 3-D kernel runs
    grid.requires_grad_(True)
    assert torch.equal(volume_sampler(volume, padding)(grid),
                       F.grid_sample(volume, grid, align_corners=True, padding_mode=padding))


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_displaced_sampler_matches_grid_sample(padding, cpu_sampler):
    """The network's feature warp (voxel displacements, tiled once) reads what grid_sample reads."""
    from dccnn_deploy.ops.warp import displaced_sampler, warp_gridsample

    torch.manual_seed(1)
    volume = torch.randn(2, 8, 10, 12, 14)
    sample = displaced_sampler(volume, padding)
    for _ in range(2):  # read several times (each step of a scale)
        disp = torch.randn(2, 3, 10, 12, 14) * 4.0  # many points outside
        disp[0, :, 0, 0, :4] = torch.tensor([[1e6, -1e6, float("nan"), 0.0]] * 3)  # far outside, not a number
        with torch.no_grad():
            got, want = sample(disp), _grid_sample_warp(volume, disp, padding)
        finite = torch.isfinite(disp).all(dim=1, keepdim=True).expand_as(want)
        assert got.shape == want.shape and (got - want)[finite].abs().max() < 1e-4
        with torch.no_grad():  # another output grid than the volume's (warp_gridsample's convention)
            other = torch.randn(2, 3, 7, 5, 9) * 3.0
            assert (warp_gridsample(volume, other, padding=padding) - _grid_sample_warp(volume, other, padding)).abs().max() < 1e-4
    assert sample(torch.zeros(2, 3, 10, 12, 14)).sub(volume).abs().max() < 1e-4  # identity reads the volume
    # gradients flow where training needs them (PyTorch samples then)
    disp = torch.zeros(2, 3, 10, 12, 14, requires_grad=True)
    warp_gridsample(volume, disp, padding=padding).sum().backward()
    assert disp.grad is not None


def test_native_sampler_can_be_switched_off(monkeypatch):
    """``DCCNN_NATIVE=0`` makes the package sample with PyTorch only; a built library is found."""
    from pathlib import Path

    from dccnn_deploy.ops import native

    built = list((Path(native.__file__).resolve().parent.parent / "_native").glob("_trilinear*.so"))
    native._library.cache_clear()
    try:
        monkeypatch.setenv("DCCNN_NATIVE", "0")
        assert not native.available() and not native.serves(torch.zeros(1, 3, 4, 4, 4))
        native._library.cache_clear()
        monkeypatch.setenv("DCCNN_NATIVE", "1")
        assert native.available() == bool(built)
    finally:
        native._library.cache_clear()



@pytest.mark.parametrize("shape", [(2, 3, 9, 7, 11), (1, 3, 1, 5, 4), (1, 3, 2, 6, 3), (1, 3, 33, 17, 5)])
def test_jacobian_determinant_compiled_matches_pytorch(shape, monkeypatch):
    """The compiled determinant takes the same differences as the PyTorch one (borders included)."""
    from dccnn_deploy.ops import native

    if not native.available():
        pytest.skip("the compiled sampler is not built")
    torch.manual_seed(2)
    disp = torch.randn(*shape) * 1.5
    with torch.no_grad():
        got = jacobian_determinant(disp)
        monkeypatch.setattr(native, "serves", lambda volume: False)
        want = jacobian_determinant(disp)
    assert got.shape == want.shape == (shape[0], 1, *shape[2:])
    assert (got - want).abs().max() < 1e-4 * want.abs().max().clamp(min=1.0)


def test_differentiable_compiled_sampling_matches_grid_sample_gradient():
    """The affine stage's sampling (zeros padding, gradient to the displacement) gives grid_sample's
    values and gradients, points outside the volume included."""
    from dccnn_deploy.ops import native
    from dccnn_deploy.ops.warp import warp_gridsample

    if not native.available():
        pytest.skip("the compiled sampler is not built")
    torch.manual_seed(3)
    volume = torch.randn(1, 2, 12, 14, 10)
    disp = (torch.randn(1, 3, 1, 4, 500) * 8.0).requires_grad_(True)  # many points outside
    got = warp_gridsample(volume, disp, padding="zeros")
    (got_grad,) = torch.autograd.grad((got * torch.linspace(-1, 1, 500)).sum(), disp)
    want = _grid_sample_warp(volume, disp, "zeros")
    (want_grad,) = torch.autograd.grad((want * torch.linspace(-1, 1, 500)).sum(), disp)
    assert (got - want).abs().max() < 1e-5
    assert (got_grad - want_grad).abs().max() < 1e-4 * want_grad.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_sampling_into_a_channels_last_buffer(dtype):
    """``displaced_into`` writes what ``displaced`` gives (rounded as ``Tensor.to``) into its own
    channels of a channels-last buffer and leaves the others alone."""
    from dccnn_deploy.ops import native

    if not native.available():
        pytest.skip("the compiled sampler is not built")
    torch.manual_seed(4)
    volume = torch.randn(2, 5, 9, 7, 6)
    disp = torch.randn(2, 3, 9, 7, 6) * 3.0
    source = native.NativeSource(volume, "border")
    buffer = torch.full((2, 9, 9, 7, 6), 7.0, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
    source.displaced_into(disp, buffer, 3)
    want = source.displaced(disp)
    assert torch.equal(buffer[:, 3:8], want.to(dtype))
    assert bool((buffer[:, :3] == 7.0).all() and (buffer[:, 8:] == 7.0).all())
    assert (want - _grid_sample_warp(volume, disp, "border")).abs().max() < 1e-5
    with pytest.raises(ValueError, match="displaced_into"):
        source.displaced_into(disp, buffer.contiguous(), 3)  # not channels-last
    with pytest.raises(ValueError, match="displaced_into"):
        source.displaced_into(disp, buffer, 5)  # channels beyond the buffer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_lstm_update_and_euler_step_match_pytorch(dtype):
    """One fused pass gives the CNN-LSTM update and the Euler step of the PyTorch loop
    (model/cnn_lstm.py, model/dccnn.py), saturated gates included, and packs the new displacement
    into the next convolution's input."""
    from dccnn_deploy.ops import native

    if not native.available():
        pytest.skip("the compiled sampler is not built")
    torch.manual_seed(5)
    shape = (2, 7, 9, 6)
    gates = (torch.randn(2, 12, *shape[1:]) * 6.0).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    memory, disp = torch.randn(2, 3, *shape[1:]), torch.randn(2, 3, *shape[1:])
    h = torch.rand(2, 1, *shape[1:]) + 0.5
    buffer = torch.zeros((2, 8, *shape[1:]), dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
    got_disp, got_memory = native.lstm_euler(gates, memory, disp, h, 0.25, (buffer, 5))
    f, i, g, o = torch.split(gates.float(), 3, dim=1)
    want_memory = torch.sigmoid(f) * memory + torch.sigmoid(i) * torch.tanh(g)
    want_disp = disp + 0.25 * (torch.sigmoid(o) * torch.tanh(want_memory)) / h
    assert (got_memory - want_memory).abs().max() < 2e-6
    assert (got_disp - want_disp).abs().max() < 2e-6
    assert torch.equal(buffer[:, 5:], got_disp.to(dtype)) and not buffer[:, :5].any()
    plain_disp, plain_memory = native.lstm_euler(gates, memory, disp, h, 0.25)
    assert torch.equal(plain_disp, got_disp) and torch.equal(plain_memory, got_memory)
    with pytest.raises(ValueError, match="lstm_euler"):
        native.lstm_euler(gates.contiguous(), memory, disp, h, 0.25)  # gates not channels-last


@pytest.mark.parametrize("shape", [(2, 3, 9, 7, 11), (1, 1, 1, 5, 4), (1, 2, 3, 1, 17), (1, 1, 33, 17, 5)])
def test_compiled_smoothing_and_homotopy_match_pytorch(shape, monkeypatch):
    """The compiled Gaussian (replicated borders, axes narrower than the kernel included) and the
    homotopy's ``1 / max(J, floor)`` give the PyTorch values."""
    from dccnn_deploy.model import homotopy
    from dccnn_deploy.ops import native

    if not native.available():
        pytest.skip("the compiled sampler is not built")
    torch.manual_seed(6)
    volume = torch.randn(*shape)
    disp = torch.randn(shape[0], 3, *shape[2:]) * 0.8  # folds too: J below the floor
    with torch.no_grad():
        got = [gaussian_smooth(volume, sigma) for sigma in (0.7, 1.0, 2.5)] + [homotopy(disp, 1.0, 0.1)]
        reciprocal = native.jacobian_determinant(disp, 0.1)
        monkeypatch.setattr(native, "serves", lambda volume: False)
        want = [gaussian_smooth(volume, sigma) for sigma in (0.7, 1.0, 2.5)] + [homotopy(disp, 1.0, 0.1)]
        jac = jacobian_determinant(disp)
    assert bool((jac < 0.1).any())
    assert (reciprocal - 1.0 / jac.clamp(min=0.1)).abs().max() < 1e-5 * 10.0
    for g, w in zip(got, want):
        assert g.shape == w.shape and (g - w).abs().max() < 1e-5 * w.abs().max().clamp(min=1.0)
    with pytest.raises(ValueError, match="smooth"):
        native.smooth(volume, [0.5, 0.5])


@pytest.mark.parametrize("layout, dtype, channels", [
    ("planar", torch.float32, 3), ("planar", torch.float32, 5), ("channels_last", torch.float32, 16),
    ("channels_last", torch.bfloat16, 16), ("channels_last", torch.bfloat16, 7), ("channels_last", torch.bfloat16, 64),
])
def test_compiled_upsampling_matches_interpolate(layout, dtype, channels):
    """x2 trilinear upsampling (``upsample_features``, ``upsample_field``, the U-Net decoder's
    ``upsample_concat``) on the compiled path gives ``F.interpolate``'s values (float32 within
    rounding, bfloat16 within one unit of its last place), in the input's layout and dtype, odd
    sizes and a batch of two included."""
    from dccnn_deploy.ops import native
    from dccnn_deploy.ops.resize import upsample_concat, upsample_features

    if not native.available():
        pytest.skip("the compiled sampler is not built")
    torch.manual_seed(7)
    volume = torch.randn(2, channels, 5, 3, 6).to(dtype)
    if layout == "channels_last":
        volume = volume.contiguous(memory_format=torch.channels_last_3d)
    want = F.interpolate(volume.float(), scale_factor=2.0, mode="trilinear", align_corners=False)
    tolerance = 1e-6 if dtype == torch.float32 else 2.0 ** -7 * want.abs().max()
    with torch.no_grad():
        assert native.upsamples(volume)
        got, field = upsample_features(volume), upsample_field(volume)
        skip = torch.randn(2, 4, 10, 6, 12).to(dtype).contiguous(memory_format=torch.channels_last_3d)
        joined = upsample_concat(volume, skip)
    assert got.dtype == dtype and got.is_contiguous(memory_format=_memory_format(volume))
    assert (got.float() - want).abs().max() <= tolerance
    assert (field.float() - 2.0 * want).abs().max() <= 2.0 * tolerance
    assert joined.shape == (2, channels + 4, 10, 6, 12) and joined.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(joined[:, :channels], got) and torch.equal(joined[:, channels:], skip)


def _memory_format(volume: torch.Tensor) -> torch.memory_format:
    return torch.contiguous_format if volume.is_contiguous() else torch.channels_last_3d


def test_upsampling_stays_in_pytorch_where_gradients_flow():
    """A volume that needs gradients (training) is upsampled by ``F.interpolate``: the kernel is
    opaque to autograd."""
    from dccnn_deploy.ops import native
    from dccnn_deploy.ops.resize import upsample_field

    volume = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
    assert not native.upsamples(volume)
    upsample_field(volume).sum().backward()
    assert volume.grad is not None and torch.allclose(volume.grad, torch.full_like(volume, 16.0))
