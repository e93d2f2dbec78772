"""Each loss on cases with a known value, and a short overfit on a shifted blob."""

from __future__ import annotations

import pytest
import torch

from conftest import blob
from dccnn_deploy import DCCNNLSTMReg
from dccnn_deploy.config import LossWeights
from dccnn_deploy.losses import (
    DCCNNLoss,
    control_increment_loss,
    cycle_loss,
    jacobian_loss,
    similarity_loss,
    smoothness_loss,
)
from dccnn_deploy.model.dccnn import ScaleTrace
from dccnn_deploy.ops.local_stats import local_ncc


def test_local_ncc_known_values():
    torch.manual_seed(0)
    a = torch.rand(2, 1, 12, 12, 12)
    assert torch.allclose(local_ncc(a, a), torch.ones(2), atol=1e-3)
    assert torch.allclose(local_ncc(a, 3.0 * a + 1.0), torch.ones(2), atol=1e-3)
    assert torch.allclose(local_ncc(a, -a), -torch.ones(2), atol=1e-3)
    assert local_ncc(a, torch.rand(2, 1, 12, 12, 12)).abs().max() < 0.2


def _trace(fields):
    return ScaleTrace(fields=fields)


def test_jacobian_loss_values():
    zero = torch.zeros(2, 3, 6, 6, 6)
    assert float(jacobian_loss([_trace(zero)])) == 0.0
    fold = torch.zeros(2, 3, 6, 6, 6)
    fold[:, 0] = -2.0 * torch.arange(6.0).view(6, 1, 1)  # det = -1 everywhere
    # forward and inverse rows each contribute mean ReLU(1) = 1, on each of two scales
    assert float(jacobian_loss([_trace(fold), _trace(fold)])) == pytest.approx(4.0)


def test_smoothness_loss_values():
    assert float(smoothness_loss([_trace(torch.ones(2, 3, 5, 5, 5))])) == 0.0  # translation
    lin = torch.zeros(2, 3, 5, 5, 5)
    lin[:, 1] = 0.5 * torch.arange(5.0).view(1, 5, 1)  # ||grad u||^2 = 0.25
    assert float(smoothness_loss([_trace(lin)])) == pytest.approx(0.5)


def test_similarity_loss_identity_and_weights():
    x = blob((16, 16, 16))
    y = blob((16, 16, 16), centre=(9, 8, 8))
    images = torch.cat([x, y])
    zero = [_trace(torch.zeros(2, 3, 8, 8, 8)), _trace(torch.zeros(2, 3, 16, 16, 16))]
    base = float(similarity_loss(zero, images, 9, [0.8, 0.8]))
    expected = -0.8 * 2 * 2 * float(local_ncc(x, y).mean())  # 2 scales x 2 directions
    assert base == pytest.approx(expected, rel=1e-5)
    same = float(similarity_loss(zero, torch.cat([x, x]), 9, [0.8, 0.8]))
    assert same == pytest.approx(-3.2, abs=2e-2)  # flat windows (variance 0) score 0, not 1
    # the right shift (y = x moved +1 voxel along D) scores better than no shift
    shift = torch.zeros(2, 3, 16, 16, 16)
    shift[0, 0], shift[1, 0] = -1.0, 1.0
    assert float(similarity_loss([_trace(shift)], images, 9, [0.8])) < float(similarity_loss(zero[1:], images, 9, [0.8]))


def test_cycle_loss_perfect_inverse_pair():
    x = blob((16, 16, 16))
    images = torch.cat([x, blob((16, 16, 16), radius=5)])
    shift = torch.zeros(2, 3, 16, 16, 16)
    shift[0, 1], shift[1, 1] = 1.0, -1.0  # exact inverses (away from borders)
    perfect = float(cycle_loss(shift, images, 9))
    assert perfect == pytest.approx(-2.0, abs=0.04)  # border clamping loses the last slice
    bad = shift.clone()
    bad[1, 1] = 1.0
    assert float(cycle_loss(bad, images, 9)) > perfect + 0.1


def test_control_increment_loss_values():
    u = torch.zeros(2, 3, 6, 6, 6)
    u[:, 0] = 0.5 * torch.arange(6.0).view(6, 1, 1)  # div u = 0.5
    h0 = torch.ones(2, 1, 6, 6, 6)
    # dh/dt = (h1 - h0) * steps; with h1 = h0 - 0.25 and 2 steps: dh/dt = -0.5 -> residual 0
    trace = ScaleTrace(fields=u, increments=[u, u], homotopies=[h0, h0 - 0.25, h0 - 0.5])
    assert float(control_increment_loss([trace])) == pytest.approx(0.0, abs=1e-6)
    trace.homotopies = [h0, h0, h0]
    assert float(control_increment_loss([trace])) == pytest.approx(1.0)  # |0.5| x 2 paths


def test_total_loss_requires_trace_and_weights(small_config):
    model = DCCNNLSTMReg(small_config)
    x = blob((16, 16, 16))
    with pytest.raises(ValueError, match="trace=True"):
        DCCNNLoss()(model(x, x), x, x)
    out = model(x, x, trace=True)
    total, terms = DCCNNLoss(divisor=small_config.divisor)(out, x, x)
    w = LossWeights()
    recomposed = (
        terms["similarity"] + w.jacobian * terms["jacobian"] + w.smooth * terms["smooth"]
        + w.cycle * terms["cycle"] + w.control * terms["control"]
    )
    assert float(total.detach()) == pytest.approx(recomposed, rel=1e-5)
    assert (w.similarity, w.jacobian, w.smooth, w.cycle, w.control) == (0.8, 1e5, 1.0, 0.1, 0.1)


def test_twenty_step_overfit_on_shifted_blob(small_config):
    torch.manual_seed(0)
    shape = (24, 24, 24)
    x = blob(shape, centre=(10, 12, 12), radius=5)
    y = blob(shape, centre=(14, 12, 12), radius=5)
    model = DCCNNLSTMReg(small_config)
    loss_fn = DCCNNLoss(divisor=small_config.divisor)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def ncc_after():
        with torch.no_grad():
            out = model(x, y)
            from dccnn_deploy.ops import warp

            return float(local_ncc(warp(x, out.forward), y))

    ncc0 = ncc_after()
    losses = []
    for _ in range(20):
        opt.zero_grad()
        total, _ = loss_fn(model(x, y, trace=True), x, y)
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert min(losses[-3:]) < losses[0] - 0.05
    assert ncc_after() > ncc0 + 0.02
