"""Training package: config, data split, synthesis, loop (checkpoints, log, exact resume), CLI, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from dccnn_deploy.checkpoint import load_model, read_checkpoint
from dccnn_deploy.cli import train_cmd
from dccnn_deploy.config import LossWeights, ModelConfig
from dccnn_deploy.train import DataConfig, SynthConfig, TrainConfig, train
from dccnn_deploy.train.data import build_sampler, image_subjects, split_subjects
from dccnn_deploy.train.loop import LOSS_TERMS, read_log
from dccnn_deploy.train.synth import Corruption, random_lookup, synthesize

TINY = ModelConfig(scales=3, steps=2, pyramid_channels=(8, 4, 4), encoder_channels=(4, 4, 4))
REPO = Path(__file__).resolve().parents[1]


def write_subjects(root: Path, n: int, shape=(22, 22, 22), spacing: float = 1.5, seed: int = 0) -> Path:
    """``n`` ellipsoid "heads" ``sub<i>.nii.gz`` with 4-label maps ``sub<i>_seg.nii.gz``, each with
    its own shape, position and header offset."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    index = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    for i in range(n):
        centre = np.array(shape) / 2 + rng.normal(0, 1, 3)
        q = (index - centre) / (np.array([7.0, 8.0, 6.5]) * rng.uniform(0.85, 1.1, 3))
        r = np.linalg.norm(q, axis=-1)
        labels = np.zeros(shape, np.int16)
        labels[r < 1] = 1
        labels[(r < 0.7) & (q[..., 0] < 0)] = 2
        labels[(r < 0.7) & (q[..., 0] >= 0)] = 3
        labels[r < 0.3] = 4
        image = np.array([0.0, 60, 100, 120, 30])[labels] + rng.normal(0, 3, shape)
        affine = np.diag([spacing] * 3 + [1.0])
        affine[:3, 3] = -spacing * np.array(shape) / 2 + rng.normal(0, 2, 3)
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / f"sub{i}.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), root / f"sub{i}_seg.nii.gz")
    return root


def tiny_config(data_dir: Path, **overrides) -> TrainConfig:
    """Tiny model on a 16^3 grid: real labelled pairs mixed with synthetic ones."""
    cfg = TrainConfig(
        model=TINY, grid_shape=(16, 16, 16), spacing_mm=2.0, iterations=4, val_every=2, checkpoint_every=2,
        threads=1,
        data=DataConfig(images=[str(data_dir)], labels_pattern="{stem}_seg", val_subjects=1, align="none",
                        max_val_pairs=2),
        synth=SynthConfig(enabled=True, fraction=0.5, val_pairs=1),
    )
    return replace(cfg, **overrides)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_subjects(tmp_path_factory.mktemp("subjects"), 5)


@pytest.fixture(scope="module")
def run_a(data_dir, tmp_path_factory):
    """One uninterrupted 4-step run (shared by the checkpoint and the resume tests), its
    learning rate annealed over the last 3 steps (so the resume test covers the schedule)."""
    out = tmp_path_factory.mktemp("run_a")
    cfg = tiny_config(data_dir, lr=1e-3, lr_anneal_start=1, lr_anneal_steps=3, lr_final=1e-4)
    return cfg, out, train(cfg, out, progress=False)


def train_rows(out: Path) -> list[dict]:
    return [r for r in read_log(out / "log.csv") if r["kind"] == "train"]


# ---------------------------------------------------------------------------- config


