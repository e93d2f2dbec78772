"""SynthMorph-style image synthesis from label maps, and the random corruption of real images.

Everything works on the model grid: volumes ``(1, 1, D, H, W)`` float32, label maps as
float32 tensors holding integer values (exact below 2**24) so the package's warp samples them
(nearest). Randomness comes from a numpy ``Generator`` (scalars) and a torch ``Generator``
(fields), both seeded by the caller, so a draw is reproducible from its seed.

Recipe (Hoffmann et al., SynthMorph): each draw deforms the label map by a new random smooth
diffeomorphism (a stationary velocity field at coarse control points, upsampled, integrated
by scaling and squaring), so every image is a new anatomy; a pair shares one random intensity
per label (the similarity loss is NCC, which needs one contrast per pair) or, for
contrast-invariance, each image gets its own (trained by the label-overlap loss alone); each
image then gets its own texture, blur, bias field, noise and gamma. Extra-cerebral shells
(CSF, skull, scalp: :func:`add_head`) give a with-skull appearance, and :func:`random_shapes`
makes label maps of random shapes (SynthMorph's shape-only training) for anatomical variety.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

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
    from scipy import ndimage  # only where label maps are prepared (not in a packed run)

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


def multiscale_deformation(
    shape: tuple[int, int, int], components: list[tuple[float, int]], gen: torch.Generator, steps: int = 7
) -> torch.Tensor:
    """``exp(v)`` of a sum of smooth velocities, one ``(std, spacing)`` per component (voxels):
    fine local changes and coarse, larger ones (e.g. ventricle or lobe size) in one diffeomorphism."""
    velocity = sum(std * smooth_noise(shape, 3, spacing, gen) for std, spacing in components if std > 0)
    if not torch.is_tensor(velocity):
        return torch.zeros((1, 3, *shape))
    return exp_velocity(velocity, steps=steps)


HEAD_LABELS = (2001, 2002, 2003)  # extra-cerebral CSF, skull, scalp (left out of the label loss)


def outside_distance(labels: np.ndarray) -> np.ndarray:
    """Euclidean distance (voxels) of every voxel to the labelled brain (0 inside it)."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(labels <= 0).astype(np.float32)


def add_head(labels: torch.Tensor, distance: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """``labels`` with shells of random thickness around the brain: CSF (1-2.5 voxels), skull
    (1.5-3.5), scalp (1.5-4), labelled :data:`HEAD_LABELS`: a head with skull from a brain map."""
    edges = np.cumsum([rng.uniform(1.0, 2.5), rng.uniform(1.5, 3.5), rng.uniform(1.5, 4.0)])
    out = labels.clone()
    lower = 0.0
    for value, upper in zip(HEAD_LABELS, edges):
        out[(distance > lower) & (distance <= upper)] = float(value)
        lower = upper
    return out


def random_shapes(mask: torch.Tensor, count: int, spacing: int, gen: torch.Generator) -> torch.Tensor:
    """A label map of ``count`` random smooth shapes (labels 1..count) filling ``mask``
    ``(1, 1, ...)`` (argmax of smooth noise channels: SynthMorph's shape-only maps)."""
    noise = smooth_noise(tuple(mask.shape[2:]), count, spacing, gen)
    return (noise.argmax(dim=1, keepdim=True) + 1).float() * (mask > 0)


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
    coarse_velocity: tuple[float, int] = (0.0, 1),
) -> tuple[torch.Tensor, torch.Tensor]:
    """One synthetic ``(image, labels)``, both ``(1, 1, D, H, W)``, from a label map on the grid.

    The deformation amplitude is drawn from U(0, ``velocity_std``) (and U(0, coarse std) for the
    optional ``coarse_velocity = (std, spacing)`` component) so pairs range from nearly the same
    anatomy to very different ones. The returned labels are a subset of the input's.
    """
    components = [(rng.uniform(0.0, velocity_std), velocity_spacing)]
    if coarse_velocity[0] > 0:
        components.append((rng.uniform(0.0, coarse_velocity[0]), coarse_velocity[1]))
    new_labels = deform(labels, multiscale_deformation(tuple(labels.shape[2:]), components, gen), labels=True)
    return corrupt(paint(new_labels, lut, texture_std, gen), corruption, rng, gen), new_labels
