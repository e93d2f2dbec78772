"""Network shapes, gradients, parameter counts (Table V), symmetry and the homotopy."""

from __future__ import annotations

import pytest
import torch

from dccnn_deploy import DCCNNLSTMReg, ModelConfig
from dccnn_deploy.cli.params import PAPER_TABLE_V
from dccnn_deploy.model import homotopy
from conftest import lively_model


@pytest.mark.parametrize("shape", [(17, 21, 11), (16, 16, 16), (9, 30, 13)])
def test_shapes_and_dtypes_for_odd_grids(small_config, shape):
    model = DCCNNLSTMReg(small_config)
    x, y = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    out = model(x, y, trace=True)
    assert out.forward.shape == (2, 3, *shape) and out.inverse.shape == (2, 3, *shape)
    assert out.forward.dtype == torch.float32
    assert len(out.scales) == small_config.scales
    for level, trace in enumerate(out.scales):
        assert len(trace.increments) == small_config.steps
        assert len(trace.homotopies) == small_config.steps + 1
        assert trace.fields.shape[0] == 4
        factor = 2 ** (small_config.scales - 1 - level)
        assert trace.fields.shape[2] * factor >= shape[0]


def test_default_config_runs_at_paper_depth():
    model = DCCNNLSTMReg()
    assert model.config.scales == 5 and model.config.steps == 4
    assert model.config.pyramid_channels == (64, 32, 16, 16, 8)
    out = model(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))
    assert out.forward.shape == (1, 3, 16, 16, 16)
    assert torch.isfinite(out.forward).all()


def test_rejects_mismatched_inputs(small_config):
    model = DCCNNLSTMReg(small_config)
    with pytest.raises(ValueError, match="one shape"):
        model(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 9))


def test_gradients_reach_every_parameter(small_config):
    from dccnn_deploy.losses import DCCNNLoss

    torch.manual_seed(0)
    model = DCCNNLSTMReg(small_config)
    x, y = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    total, _ = DCCNNLoss(divisor=small_config.divisor)(model(x, y, trace=True), x, y)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing




def test_parameter_counts_per_step_match_table_v_increment():
    """With the channel set that Table V's counts imply, each step adds exactly 103,416."""
    counts = {
        n: DCCNNLSTMReg(
            ModelConfig(steps=n, pyramid_channels=(64, 32, 32, 16, 8), encoder_channels=(32, 32, 64, 128, 128))
        ).parameter_count()
        for n in PAPER_TABLE_V
    }
    for n in range(2, 7):
        assert counts[n] - counts[n - 1] == 103_416
    for n, paper in PAPER_TABLE_V.items():
        assert abs(counts[n] - paper) == 264  # U-Net widths are not given in the paper


def test_parameter_counts_of_paper_text_channels():
    counts = [DCCNNLSTMReg(ModelConfig(steps=n)).parameter_count() for n in range(1, 7)]
    assert counts[0] == 756_496
    assert all(b - a == 93_048 for a, b in zip(counts, counts[1:]))


def test_swapping_inputs_swaps_forward_and_inverse(small_config):
    torch.manual_seed(0)
    model = DCCNNLSTMReg(small_config).eval()
    x, y = torch.rand(1, 1, 16, 20, 12), torch.rand(1, 1, 16, 20, 12)
    with torch.no_grad():
        a, b = model(x, y), model(y, x)
    assert torch.allclose(a.forward, b.inverse, atol=1e-6)
    assert torch.allclose(a.inverse, b.forward, atol=1e-6)
    assert a.forward.abs().max() > 0


def test_identical_images_give_symmetric_paths(small_config):
    model = DCCNNLSTMReg(small_config).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        out = model(x, x)
    assert torch.allclose(out.forward, out.inverse, atol=1e-6)


@pytest.mark.parametrize("sampler, tolerance", [("gather", 1e-4), ("mosaic", 1e-3)])
def test_samplers_agree(small_config, sampler, tolerance):
    from dccnn_deploy.runtime.backends import cpu_inference_model

    torch.manual_seed(0)
    model = DCCNNLSTMReg(small_config).eval()
    x, y = torch.rand(1, 1, 16, 20, 12), torch.rand(1, 1, 16, 20, 12)
    with torch.no_grad():
        a = model(x, y)
        model.sampler = sampler
        b = model(x, y)
    assert (a.forward - b.forward).abs().max() < tolerance and (a.inverse - b.inverse).abs().max() < tolerance
    assert cpu_inference_model(DCCNNLSTMReg(small_config)).sampler == "mosaic"  # the CPU backend's
    with pytest.raises(ValueError):
        model.sampler = "nearest"


