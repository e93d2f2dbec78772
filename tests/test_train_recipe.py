"""The v2 training recipe: label-overlap loss, independent contrasts, heads, random shapes,
masked real pairs, warm start."""

from __future__ import annotations

from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch

from dccnn_deploy.checkpoint import read_checkpoint, save_checkpoint
from dccnn_deploy.config import LossWeights
from dccnn_deploy.losses import DCCNNLoss, label_dice_loss, similarity_loss, soft_dice
from dccnn_deploy.model import DCCNNLSTMReg
from dccnn_deploy.train import AugmentConfig, SynthConfig, train
from dccnn_deploy.train.data import Pair, build_sampler, image_subjects, loss_labels
from dccnn_deploy.train import distributed
from dccnn_deploy.train.loop import _Run, read_log
from dccnn_deploy.train.synth import HEAD_LABELS, add_head, outside_distance, random_shapes

from tests.test_train import TINY, tiny_config, write_subjects


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_subjects(tmp_path_factory.mktemp("recipe"), 4)


@pytest.fixture(scope="module")
def masked_dir(tmp_path_factory):
    """Four subjects, brain masks ``sub<i>_mask`` beside the first two."""
    root = write_subjects(tmp_path_factory.mktemp("masked"), 4)
    for i in range(2):
        seg = nib.load(root / f"sub{i}_seg.nii.gz")
        nib.save(nib.Nifti1Image((np.asarray(seg.dataobj) > 1).astype(np.uint8), seg.affine),
                 root / f"sub{i}_mask.nii.gz")
    return root


def _blob(shape=(16, 16, 16), centre=8.0, radius=4.0) -> torch.Tensor:
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    return ((idx - centre).pow(2).sum(0).sqrt() < radius).float()[None, None]


def test_soft_dice_and_label_loss():
    a = _blob()
    assert torch.allclose(soft_dice(a, a), torch.ones(1), atol=1e-4)
    assert float(soft_dice(a, _blob(centre=10.0))) < 0.9
    # identity fields: zero loss for matching maps, positive for shifted ones, and a gradient
    onehots = torch.cat([a, a])
    fields = torch.zeros(2, 3, 16, 16, 16, requires_grad=True)
    assert float(label_dice_loss(fields, onehots).detach()) < 1e-3
    shifted = torch.cat([a, _blob(centre=10.0)])
    loss = label_dice_loss(fields, shifted)
    loss.backward()
    assert float(loss.detach()) > 0.1 and float(fields.grad.abs().sum()) > 0


def test_similarity_mask_drops_rows():
    model = DCCNNLSTMReg(TINY)
    x, y = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    out = model(x, y, trace=True)
    images = torch.cat([x, y])
    assert float(similarity_loss(out.scales, images, 5, [0.8] * 3, torch.zeros(1))) == 0.0
    assert float(similarity_loss(out.scales, images, 5, [0.8] * 3, torch.ones(1))) != 0.0


def test_loss_adds_label_term_only_when_weighted():
    model = DCCNNLSTMReg(TINY)
    x = torch.rand(1, 1, 16, 16, 16)
    out = model(x, x, trace=True)
    onehots = (_blob(), _blob())
    _, off = DCCNNLoss(divisor=TINY.divisor)(out, x, x, onehots)
    assert "label_dice" not in off
    _, on = DCCNNLoss(LossWeights(label_dice=1.0), divisor=TINY.divisor)(out, x, x, onehots)
    assert 0.0 <= on["label_dice"] < 0.1
    _, unlabelled = DCCNNLoss(LossWeights(label_dice=1.0), divisor=TINY.divisor)(out, x, x)
    assert np.isnan(unlabelled["label_dice"])


def test_head_shells_and_random_shapes():
    brain = _blob(radius=4.0)
    dist = torch.from_numpy(outside_distance(brain[0, 0].numpy()))[None, None]
    head = add_head(brain, dist, np.random.default_rng(0))
    assert torch.equal(head[brain > 0], brain[brain > 0])  # the brain is untouched
    assert set(torch.unique(head).tolist()) == {0.0, 1.0, *map(float, HEAD_LABELS)}
    shells = head >= HEAD_LABELS[0]
    assert bool((dist[shells] > 0).all())
    shapes = random_shapes(brain, 6, 3, torch.Generator().manual_seed(0))
    assert bool((shapes[brain == 0] == 0).all()) and shapes.max() <= 6 and len(torch.unique(shapes)) > 3


