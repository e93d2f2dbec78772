"""Packed training data: the prepared pools (every subject already aligned, resampled to the
model grid and normalised; label maps filled; distances for the head shells) in one compressed
``.npz``. Training from a pack needs neither the source files nor the affine pre-alignment, so it
runs on a machine that has only PyTorch (a GPU machine without registry access).

    pack = save_pack(build_sampler(config), "training.npz")     # where the brains are
    config.packed = "training.npz"                               # anywhere: build_sampler reads it
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dccnn_deploy.io.errors import InputError
from dccnn_deploy.preprocess.grid import Grid

FORMAT = "dccnn-training-pack/1"


def _subject_arrays(key: str, subject, distance: torch.Tensor | None) -> dict[str, np.ndarray]:
    out = {}
    if subject.image is not None:
        out[f"{key}/image"] = subject.image[0, 0].numpy().astype(np.float16)
    if subject.labels is not None:
        out[f"{key}/labels"] = subject.labels[0, 0].numpy().astype(np.int32)
    if subject.mask is not None:
        out[f"{key}/mask"] = subject.mask[0, 0].numpy().astype(np.uint8)
    if distance is not None:
        out[f"{key}/distance"] = distance[0, 0].numpy().astype(np.float16)
    return out


def save_pack(sampler, path: str | Path) -> Path:
    """Write the sampler's pools (and, when heads are drawn, each labelled subject's distance
    map) to ``path`` (compressed npz). Returns the path."""
    from dccnn_deploy.train.synth import outside_distance  # scipy: only where the pack is made

    cfg = sampler.config
    meta = {"format": FORMAT, "grid_shape": list(cfg.grid_shape), "spacing_mm": cfg.spacing_mm, "pools": {}}
    arrays: dict[str, np.ndarray] = {}
    for pool_name in ("real", "synth"):
        pool = getattr(sampler, pool_name)
        if pool is None:
            continue
        meta["pools"][pool_name] = {**pool.describe(), "grid_shape": list(pool.grid.shape)}
        for split in ("train", "val"):
            for i, subject in enumerate(getattr(pool, split)):
                distance = None
                if pool_name == "synth" and subject.labels is not None:
                    distance = torch.from_numpy(outside_distance(subject.labels[0, 0].numpy()))[None, None]
                arrays.update(_subject_arrays(f"{pool_name}/{split}/{i}", subject, distance))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    tmp.replace(path)
    return path


def load_pack(path: str | Path, grid_shape, spacing_mm: float):
    """``(real Pool | None, synth Pool | None, distances by subject name)`` from a pack made for
    the same model grid (``InputError`` otherwise)."""
    from dccnn_deploy.train.data import Pool, Subject

    path = Path(path)
    if not path.is_file():
        raise InputError.at(path, "training pack not found")
    with np.load(path) as npz:
        meta = json.loads(bytes(npz["meta"]).decode())
        if meta.get("format") != FORMAT:
            raise InputError.at(path, f"not a training pack ({meta.get('format')!r})")
        if list(meta["grid_shape"]) != list(grid_shape) or float(meta["spacing_mm"]) != float(spacing_mm):
            raise InputError.at(path, f"made for grid {meta['grid_shape']} at {meta['spacing_mm']} mm, "
                                      f"the config has {list(grid_shape)} at {spacing_mm} mm")
        tensor = lambda key, dtype=torch.float32: (  # noqa: E731
            torch.from_numpy(npz[key].astype(np.float32)).to(dtype)[None, None] if key in npz.files else None)
        pools, distances = {}, {}
        for pool_name, info in meta["pools"].items():
            splits = {}
            for split in ("train", "val"):
                subjects = []
                for i, name in enumerate(info[split]):
                    key = f"{pool_name}/{split}/{i}"
                    subjects.append(Subject(name, tensor(f"{key}/image"), tensor(f"{key}/labels"),
                                            tensor(f"{key}/mask")))
                    if f"{key}/distance" in npz.files:
                        distances[name] = tensor(f"{key}/distance")
                splits[split] = subjects
            grid = Grid(tuple(info["grid_shape"]), np.array(info["grid_affine"]))
            pools[pool_name] = Pool(splits["train"], splits["val"], grid, info["reference"])
    return pools.get("real"), pools.get("synth"), distances
