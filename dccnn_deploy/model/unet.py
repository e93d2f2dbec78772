"""The feature-pyramid U-Net (paper Sec. III-A, Fig. 1(b)); one instance serves both images."""

from __future__ import annotations

import torch
from torch import nn

from dccnn_deploy.ops.resize import upsample_concat


class FeaturePyramidUNet(nn.Module):
    """Encoder: two 3x3x3 stride-1 convs, then (scales-1) 2x2x2 stride-2 convs, ReLU after each.
    Decoder: per finer scale, x2 upsampling, skip concatenation and a 3x3x3 stride-1 transposed
    conv + ReLU.

    ``forward(x)`` with ``x: (B, 1, D, H, W)`` (D, H, W divisible by 2**(scales-1)) returns the
    pyramid coarse -> fine: ``[(B, C_1, D/2^(L-1), ...), ..., (B, C_L, D, H, W)]`` with
    ``C = pyramid_channels``. The coarsest level is the bottleneck itself.
    """

    def __init__(self, encoder_channels: tuple[int, ...], pyramid_channels: tuple[int, ...]):
        super().__init__()
        scales = len(pyramid_channels)
        e = encoder_channels
        self.stem = nn.Sequential(
            nn.Conv3d(1, e[0], 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv3d(e[0], e[1], 3, padding=1), nn.ReLU(inplace=True),
        )
        widths = list(e[1:]) + [pyramid_channels[0]]  # full-res, 1/2, ..., bottleneck = C_1
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv3d(widths[i], widths[i + 1], 2, stride=2), nn.ReLU(inplace=True))
            for i in range(scales - 1)
        )
        self.up = nn.ModuleList()
        for level in range(1, scales):  # builds pyramid level `level` (0 = coarsest)
            skip = widths[scales - 1 - level]
            self.up.append(
                nn.Sequential(
                    nn.ConvTranspose3d(pyramid_channels[level - 1] + skip, pyramid_channels[level], 3, padding=1),
                    nn.ReLU(inplace=True),
                )
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        pyramid = [skips.pop()]
        for up in self.up:
            pyramid.append(up(upsample_concat(pyramid[-1], skips.pop())))
        return pyramid