def test_loss_labels_common_subset_without_head_labels():
    m = torch.tensor([0, 1, 2, 3, 2001.0]).reshape(1, 1, 5, 1, 1)
    f = torch.tensor([0, 2, 3, 4, 2001.0]).reshape(1, 1, 5, 1, 1)
    pair = Pair(m, m, m, f, "p")
    assert loss_labels([pair], 0, np.random.default_rng(0)) == [2, 3]
    assert len(loss_labels([pair], 1, np.random.default_rng(0))) == 1


def test_sampler_independent_contrasts_heads_and_onehots(data_dir):
    cfg = tiny_config(data_dir, loss=LossWeights(label_dice=1.0, max_dice_labels=3),
                      synth=SynthConfig(enabled=True, fraction=1.0, val_pairs=1, independent_contrast=1.0,
                                        head_prob=1.0, shapes_fraction=0.5, coarse_velocity_std=1.0,
                                        coarse_velocity_spacing=8))
    sampler = build_sampler(cfg)
    batches = [sampler.labelled_batch(step) for step in range(1, 7)]
    assert all(float(b.same_contrast[0]) == 0.0 for b in batches)
    assert any(b.names[0].startswith("shapes:") for b in batches)
    for b in batches:
        assert b.onehots is not None and b.onehots[0].shape[1] <= 3 and b.onehots[0].shape == b.onehots[1].shape
    again = sampler.labelled_batch(3)  # a function of the step
    assert torch.equal(again.moving, batches[2].moving) and torch.equal(again.onehots[0], batches[2].onehots[0])


def test_real_pairs_skull_stripped_by_masks(masked_dir):
    data_dir = masked_dir
    cfg = tiny_config(data_dir, data=replace(tiny_config(data_dir).data, masks_pattern="{stem}_mask", val_subjects=["sub3"]),
                      augment=AugmentConfig(deform_prob=0.0, intensity_prob=0.0, strip_prob=1.0),
                      synth=SynthConfig(enabled=False))
    subjects = image_subjects(cfg.data)
    assert sorted(s.name for s in subjects) == ["sub0", "sub1", "sub2", "sub3"]  # masks are not images
    sampler = build_sampler(cfg)
    masked = {s.name: s.mask for s in sampler.real.train}
    assert masked["sub2"] is None and masked["sub0"] is not None
    stripped = 0
    for step in range(1, 12):
        b = sampler.labelled_batch(step)
        a, c = b.names[0].split(":")[1].split("->")
        if masked[a] is not None and masked[c] is not None:
            assert float(b.moving[masked[a] == 0].abs().max()) == 0.0
            stripped += 1
    assert stripped > 0


def test_warm_start_logs_step0_validation(data_dir, tmp_path):
    net = DCCNNLSTMReg(TINY)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.01)
    init = save_checkpoint(tmp_path / "init.pt", net, {})
    cfg = tiny_config(data_dir, iterations=1, init=str(init), lr=1e-12)
    train(cfg, tmp_path / "run", progress=False)
    rows = read_log(tmp_path / "run" / "log.csv")
    assert rows[0]["kind"] == "val" and rows[0]["step"] == "0"
    trained = read_checkpoint(tmp_path / "run" / "last.pt")["state_dict"]
    for name, value in net.state_dict().items():
        assert torch.allclose(trained[name], value, atol=1e-6), name


def test_cascade_steps_train_on_the_second_pass_input(data_dir, tmp_path):
    with pytest.raises(ValueError, match="cascade_prob"):
        tiny_config(data_dir, cascade_prob=1.5)
    net = DCCNNLSTMReg(TINY)
    for p in net.parameters():  # a network that moves things, so the second-pass input differs
        torch.nn.init.normal_(p, std=0.05)
    init = save_checkpoint(tmp_path / "init.pt", net, {})
    cfg = tiny_config(data_dir, iterations=2, init=str(init), cascade_prob=1.0)
    result = train(cfg, tmp_path / "run", progress=False)
    assert all(r["pairs"].endswith("(2nd pass)") for r in result.history)
    run = _Run(cfg, tmp_path / "probe", distributed.setup("cpu"))
    run.warm_start(init)
    batch = run.sampler.labelled_batch(1)
    moved, onehots = run.second_pass_input(batch.moving, batch.fixed, batch.onehots)
    assert moved.shape == batch.moving.shape and not torch.allclose(moved, batch.moving)
    if batch.onehots is not None:
        assert torch.equal(onehots[1], batch.onehots[1]) and not torch.allclose(onehots[0], batch.onehots[0])
    assert all(run.cascades(s) for s in range(1, 6))
    run.config = replace(cfg, cascade_prob=0.0)
    assert not any(run.cascades(s) for s in range(1, 6))
