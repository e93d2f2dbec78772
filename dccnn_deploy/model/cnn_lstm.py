"""The CNN-LSTM block (paper Sec. III-C, Fig. 1(d)): ConvLSTM gates -> control increment u."""

from __future__ import annotations

import torch
from torch import nn


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
        f, i, g, o = torch.split(self.gates(torch.cat([warped, other, disp], dim=1)), 3, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        u = torch.sigmoid(o) * torch.tanh(c_new)
        return u, c_new
