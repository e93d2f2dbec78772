"""SynthMorph-style image synthesis from label maps, and the random corruption of real images.

Everything works on the model grid: volumes ``(1, 1, D, H, W)`` float32, label maps as
float32 tensors holding integer values (exact below 2**24) so the package's warp samples them
(nearest). Randomness comes from a numpy ``Generator`` (scalars) and a torch ``Generator``
(fields), both seeded by the caller, so a draw is reproducible from its seed.

Recipe (Hoffmann et al., SynthMorph): each draw deforms the label map by a new random smooth
diffeomorphism (a stationary velocity field at coarse control points, upsampled, integrated
by scaling and squaring), so every image is a new anatomy; a pair shares one random intensity
per label (the similarity loss is NCC, which needs one contrast per pair), and each image then
gets its own texture, blur, bias field, noise and gamma.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from dccnn_deploy.ops.integrate import exp_velocity
from dccnn_deploy.ops.smoothing import gaussian_smooth
from dccnn_deploy.ops.warp import warp_gridsample
from dccnn_deploy.preprocess.intensity import normalise_intensity


@dataclass(frozen=True)
class Corruption:
    """Intensity corruption amplitudes: gamma ``exp(N(0, gamma_std))``, multiplicative bias
    ``exp(N(0, bias_std))`` smooth over ``bias_spacing`` voxels, blur sigma ~ U(0, ``blur_max``)
    voxels, Gaussian noise std ~ U(0, ``noise_max``) (on [0, 1] intensities)."""

    gamma_std: float = 0.25
    bias_std: float = 0.3
    bias_spacing: int = 16
    blur_max: float = 1.0
    noise_max: float = 0.03


def fill_interior(labels: np.ndarray, value: int, radius: int = 3) -> np.ndarray:
    """``labels`` (D, H, W) with the unlabelled voxels inside the brain hull set to ``value``.

    The hull is the labelled foreground closed by a ball of ``radius`` voxels (bridging sulci),
    holes filled. Used for maps that label only grey matter, so white matter gets a contrast.
    """
    ball = ndimage.generate_binary_structure(3, 1)
    ball = ndimage.iterate_structure(ball, radius)
    fg = labels > 0
    hull = ndimage.binary_fill_holes(ndimage.binary_closing(np.pad(fg, radius), ball)[(slice(radius, -radius),) * 3])
    return np.where(hull & ~fg, np.asarray(value, dtype=labels.dtype), labels)


def smooth_noise(shape: tuple[int, int, int], channels: int, spacing: int, gen: torch.Generator) -> torch.Tensor:
    """Standard normal values at control points every ``spacing`` voxels, trilinearly
    upsampled to ``shape``: ``(1, channels, *shape)``."""
    coarse = [max(2, -(-n // spacing) + 1) for n in shape]
    noise = torch.randn((1, channels, *coarse), generator=gen)
    return F.interpolate(noise, size=tuple(shape), mode="trilinear", align_corners=True)


def random_deformation(
    shape: tuple[int, int, int], std: float, spacing: int, gen: torch.Generator, steps: int = 7
) -> torch.Tensor:
    """A random diffeomorphic displacement ``(1, 3, *shape)`` (voxels): ``exp(v)`` of a smooth
    velocity whose control-point values have std ``std`` voxels."""
    return exp_velocity(std * smooth_noise(shape, 3, spacing, gen), steps=steps)


def deform(volume: torch.Tensor, displacement: torch.Tensor, labels: bool = False) -> torch.Tensor:
    """Pull ``volume`` ``(1, C, ...)`` through ``displacement``: trilinear, or nearest for labels."""
    return warp_gridsample(volume, displacement, padding="zeros", mode="nearest" if labels else "bilinear")


def random_lookup(max_label: int, rng: np.random.Generator) -> torch.Tensor:
    """One random intensity in [0, 1) per label value ``0 .. max_label``; background 0 stays 0."""
    lut = torch.from_numpy(rng.random(max_label + 1).astype(np.float32))
    lut[0] = 0.0
    return lut


def paint(labels: torch.Tensor, lut: torch.Tensor, texture_std: float, gen: torch.Generator) -> torch.Tensor:
    """Image ``(1, 1, ...)`` with ``lut[label]`` per voxel plus Gaussian texture inside the labels."""
    image = lut[labels.long()]
    if texture_std > 0:
        image = image + texture_std * torch.randn(image.shape, generator=gen) * (labels > 0)
    return image


def corrupt(image: torch.Tensor, c: Corruption, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Blur, bias field, noise, robust [0, 1] normalisation and gamma of ``image`` ``(1, 1, ...)``."""
    sigma = rng.uniform(0.0, c.blur_max) if c.blur_max > 0 else 0.0
    if sigma >= 0.2:
        image = gaussian_smooth(image, sigma)
    if c.bias_std > 0:
        image = image * torch.exp(c.bias_std * smooth_noise(image.shape[2:], 1, c.bias_spacing, gen))
    if c.noise_max > 0:
        image = image + rng.uniform(0.0, c.noise_max) * torch.randn(image.shape, generator=gen)
    image = torch.from_numpy(normalise_intensity(image.clamp(min=0.0).numpy()))
    return image.pow(float(np.exp(rng.normal(0.0, c.gamma_std)))) if c.gamma_std > 0 else image


def synthesize(
    labels: torch.Tensor,
    lut: torch.Tensor,
    velocity_std: float,
    velocity_spacing: int,
    texture_std: float,
    corruption: Corruption,
    rng: np.random.Generator,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One synthetic ``(image, labels)``, both ``(1, 1, D, H, W)``, from a label map on the grid.

    The deformation amplitude is drawn from U(0, ``velocity_std``) so pairs range from nearly
    the same anatomy to very different ones. The returned labels are a subset of the input's.
    """
    std = rng.uniform(0.0, velocity_std)
    new_labels = deform(labels, random_deformation(labels.shape[2:], std, velocity_spacing, gen), labels=True)
    return corrupt(paint(new_labels, lut, texture_std, gen), corruption, rng, gen), new_labels
