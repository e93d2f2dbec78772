"""DCCNN-LSTM-Reg (paper Sec. III, Algorithm 2).

Both registration paths run as one batch: rows ``[:B]`` are the forward path (moving X pulled
onto fixed Y by phi) and rows ``[B:]`` the inverse path (Y pulled onto X by phi^-1). Swapping
the halves of the feature batch is the paper's "reversed order of the feature volumes", and
the shared CNN-LSTM weights serve both paths by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dccnn_deploy.config import ModelConfig
from dccnn_deploy.model.cnn_lstm import CNNLSTMBlock
from dccnn_deploy.model.homotopy import homotopy
from dccnn_deploy.model.unet import FeaturePyramidUNet
from dccnn_deploy.ops.resize import upsample_features, upsample_field
from dccnn_deploy.ops.warp import warp, warp_gridsample

Sampler = Literal["gridsample", "gather"]


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    """``[a; b] -> [b; a]`` along the batch axis (forward <-> inverse path)."""
    b = t.shape[0] // 2
    return torch.cat([t[b:], t[:b]], dim=0)


def pad_to_multiple(volume: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pad ``(B, C, D, H, W)`` at the high end of each axis to a multiple of ``divisor``."""
    pads = []
    for n in reversed(volume.shape[2:]):
        pads += [0, (-n) % divisor]
    return F.pad(volume, pads) if any(pads) else volume


@dataclass
class ScaleTrace:
    """What one scale produced, on the padded grid of that scale (rows as in the module doc).

    ``fields``: final displacement phi_1 at this scale ``(2B, 3, ...)``; ``increments``: the N
    control increments u; ``homotopies``: h at t_0 ... t_N (N + 1 tensors ``(2B, 1, ...)``).
    """

    fields: torch.Tensor
    increments: list[torch.Tensor] = field(default_factory=list)
    homotopies: list[torch.Tensor] = field(default_factory=list)


@dataclass
class RegistrationOutput:
    """``forward``: displacement on the fixed grid, ``moved = warp(moving, forward)``;
    ``inverse``: displacement on the moving grid, ``warp(fixed, inverse)`` lies on the moving
    image. Both ``(B, 3, D, H, W)``, voxel units, channels = array axes (D, H, W).
    ``scales``: per-scale traces coarse -> fine when ``trace=True`` (for the losses).
    """

    forward: torch.Tensor
    inverse: torch.Tensor
    scales: list[ScaleTrace] = field(default_factory=list)


class DCCNNLSTMReg(nn.Module):
    """The network. ``forward(moving, fixed)`` with ``(B, 1, D, H, W)`` inputs of any size."""

    def __init__(self, config: ModelConfig | None = None, sampler: Sampler = "gridsample"):
        super().__init__()
        self.config = config or ModelConfig()
        self.unet = FeaturePyramidUNet(self.config.encoder_channels, self.config.pyramid_channels)
        self.blocks = nn.ModuleList(
            nn.ModuleList(CNNLSTMBlock(ch) for _ in range(self.config.steps))
            for ch in self.config.pyramid_channels
        )
        self.sampler = sampler

    @property
    def sampler(self) -> Sampler:
        return self._sampler_name

    @sampler.setter
    def sampler(self, name: Sampler) -> None:
        samplers: dict[str, Callable] = {"gridsample": warp_gridsample, "gather": warp}
        if name not in samplers:
            raise ValueError(f"sampler must be one of {sorted(samplers)}, got {name!r}")
        self._sampler_name = name
        self._warp = samplers[name]

    def _h(self, disp: torch.Tensor) -> torch.Tensor:
        return homotopy(disp, self.config.homotopy_sigma, self.config.jacobian_floor)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The feature pyramid (coarse -> fine) of ``(B, 1, D, H, W)`` images, on the padded grid."""
        return self.unet(pad_to_multiple(images, self.config.divisor))

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, trace: bool = False,
                fixed_features: list[torch.Tensor] | None = None) -> RegistrationOutput:
        """``fixed_features``: ``features(fixed)`` computed before (a cascade at inference registers
        several moving images to one fixed image); the U-Net then runs on the moving image only."""
        if moving.shape != fixed.shape or moving.dim() != 5 or moving.shape[1] != 1:
            raise ValueError(
                f"moving and fixed must both be (B, 1, D, H, W) of one shape, got "
                f"{tuple(moving.shape)} and {tuple(fixed.shape)}"
            )
        cfg = self.config
        b = moving.shape[0]
        size = moving.shape[2:]
        if fixed_features is None:  # dual U-Net, shared weights: one pass over both images
            pyramid = self.features(torch.cat([moving, fixed], dim=0))
        else:
            pyramid = [torch.cat([m, f], dim=0) for m, f in zip(self.features(moving), fixed_features)]
        dt = 1.0 / cfg.steps

        disp = memory = None
        traces: list[ScaleTrace] = []
        for level, feats in enumerate(pyramid):
            feats = feats.contiguous()  # a channels-last U-Net (CPU inference) hands over NCDHW
            others = swap_halves(feats)  # forward rows see F_Y, inverse rows see F_X
            if self._sampler_name == "gridsample":
                feats = feats.float()  # grid_sample samples in float32: cast once, not every step
            if disp is None:
                disp = feats.new_zeros((2 * b, 3, *feats.shape[2:]))
                memory = torch.zeros_like(disp)
                h = torch.ones_like(disp[:, :1])  # h(., 0) = 1
            else:
                disp = upsample_field(disp)
                memory = upsample_features(memory)
                h = self._h(disp)
            scale = ScaleTrace(fields=disp, homotopies=[h]) if trace else None
            for n, block in enumerate(self.blocks[level]):
                warped = self._warp(feats, disp, padding="border")  # pre-aligned F_X o phi
                u, memory = block(warped, others, disp, memory)
                disp = disp + dt * u / h  # Euler step of eq. (7)
                last = n == cfg.steps - 1
                if not last or trace:
                    h = self._h(disp)
                if trace:
                    scale.increments.append(u)
                    scale.homotopies.append(h)
            if trace:
                scale.fields = disp
                traces.append(scale)

        disp = disp[:, :, : size[0], : size[1], : size[2]]
        return RegistrationOutput(forward=disp[:b], inverse=disp[b:], scales=traces)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