def test_config_toml_round_trip_and_errors(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(textwrap.dedent("""
        iterations = 7
        grid_shape = [16, 16, 16]
        [model]
        scales = 3
        steps = 2
        pyramid_channels = [8, 4, 4]
        encoder_channels = [4, 4, 4]
        [loss]
        cycle = 0.5
        [data]
        images = ["imgs"]
        val_subjects = ["a", "b"]
        [synth]
        enabled = true
        val_subjects = 2
    """))
    cfg = TrainConfig.load(path)
    assert cfg.iterations == 7 and cfg.model == TINY and cfg.loss.cycle == 0.5 and cfg.loss.jacobian == 1e5
    assert cfg.data.images == [str(tmp_path / "imgs")] and cfg.data.val_subjects == ["a", "b"]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ('[data]\nimagez = ["x"]\n', 'amp = "fp8"\n', "grid_shape = [16, 16]\n", "[model]\nscales = 0\n",
                "lr = 1e-4\nlr_final = 1e-3\n", "lr_anneal_steps = -1\n"):
        path.write_text(bad)
        with pytest.raises(ValueError, match=str(path)):
            TrainConfig.load(path)


def test_learning_rate_is_constant_then_a_half_cosine():
    cfg = TrainConfig(lr=1e-3, iterations=10)
    assert [cfg.learning_rate(s) for s in (1, 10, 11)] == [1e-3] * 3  # no anneal: constant
    cfg = replace(cfg, lr_anneal_start=6, lr_anneal_steps=4, lr_final=1e-4)
    rates = [cfg.learning_rate(s) for s in range(1, 13)]
    assert rates[:6] == [1e-3] * 6 and rates[9] == pytest.approx(1e-4) and rates[11] == pytest.approx(1e-4)
    assert rates[7] == pytest.approx(5.5e-4)  # half-way: the mean of lr and lr_final
    assert all(a > b for a, b in zip(rates[5:10], rates[6:10]))


def test_default_recipe_is_the_paper_model():
    cfg = TrainConfig.load(REPO / "configs" / "default.toml")
    # the paper's network and loss weights, plus the label-overlap term (0 = paper-exact)
    assert cfg.model == ModelConfig() and replace(cfg.loss, label_dice=0.0) == LossWeights()
    assert cfg.loss.label_dice > 0
    assert cfg.grid_shape == (80, 96, 112) and cfg.spacing_mm == 2.0 and cfg.batch_size == 1
    assert cfg.crop_shape == (64, 64, 64) and cfg.init.endswith("models/dccnn-default.pt")  # warm start
    assert cfg.synth.enabled and len(cfg.synth.val_subjects) == 2 and cfg.data.val_subjects == ["ch2"]
    assert cfg.synth.independent_contrast > 0 and cfg.synth.head_prob > 0 and cfg.augment.strip_prob > 0


# ---------------------------------------------------------------------------- data


def test_finds_images_with_label_maps_by_pattern_or_csv(data_dir, tmp_path):
    by_pattern = image_subjects(DataConfig(images=[str(data_dir)], labels_pattern="{stem}_seg"))
    assert [s.name for s in by_pattern] == [f"sub{i}" for i in range(5)]  # label maps are not images
    assert all(s.labels == data_dir / f"{s.name}_seg.nii.gz" for s in by_pattern)
    table = tmp_path / "subjects.csv"
    table.write_text(f"image,labels\n{data_dir}/sub0.nii.gz,{data_dir}/sub0_seg.nii.gz\n{data_dir}/sub1.nii.gz,\n")
    by_csv = image_subjects(DataConfig(labels_csv=str(table)))
    assert [(s.name, s.labels) for s in by_csv] == [("sub0", data_dir / "sub0_seg.nii.gz"), ("sub1", None)]


def test_validation_is_held_out_by_subject(data_dir):
    names = [f"s{i}" for i in range(6)]
    for val in (2, ["s1", "s4"]):
        train_names, val_names = split_subjects(names, val, seed=3, name=lambda s: s)
        assert len(val_names) == 2 and not set(train_names) & set(val_names)
        assert sorted(train_names + val_names) == names
    sampler = build_sampler(tiny_config(data_dir, data=replace(tiny_config(data_dir).data, val_subjects=2)))
    held = {s.name for s in sampler.real.val}
    trained = {s.name for s in sampler.real.train}
    assert len(held) == 2 and not held & trained
    for pair in sampler.validation_pairs():  # only held-out subjects, real and synthetic
        assert set(pair.name.split(":")[1].split("->")) <= held
    drawn = {n for step in range(1, 30) for name in sampler.batch(step)[2] for n in name.split(":")[1].split("->")}
    assert drawn <= trained


def test_synth_draws_new_anatomies_and_keeps_labels(data_dir):
    sampler = build_sampler(tiny_config(data_dir))
    labels = sampler.synth.train[0].labels
    lut = random_lookup(4, np.random.default_rng(0))
    draw = lambda seed: synthesize(  # noqa: E731
        labels, lut, 3.0, 4, 0.05, Corruption(), np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    )
    (im1, lab1), (im2, lab2), (im1b, _) = draw(1), draw(2), draw(1)
    assert torch.equal(im1, im1b)  # reproducible from the seed
    assert (lab1 != lab2).float().mean() > 0.02 and (im1 - im2).abs().mean() > 1e-3  # new anatomy per draw
    originals = set(torch.unique(labels).tolist())
    for im, lab in ((im1, lab1), (im2, lab2)):
        assert set(torch.unique(lab).tolist()) <= originals
        assert torch.isfinite(im).all() and im.min() >= 0 and im.max() <= 1 and im.shape == labels.shape


def test_training_windows_cut_images_and_labels_alike(data_dir):
    sampler = build_sampler(tiny_config(data_dir, crop_shape=(8, 12, 16), synth=SynthConfig(enabled=True, fraction=1.0)))
    full = build_sampler(tiny_config(data_dir, synth=SynthConfig(enabled=True, fraction=1.0)))
    starts = set()
    for step in range(1, 6):
        moving, fixed, names = sampler.batch(step)
        assert moving.shape == fixed.shape == (1, 1, 8, 12, 16)
        whole, _, whole_names = full.batch(step)  # the crop is drawn after the pair: same pair
        assert names == whole_names
        hits = [
            (a, b, c) for a in range(9) for b in range(5) for c in range(1)
            if torch.equal(whole[..., a : a + 8, b : b + 12, c : c + 16], moving)
        ]
        assert len(hits) >= 1
        starts.add(hits[0])
    assert len(starts) > 1  # windows move between steps
    pair = full.validation_pairs()[0].cropped((1, 2, 3), (4, 5, 6))
    assert pair.moving.shape == pair.moving_labels.shape == (1, 1, 4, 5, 6)
    for bad in ((8, 8), (8, 8, 17), (1, 8, 8)):
        with pytest.raises(ValueError, match="crop_shape"):
            tiny_config(data_dir, crop_shape=bad)


# ---------------------------------------------------------------------------- loop


def test_training_writes_checkpoints_and_log(run_a):
    cfg, out, result = run_a
    assert result.step == 4 and (out / "last.pt").is_file() and (out / "best.pt").is_file()
    rows = read_log(out / "log.csv")
    assert [r["kind"] for r in rows] == ["train", "train", "val", "train", "train", "val"]
    for r in train_rows(out):
        assert all(np.isfinite(float(r[k])) for k in ("loss", *LOSS_TERMS, "lr", "seconds") if k != "label_dice")
        assert float(r["lr"]) == pytest.approx(cfg.learning_rate(int(r["step"])))
        assert r["label_dice"] == ""  # weight 0 (the paper's losses alone): not computed
    assert [float(r["lr"]) for r in train_rows(out)][::3] == pytest.approx([1e-3, 1e-4])  # annealed
    val = [r for r in rows if r["kind"] == "val"][-1]
    assert 0 < float(val["dice"]) <= 1 and float(val["score"]) == float(val["dice"])
    bundle = load_model(out / "last.pt")  # weights_only loading of the package format
    assert bundle.grid_shape == (16, 16, 16) and bundle.model.config == TINY
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["step"] == 4 and TrainConfig.from_dict(ckpt["train_config"]) == cfg
    assert ckpt["metadata"]["training"]["data"]["real"]["val"] and "optimizer" in ckpt
    with torch.no_grad():
        out_fields = bundle.model(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))
    assert out_fields.forward.shape == (1, 3, 16, 16, 16)


