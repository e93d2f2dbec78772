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
from dccnn_deploy.model.cnn_lstm import CNNLSTMBlock, autocast_dtype
from dccnn_deploy.model.homotopy import homotopy
from dccnn_deploy.model.unet import FeaturePyramidUNet
from dccnn_deploy.ops import native
from dccnn_deploy.ops.resize import upsample_features, upsample_field
from dccnn_deploy.ops.warp import displaced_sampler, warp, warp_gridsample

Sampler = Literal["gridsample", "gather", "mosaic"]


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
    image. Both ``(B, 3, D, H, W)``, voxel units, channels = array axes (D, H, W); ``inverse`` is
    None when the inverse path was not run (``forward(..., inverse=False)``).
    ``scales``: per-scale traces coarse -> fine when ``trace=True`` (for the losses).
    """

    forward: torch.Tensor
    inverse: torch.Tensor | None
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
        """``gridsample`` (training, ONNX Runtime export), ``gather`` (standard ops: TensorRT
        export) or ``mosaic`` (CPU inference: :func:`~dccnn_deploy.ops.warp.displaced_sampler`, the
        same sampling as ``gridsample`` within ~1e-4, built once per scale for its N steps)."""
        samplers: dict[str, Callable] = {"gridsample": warp_gridsample, "gather": warp, "mosaic": warp_gridsample}
        if name not in samplers:
            raise ValueError(f"sampler must be one of {sorted(samplers)}, got {name!r}")
        self._sampler_name = name
        self._warp = samplers[name]

    def _feature_warp(self, feats: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``disp -> feats o (id + disp)`` (border padding) for the N steps of one scale."""
        if self._sampler_name == "mosaic":
            return displaced_sampler(feats, "border")  # tiled once, read N times
        return lambda disp: self._warp(feats, disp, padding="border")

    def _h(self, disp: torch.Tensor) -> torch.Tensor:
        return homotopy(disp, self.config.homotopy_sigma, self.config.jacobian_floor)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The feature pyramid (coarse -> fine) of ``(B, 1, D, H, W)`` images, on the padded grid."""
        return self.unet(pad_to_multiple(images, self.config.divisor))

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, trace: bool = False,
                fixed_features: list[torch.Tensor] | None = None, inverse: bool = True) -> RegistrationOutput:
        """``fixed_features``: ``features(fixed)`` computed before (a cascade at inference registers
        several moving images to one fixed image); the U-Net then runs on the moving image only.
        ``inverse=False`` runs the forward path alone (inference whose inverse is computed
        numerically from the forward map): the forward rows never read the inverse rows, so the
        forward field is the same and the cascade costs half."""
        if moving.shape != fixed.shape or moving.dim() != 5 or moving.shape[1] != 1:
            raise ValueError(
                f"moving and fixed must both be (B, 1, D, H, W) of one shape, got "
                f"{tuple(moving.shape)} and {tuple(fixed.shape)}"
            )
        if trace and not inverse:
            raise ValueError("trace=True (training losses) needs both paths: inverse=True")
        cfg = self.config
        b = moving.shape[0]
        rows = 2 * b if inverse else b
        size = moving.shape[2:]
        dt = 1.0 / cfg.steps

        disp = memory = None
        traces: list[ScaleTrace] = []
        for level, (feats, others) in enumerate(self._scale_features(moving, fixed, fixed_features, inverse)):
            if disp is None:
                field_dtype = feats.dtype if self._sampler_name == "gather" else torch.float32  # fp16 export: fp16
                disp = feats.new_zeros((rows, 3, *feats.shape[2:]), dtype=field_dtype)
                memory = torch.zeros_like(disp)
                h = torch.ones_like(disp[:, :1])  # h(., 0) = 1
            else:
                disp = upsample_field(disp)
                memory = upsample_features(memory)
                h = self._h(disp)
            if not trace and self._fuses_steps(feats):
                disp, memory = self._fused_scale(self.blocks[level], feats, others, disp, memory, h, dt)
                continue
            feats, others = feats.contiguous(), others.contiguous()  # a channels-last U-Net (CPU inference) hands over NCDHW
            if self._sampler_name != "gather":
                feats = feats.float()  # grid_sample samples in float32: cast once, not every step
            scale = ScaleTrace(fields=disp, homotopies=[h]) if trace else None
            warp_feats = self._feature_warp(feats)
            for n, block in enumerate(self.blocks[level]):
                warped = warp_feats(disp)  # pre-aligned F_X o phi
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
        return RegistrationOutput(forward=disp[:b], inverse=disp[b:] if inverse else None, scales=traces)

    def _scale_features(self, moving: torch.Tensor, fixed: torch.Tensor, fixed_features: list[torch.Tensor] | None,
                        inverse: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per scale, coarse -> fine: the features the cascade warps and those beside them. Both
        paths: ``[F_X; F_Y]`` and ``[F_Y; F_X]`` (forward rows see F_Y, inverse rows F_X); the
        forward path alone: ``(F_X, F_Y)``."""
        b = moving.shape[0]
        if fixed_features is None:  # dual U-Net, shared weights: one pass over both images
            pyramid = self.features(torch.cat([moving, fixed], dim=0))
            return [(p, swap_halves(p)) if inverse else (p[:b], p[b:]) for p in pyramid]
        pairs = zip(self.features(moving), fixed_features)
        return [(torch.cat([m, f], dim=0), torch.cat([f, m], dim=0)) if inverse else (m, f) for m, f in pairs]

    def _fuses_steps(self, feats: torch.Tensor) -> bool:
        """Whether the steps of a scale run fused (:meth:`_fused_scale`): CPU inference with the
        compiled kernels (no gradient, no graph being recorded) and a sampling of the features."""
        return self._sampler_name != "gather" and native.serves(feats)

    def _fused_scale(self, blocks: nn.ModuleList, feats: torch.Tensor, others: torch.Tensor, disp: torch.Tensor,
                     memory: torch.Tensor, h: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The N steps of one scale as the loop of :meth:`forward` computes them, with the compiled
        kernels: the gate convolution's input ``[F_X o phi, F_Y, phi - id]`` lives in one
        channels-last buffer (in the convolution's dtype) that the feature warp and the Euler step
        write into, F_Y copied once for the N steps; the LSTM update and the Euler step run as one
        pass (:func:`~dccnn_deploy.ops.native.lstm_euler`). Returns the displacement and memory."""
        c = feats.shape[1]
        dtype = autocast_dtype(feats.device) or blocks[0].gates.weight.dtype
        buffer = torch.empty((disp.shape[0], 2 * c + 3, *disp.shape[2:]), dtype=dtype,
                             memory_format=torch.channels_last_3d)
        buffer[:, c: 2 * c].copy_(others)
        buffer[:, 2 * c:].copy_(disp)
        source = native.NativeSource(feats, "border")
        for n, block in enumerate(blocks):
            source.displaced_into(disp, buffer, 0)  # pre-aligned F_X o phi
            gates = block.gates(buffer).contiguous(memory_format=torch.channels_last_3d)
            last = n == len(blocks) - 1
            disp, memory = native.lstm_euler(gates, memory, disp, h, dt, None if last else (buffer, 2 * c))
            if not last:
                h = self._h(disp)
        return disp, memory

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
