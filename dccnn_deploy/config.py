"""Configuration objects: the network's shape and the loss weights (paper defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Shape of DCCNN-LSTM-Reg.

    ``scales`` x ``steps`` is the cascade (paper: 5 x 4). ``pyramid_channels`` are the U-Net
    feature channels per scale, coarse -> fine (paper text: 64, 32, 16, 16, 8).
    ``encoder_channels`` are the U-Net encoder widths: two full-resolution convolutions, then one
    per stride-2 level down to 1/2**(L-2); the bottleneck (1/2**(L-1)) has ``pyramid_channels[0]``.
    The paper does not give them (see docs/method.md).
    ``homotopy_sigma`` is the Gaussian width (voxels of each scale) of eq. (8) and
    ``jacobian_floor`` the smallest Jacobian determinant used when forming h = G * (1/J).
    """

    scales: int = 5
    steps: int = 4
    pyramid_channels: tuple[int, ...] = (64, 32, 16, 16, 8)
    encoder_channels: tuple[int, ...] = (32, 16, 128, 128, 128)
    homotopy_sigma: float = 1.0
    jacobian_floor: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "pyramid_channels", tuple(int(c) for c in self.pyramid_channels))
        object.__setattr__(self, "encoder_channels", tuple(int(c) for c in self.encoder_channels))
        if self.scales < 1 or self.steps < 1:
            raise ValueError(f"scales and steps must be >= 1, got {self.scales} x {self.steps}")
        if len(self.pyramid_channels) != self.scales:
            raise ValueError(
                f"pyramid_channels has {len(self.pyramid_channels)} entries for {self.scales} scales"
            )
        if len(self.encoder_channels) != self.scales:
            raise ValueError(
                f"encoder_channels needs {self.scales} entries (2 full-res convs + "
                f"{self.scales - 2} stride-2 levels below the bottleneck), got {len(self.encoder_channels)}"
            )

    @property
    def divisor(self) -> int:
        """Grid sizes are padded to a multiple of this (one factor 2 per coarser scale)."""
        return 2 ** (self.scales - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pyramid_channels"] = list(self.pyramid_channels)
        d["encoder_channels"] = list(self.encoder_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the five losses (paper, Sec. IV-A-6).

    ``similarity`` is lambda_1 (applied to every scale), ``jacobian`` lambda_2, ``smooth``
    lambda_3, ``cycle`` lambda_4 and ``control`` lambda_5. ``ncc_window`` is the local-NCC
    window edge (voxels). ``label_dice`` (0: off, the paper-exact recipe) weights a
    SynthMorph-style label-overlap term, 1 - soft Dice of the warped one-hot label maps, both
    directions, on pairs that have label maps (not in the paper; docs/method.md).
    ``max_dice_labels`` caps the labels per step (a random subset; 0: all).
    """

    similarity: float = 0.8
    jacobian: float = 1e5
    smooth: float = 1.0
    cycle: float = 0.1
    control: float = 0.1
    ncc_window: int = 9
    scale_weights: tuple[float, ...] = field(default=())
    label_dice: float = 0.0
    max_dice_labels: int = 32

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scale_weights"] = list(self.scale_weights)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LossWeights":
        d = dict(d)
        if "scale_weights" in d:
            d["scale_weights"] = tuple(d["scale_weights"])
        return cls(**d)