def test_release_drops_training_state_only(run_a, tmp_path):
    from dccnn_deploy.cli.app import app

    _, out, _ = run_a
    released = tmp_path / "model.pt"
    res = CliRunner().invoke(app, ["release", str(out / "best.pt"), "-o", str(released), "--name", "tiny"])
    assert res.exit_code == 0, res.output
    ckpt, source = read_checkpoint(released), read_checkpoint(out / "best.pt")
    assert not {"optimizer", "rng", "step", "sampler"} & set(ckpt) and ckpt["train_config"] == source["train_config"]
    assert ckpt["metadata"]["model_name"] == "tiny" and ckpt["metadata"]["training"] == source["metadata"]["training"]
    assert released.stat().st_size < (out / "best.pt").stat().st_size
    a, b = load_model(released).model, load_model(out / "best.pt").model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    again = CliRunner().invoke(app, ["release", str(out / "best.pt"), "-o", str(released)])
    assert again.exit_code == 2 and "exists" in again.output


def test_resume_continues_exactly(run_a, data_dir, tmp_path):
    cfg, out_a, result_a = run_a
    out_b = tmp_path / "b"
    train(replace(cfg, iterations=2), out_b, progress=False)
    with pytest.raises(Exception, match="resume"):  # an existing run is never overwritten
        train(cfg, out_b, progress=False)
    result_b = train(cfg, out_b, resume=out_b / "last.pt", progress=False)
    rows_a, rows_b = train_rows(out_a), train_rows(out_b)
    assert [r["step"] for r in rows_b] == ["1", "2", "3", "4"]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert [ra[k] for k in ("loss", *LOSS_TERMS, "pairs")] == [rb[k] for k in ("loss", *LOSS_TERMS, "pairs")]
    for (name, wa), wb in zip(result_a.model.state_dict().items(), result_b.model.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), name


