"""The CNN-LSTM block (paper Sec. III-C, Fig. 1(d)): ConvLSTM gates -> control increment u."""

from __future__ import annotations

import torch
from torch import nn


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs convolutions in on ``device``, or None when autocast is off."""
    if not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


def _cat_channels(parts: list[torch.Tensor], conv: nn.Module) -> torch.Tensor:
    """``torch.cat(parts, dim=1)``, written straight into channels-last memory when ``conv`` is a
    convolution with channels-last weights (CPU inference: oneDNN then needs no reorder), and in
    autocast's dtype when autocast is on (the convolution would cast the float32 result anyway:
    one write of half the size instead of two)."""
    cast = autocast_dtype(parts[0].device)
    if cast is not None:
        parts = [p.to(cast) for p in parts]
    weight = getattr(conv, "weight", None)  # None: a wrapper, e.g. the fp16 export's
    if weight is None or weight.is_contiguous() or not weight.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.cat(parts, dim=1)
    shape = (parts[0].shape[0], sum(p.shape[1] for p in parts), *parts[0].shape[2:])
    return torch.cat(parts, dim=1, out=torch.empty(shape, dtype=parts[0].dtype, device=parts[0].device,
                                                  memory_format=torch.channels_last_3d))


class CNNLSTMBlock(nn.Module):
    """One cascade step at one scale.

    Inputs: pre-aligned features ``warped (B, C, ...)`` (F_X o phi), the other image's features
    ``other (B, C, ...)`` (F_Y), the current displacement ``disp (B, 3, ...)`` (phi - id, voxels)
    and the memory ``c (B, 3, ...)``. One 3x3x3 convolution of ``[warped, other, disp]`` gives
    the gates f, i, g, o (3 channels each, the deformation's dimension); then
    ``c' = sigma(f) c + sigma(i) tanh(g)`` and ``u = sigma(o) tanh(c')``. Returns ``(u, c')``.
    """

    def __init__(self, feature_channels: int):
        super().__init__()
        self.gates = nn.Conv3d(2 * feature_channels + 3, 12, 3, padding=1)

    def forward(
        self, warped: torch.Tensor, other: torch.Tensor, disp: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gates = self.gates(_cat_channels([warped, other, disp], self.gates))
        # NCDHW float32 in one copy (autocast's bfloat16 gates: the LSTM update is faster and exact in float32)
        gates = gates.to(dtype=torch.promote_types(gates.dtype, disp.dtype), memory_format=torch.contiguous_format)
        f, i, g, o = torch.split(gates, 3, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        u = torch.sigmoid(o) * torch.tanh(c_new)
        return u, c_new
