"""The five training losses of DCCNN-LSTM-Reg (paper Sec. III-D) with the paper's weights.

All losses take the network's traced output (``trace=True``): rows ``[:B]`` of every traced
tensor belong to the forward path, rows ``[B:]`` to the inverse path. Sums over voxels in the
paper are means here so the weights do not depend on the grid size (docs/method.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dccnn_deploy.config import LossWeights
from dccnn_deploy.model.dccnn import RegistrationOutput, ScaleTrace, pad_to_multiple, swap_halves
from dccnn_deploy.ops.jacobian import divergence, jacobian_determinant, spatial_gradient
from dccnn_deploy.ops.local_stats import local_ncc
from dccnn_deploy.ops.resize import upsample_field
from dccnn_deploy.ops.warp import compose, warp_gridsample


def _paths_mean(per_row: torch.Tensor) -> torch.Tensor:
    """Sum of the forward and inverse terms, averaged over the batch: ``(2B,) -> ()``."""
    b = per_row.shape[0] // 2
    return (per_row[:b] + per_row[b:]).mean()


def _row_mean(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).mean(dim=1)


def similarity_loss(
    scales: list[ScaleTrace], images: torch.Tensor, window: int, weights: list[float],
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """-sum_l lambda_1^l (NCC(X o P(phi^l), Y) + NCC(Y o P(phi^-l), X)) on the full grid.

    ``images``: padded ``[X; Y]`` ``(2B, 1, ...)``; P is trilinear upsampling to full scale.
    ``rows`` (``(B,)``, 0/1): pairs whose images share one contrast; NCC is left out for the
    others (independent random contrasts, trained by the label term alone).
    """
    targets = swap_halves(images)
    mask = None if rows is None else torch.cat([rows, rows]).to(images)
    total = images.new_zeros(())
    n = len(scales)
    for level, (trace, w) in enumerate(zip(scales, weights)):
        full = upsample_field(trace.fields, 2 ** (n - 1 - level))
        moved = warp_gridsample(images, full, padding="border")
        per_row = local_ncc(moved, targets, window)
        total = total - w * _paths_mean(per_row if mask is None else per_row * mask)
    return total


def soft_dice(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean soft Dice over the channels present in either map, per batch row: ``(B, K, ...)`` x2 -> ``(B,)``."""
    inter = (a * b).flatten(2).sum(-1)
    total = a.flatten(2).sum(-1) + b.flatten(2).sum(-1)
    present = (total > eps).to(a)
    dice = 2 * inter / (total + eps)
    return (dice * present).sum(1) / present.sum(1).clamp(min=1)


def label_dice_loss(fields: torch.Tensor, onehots: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of the warped one-hot label maps, both paths (SynthMorph's overlap loss).

    ``fields``: final full-scale ``[phi; phi^-1]`` ``(2B, 3, ...)``; ``onehots``: padded
    ``[onehot(X labels); onehot(Y labels)]`` ``(2B, K, ...)``: X's labels pulled by phi are
    compared with Y's, Y's pulled by phi^-1 with X's.
    """
    moved = warp_gridsample(onehots, fields, padding="zeros")
    return _paths_mean(1.0 - soft_dice(moved, swap_halves(onehots)))


def jacobian_loss(scales: list[ScaleTrace]) -> torch.Tensor:
    """sum_l mean ReLU(-J) of phi^l and phi^-l (folding penalty)."""
    return sum(_paths_mean(_row_mean(F.relu(-jacobian_determinant(t.fields)))) for t in scales)


def smoothness_loss(scales: list[ScaleTrace]) -> torch.Tensor:
    """sum_l mean ||grad u||^2 of phi^l and phi^-l (grad phi = I + grad u)."""
    return sum(_paths_mean(_row_mean(spatial_gradient(t.fields).pow(2).sum(dim=(1, 2)))) for t in scales)


def cycle_loss(fields: torch.Tensor, images: torch.Tensor, window: int) -> torch.Tensor:
    """-NCC(X, X o (phi o phi^-1)) - NCC(Y, Y o (phi^-1 o phi)) for the final full-scale fields."""
    round_trip = compose(fields, swap_halves(fields), sampler=warp_gridsample)
    return -_paths_mean(local_ncc(warp_gridsample(images, round_trip, padding="border"), images, window))


def control_increment_loss(scales: list[ScaleTrace]) -> torch.Tensor:
    """sum_l mean_n |div u_n + dh/dt| (eq. (5)), dh/dt = (h_n - h_{n-1}) / dt, both paths."""
    total = None
    for trace in scales:
        steps = len(trace.increments)
        terms = [
            _row_mean((divergence(u) + (h1 - h0) * steps).abs())
            for u, h0, h1 in zip(trace.increments, trace.homotopies[:-1], trace.homotopies[1:])
        ]
        level = _paths_mean(torch.stack(terms).mean(dim=0))
        total = level if total is None else total + level
    return total


class DCCNNLoss(torch.nn.Module):
    """Total loss L = L_sim + l2 L_Jdet + l3 L_reg + l4 L_cycle + l5 L_cic.

    ``forward(output, moving, fixed)`` with ``output`` from ``model(moving, fixed, trace=True)``
    returns ``(total, terms)`` where ``terms`` holds each unweighted loss as a float. With
    ``label_dice > 0`` and one-hot label maps ``onehots = (moving, fixed)`` (each
    ``(B, K, ...)``), ``+ label_dice * L_dice`` is added; ``same_contrast`` ``(B,)`` masks the
    NCC similarity of pairs with independent contrasts.
    """

    def __init__(self, weights: LossWeights | None = None, divisor: int = 16):
        super().__init__()
        self.weights = weights or LossWeights()
        self.divisor = divisor

    def forward(
        self, output: RegistrationOutput, moving: torch.Tensor, fixed: torch.Tensor,
        onehots: tuple[torch.Tensor, torch.Tensor] | None = None, same_contrast: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if not output.scales:
            raise ValueError("the losses need the traced output: call model(moving, fixed, trace=True)")
        w = self.weights
        images = pad_to_multiple(torch.cat([moving, fixed], dim=0), self.divisor)
        n = len(output.scales)
        scale_w = [w.similarity * s for s in (w.scale_weights or (1.0,) * n)]
        terms = {
            "similarity": similarity_loss(output.scales, images, w.ncc_window, scale_w, same_contrast),
            "jacobian": jacobian_loss(output.scales),
            "smooth": smoothness_loss(output.scales),
            "cycle": cycle_loss(output.scales[-1].fields, images, w.ncc_window),
            "control": control_increment_loss(output.scales),
        }
        total = (
            terms["similarity"]
            + w.jacobian * terms["jacobian"]
            + w.smooth * terms["smooth"]
            + w.cycle * terms["cycle"]
            + w.control * terms["control"]
        )
        if w.label_dice > 0 and onehots is not None:
            labels = pad_to_multiple(torch.cat(onehots, dim=0), self.divisor)
            terms["label_dice"] = label_dice_loss(output.scales[-1].fields, labels)
            total = total + w.label_dice * terms["label_dice"]
        elif w.label_dice > 0:  # an unlabelled batch: logged as NaN, so every rank logs the same terms
            terms["label_dice"] = total.new_tensor(float("nan"))
        return total, {k: float(v.detach()) for k, v in terms.items()}
