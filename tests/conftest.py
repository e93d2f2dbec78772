"""Shared fixtures: small synthetic volumes and a small model configuration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dccnn_deploy.config import ModelConfig

torch.set_num_threads(2)


SMALL = ModelConfig(scales=3, steps=2, pyramid_channels=(16, 8, 4), encoder_channels=(4, 4, 8))


def blob(shape=(24, 28, 20), centre=None, radius=6.0) -> torch.Tensor:
    """A smooth Gaussian-edged ball ``(1, 1, *shape)``."""
    centre = centre or [n / 2 for n in shape]
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    vol = 1.0 / (1.0 + np.exp((np.sqrt(r2) - radius) * 1.5))
    return torch.from_numpy(vol.astype(np.float32))[None, None]


@pytest.fixture
def small_config() -> ModelConfig:
    return SMALL


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