def test_affine_prealignment_to_the_reference(data_dir):
    """Subjects land on the reference: with alignment they correlate better with it."""
    base = tiny_config(data_dir, grid_shape=(20, 20, 20))
    corr = {}
    for align in ("none", "rigid"):
        cfg = replace(base, data=replace(base.data, align=align, val_subjects=0), synth=SynthConfig())
        subjects = {s.name: s.image.flatten() for s in build_sampler(cfg).real.train}
        ref = subjects.pop("sub0")  # the first image is the reference
        corr[align] = np.mean([np.corrcoef(ref, im)[0, 1] for im in subjects.values()])
    assert corr["rigid"] > corr["none"]


# ---------------------------------------------------------------------------- CLI


def cli_app() -> typer.Typer:
    app = typer.Typer()
    app.command("train")(train_cmd.train)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps "train" a subcommand, as in dccnn
        pass

    return app


def test_cli_trains_and_rejects_bad_input(data_dir, tmp_path):
    runner, app = CliRunner(), cli_app()
    config = tmp_path / "tiny.toml"
    config.write_text(textwrap.dedent("""
        grid_shape = [16, 16, 16]
        threads = 1
        [model]
        scales = 3
        steps = 2
        pyramid_channels = [8, 4, 4]
        encoder_channels = [4, 4, 4]
        [data]
        align = "none"
        max_val_pairs = 1
    """))
    args = ["train", str(data_dir), "--config", str(config), "--labels-pattern", "{stem}_seg", "--iterations", "1",
            "--device", "cpu", "--val-subjects", "sub0", "--no-progress", "--out"]
    ok = runner.invoke(app, [*args, str(tmp_path / "run")])
    assert ok.exit_code == 0, ok.output
    ckpt = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 1 and ckpt["metadata"]["training"]["data"]["real"]["val"] == ["sub0"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "bad.toml").write_text("[model]\nwidth = 3\n")
    for bad in (
        ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "o1")],
        ["train", str(empty), "--out", str(tmp_path / "o2")],
        ["train", str(data_dir), "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "o3")],
        [*args, str(tmp_path / "run")],  # a run exists there and --resume was not given
    ):
        res = runner.invoke(app, bad)
        assert res.exit_code == 2, (bad, res.output)
        assert len(res.output.strip().splitlines()) == 1 and res.output.startswith("error:"), res.output


# ---------------------------------------------------------------------------- DDP


WORKER = """
import json, sys, torch
from dccnn_deploy.train import TrainConfig, train
cfg = TrainConfig.load(sys.argv[1])
result = train(cfg, sys.argv[2], device="cpu", progress=False)
rank = int(__import__("os").environ["RANK"])
torch.save(result.model.state_dict(), f"{sys.argv[2]}/weights{rank}.pt")
json.dump([r["pairs"] for r in result.history], open(f"{sys.argv[2]}/pairs{rank}.json", "w"))
"""


def test_ddp_two_cpu_ranks(data_dir, tmp_path):
    config = tmp_path / "ddp.toml"
    cfg = tiny_config(data_dir, iterations=3, val_every=3, checkpoint_every=3)
    config.write_text(toml_of(cfg.to_dict()))
    (tmp_path / "worker.py").write_text(WORKER)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "worker.py"), str(config), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = (torch.load(out / f"weights{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # replicas stay identical
    pairs0, pairs1 = (json.loads((out / f"pairs{r}.json").read_text()) for r in (0, 1))
    assert len(pairs0) == len(pairs1) == 3 and pairs0 != pairs1  # each rank drew its own pairs
    assert len(train_rows(out)) == 3 and read_checkpoint(out / "last.pt")["metadata"]["training"]["world_size"] == 2


def toml_of(d: dict) -> str:
    """A minimal TOML writer for the config dict (JSON scalars and lists are valid TOML here)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, table in ((k, v) for k, v in d.items() if isinstance(v, dict)):
        lines += [f"[{k}]", *(f"{kk} = {json.dumps(vv)}" for kk, vv in table.items())]
    return "\n".join(lines) + "\n"