def test_precomputed_fixed_features_and_the_forward_path_alone_give_the_same_registration(small_config):
    import numpy as np

    from dccnn_deploy.runtime.backends import TorchBackend

    torch.manual_seed(1)
    model = DCCNNLSTMReg(small_config).eval()
    x, y = torch.rand(2, 1, 16, 20, 12), torch.rand(2, 1, 16, 20, 12)
    with torch.no_grad():
        whole = model(x, y)
        split = model(x, y, fixed_features=model.features(y))
        alone = model(x, y, inverse=False)  # the forward rows never read the inverse rows
        alone_split = model(x, y, fixed_features=model.features(y), inverse=False)
    assert torch.allclose(whole.forward, split.forward, atol=1e-5)
    assert torch.allclose(whole.inverse, split.inverse, atol=1e-5)
    assert alone.inverse is None and torch.allclose(whole.forward, alone.forward, atol=1e-6)
    assert torch.allclose(whole.forward, alone_split.forward, atol=1e-5)
    with pytest.raises(ValueError, match="both paths"):
        model(x, y, trace=True, inverse=False)
    backend = TorchBackend(model, precision="fp32")
    fwd, inv = backend.run(x[0, 0].numpy(), y[0, 0].numpy(), inverse=False)
    assert inv is None and np.allclose(fwd, backend.run(x[0, 0].numpy(), y[0, 0].numpy())[0], atol=1e-5)


def test_torch_backend_reuses_fixed_features_only_for_an_equal_fixed_image(small_config, monkeypatch):
    import numpy as np

    from dccnn_deploy.runtime.backends import TorchBackend

    torch.manual_seed(2)
    backend = TorchBackend(DCCNNLSTMReg(small_config), precision="fp32")
    reference = TorchBackend(DCCNNLSTMReg(small_config), precision="fp32")
    reference.model.load_state_dict(backend.model.state_dict())
    calls = []
    real = backend.model.features
    monkeypatch.setattr(backend.model, "features", lambda v: calls.append(v.shape) or real(v))
    rng = np.random.default_rng(0)
    fixed, other_fixed = rng.random((2, 16, 20, 12), dtype=np.float32)
    for moving in rng.random((2, 16, 20, 12), dtype=np.float32):
        got = backend.run(moving, fixed)
        want = reference.run(moving, fixed)
        assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(got, want))
    assert len(calls) == 3  # fixed once, then the two moving images
    fixed_copy = fixed.copy()
    fixed_copy[3, 4, 5] += 0.5  # any change in the fixed image: computed anew
    got = backend.run(moving, fixed_copy)
    want = reference.run(moving, fixed_copy)
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(got, want))
    assert len(calls) == 5


def test_homotopy_is_one_at_identity_and_grows_under_compression():
    zero = torch.zeros(1, 3, 10, 10, 10)
    assert torch.allclose(homotopy(zero, 1.0, 0.1), torch.ones(1, 1, 10, 10, 10), atol=1e-6)
    shrink = torch.zeros(1, 3, 10, 10, 10)
    shrink[:, 0] = -0.5 * torch.arange(10.0).view(10, 1, 1)  # det = 0.5
    assert torch.allclose(homotopy(shrink, 1.0, 0.1), torch.full((1, 1, 10, 10, 10), 2.0), atol=1e-5)
    fold = 4.0 * shrink  # u = -2x: det = -1 -> clamped at the floor
    assert torch.allclose(homotopy(fold, 1.0, 0.1), torch.full((1, 1, 10, 10, 10), 10.0), atol=1e-4)


def test_config_round_trip_and_validation():
    cfg = ModelConfig(steps=3)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        ModelConfig(scales=4)
    with pytest.raises(ValueError):
        ModelConfig.from_dict({"bogus": 1})


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_cpu_steps_match_the_pytorch_loop(small_config, precision, monkeypatch):

    """CPU inference runs each scale's steps through the compiled kernels (one channels-last
    convolution input, the LSTM update fused with the Euler step): the same fields as the PyTorch
    loop, both paths and the forward path alone; a model that needs gradients keeps the loop."""
    from dccnn_deploy.ops import native
    from dccnn_deploy.runtime.backends import TorchBackend

    if not native.available():
        pytest.skip("the compiled sampler is not built")
    model = lively_model(2)
    backend = TorchBackend(model, precision=precision)
    x, y = torch.rand(16, 20, 12).numpy(), torch.rand(16, 20, 12).numpy()
    calls = []
    fused_scale = backend.model._fused_scale
    monkeypatch.setattr(backend.model, "_fused_scale", lambda *a: calls.append(1) or fused_scale(*a))
    fused = backend.run(x, y), backend.run(x, y, inverse=False)
    assert len(calls) == 2 * len(small_config.pyramid_channels)
    monkeypatch.setattr(backend.model, "_fuses_steps", lambda feats: False)
    loop = backend.run(x, y), backend.run(x, y, inverse=False)
    tolerance = 1e-4 if precision == "fp32" else 0.02  # bf16: the convolution input rounds at other places
    assert max(float(abs(a).max()) for a in loop[0]) > 0.3
    for got, want in zip(fused, loop):
        assert all(float(abs(a - b).max()) < tolerance for a, b in zip(got, want) if b is not None)
    monkeypatch.undo()
    assert not model._fuses_steps(torch.zeros(1, 4, 2, 2, 2, requires_grad=True))  # training: the loop
    assert model._fuses_steps(torch.zeros(1, 4, 2, 2, 2))
