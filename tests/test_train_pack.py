"""Training packs (data prepared once, trained elsewhere), --set overrides, the time limit and
the GPU training script in its CPU dry-run mode."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from dccnn_deploy.checkpoint import load_model, save_checkpoint
from dccnn_deploy.cli.train_cmd import apply_setting
from dccnn_deploy.io.errors import InputError
from dccnn_deploy.model import DCCNNLSTMReg
from dccnn_deploy.train import SynthConfig, train
from dccnn_deploy.train.data import build_sampler
from dccnn_deploy.train.loop import read_log
from dccnn_deploy.train.pack import load_pack, save_pack

from tests.test_train import REPO, TINY, tiny_config, write_subjects


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_subjects(tmp_path_factory.mktemp("pack_subjects"), 4)


def _config(data_dir: Path, **kw):
    return tiny_config(data_dir, synth=SynthConfig(enabled=True, fraction=0.5, val_pairs=1, head_prob=0.5), **kw)


def test_pack_round_trip_gives_the_same_batches(data_dir, tmp_path):
    cfg = _config(data_dir)
    sampler = build_sampler(cfg)
    pack = save_pack(sampler, tmp_path / "p.npz")
    packed = build_sampler(_config(data_dir, packed=str(pack)))
    for step in (1, 2, 3, 5):
        a, b = sampler.labelled_batch(step), packed.labelled_batch(step)
        assert a.names == b.names
        assert torch.allclose(a.moving, b.moving, atol=2e-3) and torch.allclose(a.fixed, b.fixed, atol=2e-3)
    with pytest.raises(InputError, match="made for grid"):
        load_pack(pack, (8, 8, 8), 2.0)


def test_set_overrides():
    d = {"iterations": 5, "synth": {"head_prob": 0.0}, "crop_shape": [64, 64, 64]}
    for s in ("iterations=7", "synth.head_prob=0.5", "crop_shape=[]"):
        apply_setting(d, s)
    assert d == {"iterations": 7, "synth": {"head_prob": 0.5}, "crop_shape": []}
    for bad in ("iterations", "nosuch.key=1"):
        with pytest.raises(ValueError):
            apply_setting(d, bad)


def test_time_limit_stops_validates_and_saves(data_dir, tmp_path):
    result = train(_config(data_dir, iterations=50, val_every=1000), tmp_path / "run", progress=False, time_limit_s=0.0)
    assert result.step == 1 and result.last is not None
    kinds = [r["kind"] for r in read_log(tmp_path / "run" / "log.csv")]
    assert kinds == ["train", "val"]


def test_gpu_train_script_dry_run(data_dir, tmp_path):
    pack_dir = tmp_path / "pack"
    save_pack(build_sampler(_config(data_dir)), pack_dir / "training.npz")
    save_checkpoint(pack_dir / "init.pt", DCCNNLSTMReg(TINY), {})
    config = tmp_path / "tiny.toml"
    config.write_text(textwrap.dedent(f"""
        grid_shape = [16, 16, 16]
        [model]
        scales = 3
        steps = 2
        pyramid_channels = [8, 4, 4]
        encoder_channels = [4, 4, 4]
        [data]
        images = ["{data_dir}"]
        labels_pattern = "{{stem}}_seg"
        align = "none"
        max_val_pairs = 2
        [synth]
        enabled = true
        val_pairs = 1
    """))
    env = {**os.environ, "GPU_TRAIN_DRY_RUN": "1", "GPU_PACK": str(pack_dir), "GPU_TRAIN_CONFIG": str(config),
           "GPU_TRAIN_ARGS": "--set crop_shape=[]", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_train.sh"), str(out)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert [r["kind"] for r in read_log(out / "run" / "log.csv")].count("train") == 2
    assert load_model(out / "model.pt").model.config == TINY
    assert "cuda" in (out / "train.log").read_text()
