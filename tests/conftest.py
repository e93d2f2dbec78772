"""Shared fixtures: small synthetic volumes and a small model configuration."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from dccnn_deploy.checkpoint import default_metadata, save_checkpoint
from dccnn_deploy.config import ModelConfig
from dccnn_deploy.model import DCCNNLSTMReg
from dccnn_deploy.preprocess.grid import Grid, apply_affine, model_grid
from phantoms import CENTRE, grid_points, lia_affine, phantom, rotation

torch.set_num_threads(2)


SMALL = ModelConfig(scales=3, steps=2, pyramid_channels=(16, 8, 4), encoder_channels=(4, 4, 8))


def lively_model(seed: int = 0, sampler: str = "gridsample") -> DCCNNLSTMReg:
    """A small random model (:data:`SMALL`, eval mode) whose gate weights are scaled up so the
    displacements reach ~1 voxel and differences between code paths show."""
    torch.manual_seed(seed)
    net = DCCNNLSTMReg(SMALL, sampler=sampler).eval()
    with torch.no_grad():
        for blocks in net.blocks:
            for block in blocks:
                block.gates.weight.mul_(30.0)
    return net


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


# ------------------------------------------------------------------ a phantom study on disk




def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _labels(points: np.ndarray) -> np.ndarray:
    """Three label regions of the phantom (world-defined, so any grid agrees)."""
    q = points - CENTRE
    r = np.linalg.norm(q / np.array([46.0, 52.0, 42.0]), axis=-1)
    lab = np.where(r < 1.0, 1, 0)
    lab = np.where((r < 1.0) & (q[..., 0] > 0), 2, lab)
    lab = np.where(np.linalg.norm((q - np.array([-12, 5, 6])) / np.array([9, 22, 10]), axis=-1) < 1, 3, lab)
    return lab.astype(np.int16)


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> dict[str, Path]:
    """Fixed: RAS 3 mm; moving: LIA 3.5 mm, rotated 8 deg and shifted 9 mm, locally deformed."""
    root = tmp_path_factory.mktemp("study")
    fixed_grid = model_grid((44, 48, 40), 3.0, CENTRE)
    fixed_pts = grid_points(fixed_grid)
    motion = np.eye(4)
    motion[:3, :3] = rotation((0.3, 1.0, 0.2), 8.0)
    motion[:3, 3] = (6.0, -5.0, 4.0)
    mov_affine = lia_affine((40, 40, 44), 3.5, CENTRE)
    mov_pts = apply_affine(motion, grid_points(Grid((40, 40, 44), mov_affine)))  # the subject moved
    # the moving subject's anatomy: world content bent by a smooth bump
    bend = 4.0 * np.exp(-np.sum((mov_pts - CENTRE) ** 2, -1) / (2 * 25.0**2))[..., None] * np.array([1.0, 0.0, 0.0])
    paths = {
        "fixed": save_nifti(root / "fixed.nii.gz", phantom(fixed_pts), fixed_grid.affine),
        "moving": save_nifti(root / "moving.nii.gz", phantom(mov_pts + bend), mov_affine),
        "fixed_labels": save_nifti(root / "fixed_seg.nii.gz", _labels(fixed_pts), fixed_grid.affine),
        "moving_labels": save_nifti(root / "moving_seg.nii.gz", _labels(mov_pts + bend), mov_affine),
    }
    with torch.random.fork_rng():  # the same random tiny model whichever test builds the study first
        torch.manual_seed(0)
        model = DCCNNLSTMReg(SMALL)
    torch.manual_seed(0)
    paths["model"] = save_checkpoint(root / "tiny.pt", model, default_metadata((32, 32, 32), 4.5))
    return paths


