"""The Python API: ``dccnn_deploy.register`` computes in memory; ``save`` writes the CLI's files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import dccnn_deploy as dd
from dccnn_deploy.io import InputError, OutputExistsError
from dccnn_deploy.metrics import dice, mean_of
from dccnn_deploy.registration import RegisterOptions, register_files
from dccnn_deploy.registration.outputs import OUTPUT_FILES, OUTPUTS, select_outputs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def result(study):
    """The tiny model on the phantom pair, with label maps."""
    return dd.register(study["moving"], study["fixed"], model=study["model"],
                       moving_labels=study["moving_labels"], fixed_labels=study["fixed_labels"])


@pytest.fixture(scope="module")
def saved(result, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("api") / "out"
    result.save(out, outputs="all")
    return out


def _data(img) -> np.ndarray:
    return np.asarray(img.dataobj)


def test_save_writes_every_output_as_the_attributes_hold_them(result, saved):
    assert sorted(p.name for p in saved.iterdir()) == sorted(OUTPUT_FILES + ("moved_labels.nii.gz",))
    for name in ("moved", "inverse_moved", "fwd_warp", "inv_warp", "jacobian", "moved_labels"):
        on_disk, in_memory = nib.load(str(saved / f"{name}.nii.gz")), getattr(result, name)
        assert on_disk.shape == in_memory.shape, name
        assert np.array_equal(on_disk.affine, in_memory.affine), name
        assert np.array_equal(_data(on_disk), _data(in_memory)), name
        assert on_disk.get_data_dtype() == in_memory.get_data_dtype(), name
    assert result.fwd_warp.shape == (44, 48, 40, 1, 3) and result.fwd_warp.header.get_intent()[0] == "vector"
    report = json.loads((saved / "report.json").read_text())
    assert report == json.loads(json.dumps(result.metrics, default=float))
    assert report["seconds"]["total"] >= report["seconds"]["outputs"] > 0
    assert report["labels"]["after"]["dice_mean"] > 0.5 and report["model"]["path"] == str(result.metrics["model"]["path"])


def test_inputs_as_nibabel_image_or_array_give_the_same_result(study, result):
    moving, fixed = nib.load(str(study["moving"])), nib.load(str(study["fixed"]))
    network = dd.open_model(study["model"])  # opened once, usable for many pairs
    from_images = dd.register(moving, (np.asarray(fixed.dataobj), fixed.affine), model=network)
    assert np.allclose(_data(from_images.moved), _data(result.moved), atol=1e-5)
    assert from_images.metrics["fixed"] == "<fixed array>"


def test_an_image_inverted_as_a_whole_registers_like_the_original(study, result):
    moving = nib.load(str(study["moving"]))
    data = np.asarray(moving.dataobj, dtype=np.float32)
    inverted = dd.register((data.max() - data, moving.affine), study["fixed"], model=study["model"])
    assert inverted.metrics["bright_background_inverted"] == ["moving"]
    assert result.metrics["bright_background_inverted"] == []
    assert np.allclose(inverted.transform.forward, result.transform.forward, atol=1e-3)
    moved, original = _data(inverted.moved), _data(result.moved)
    inside = original > 0.1 * original.max()  # the written image keeps its own (inverted) intensities
    assert np.corrcoef(moved[inside], original[inside])[0, 1] < -0.99


def test_refine_runs_by_default_only_when_the_contrasts_differ(study, result):
    """The default ``refine="auto"``: nothing for a same-contrast pair; the short refinement of the
    network's result for a moving image inverted inside its foreground (mapped into the fixed
    contrast); ``refine=0`` turns it off."""
    assert result.metrics["refine"] is None and result.metrics["refine_iterations"] == 0
    moving = nib.load(str(study["moving"]))
    data = np.asarray(moving.dataobj, dtype=np.float32)
    inverted = (np.where(data > 0.05 * data.max(), data.max() - data, 0.0), moving.affine)
    res = dd.register(inverted, study["fixed"], model=study["model"])
    assert res.metrics["contrast"]["mapped"] and res.metrics["bright_background_inverted"] == []
    assert res.metrics["refine"]["preset"] == "auto" and sum(res.metrics["refine"]["iterations"]) > 0
    assert res.metrics["refine_iterations"] == 40 and "refine" in res.metrics["seconds"]
    off = dd.register(inverted, study["fixed"], model=study["model"], refine=0)
    assert off.metrics["refine"] is None and "refine" not in off.metrics["seconds"]
    from dccnn_deploy.refine import RefineSettings

    custom = dd.register(study["moving"], study["fixed"], model=study["model"],
                         refine=RefineSettings(iterations=(0, 2, 0), name="mine"))
    assert custom.metrics["refine"]["preset"] == "mine" and custom.metrics["options"]["refine"]["iterations"] == [0, 2, 0]


def test_either_image_can_be_the_one_mapped_into_the_other_contrast(study, result, monkeypatch):
    """A fixed image inverted inside its foreground: one of the two is mapped into the other's
    contrast (``contrast.mapped_image``); forcing the other choice runs the same registration
    in the other contrast, with the affine refit on whichever image was rank-mapped, and both
    align the labels about as well as the same-contrast pair."""
    import dataclasses

    import dccnn_deploy.registration.contrast as contrast

    fixed = nib.load(str(study["fixed"]))
    data = np.asarray(fixed.dataobj, dtype=np.float32)
    inverted = (np.where(data > 0.05 * data.max(), data.max() - data, 0.0), fixed.affine)
    labels = {"moving_labels": study["moving_labels"], "fixed_labels": study["fixed_labels"]}
    natural = dd.register(study["moving"], inverted, model=study["model"], **labels).metrics
    side = natural["contrast"]["mapped_image"]
    assert side in ("moving", "fixed") and natural["contrast"]["agreement_after"] >= natural["contrast"]["agreement_after_other"]
    original, calls = contrast._map_into, []

    def other_side_wins(*args):  # the candidates come in SIDES order: lower the naturally chosen one's agreement
        candidate = original(*args)
        calls.append(contrast.SIDES[len(calls)])
        return dataclasses.replace(candidate, agreement=candidate.agreement - (2.0 if calls[-1] == side else 0.0))

    monkeypatch.setattr(contrast, "_map_into", other_side_wins)
    forced = dd.register(study["moving"], inverted, model=study["model"], **labels).metrics
    assert forced["contrast"]["mapped_image"] == ({"moving", "fixed"} - {side}).pop()
    for report in (natural, forced):
        if report["contrast"]["map"].startswith("rank"):
            assert report["affine"]["refit_on_mapped_contrast"]
        assert report["labels"]["after"]["dice_mean"] > result.metrics["labels"]["after"]["dice_mean"] - 0.05


def test_apply_matches_the_moved_outputs(study, result):
    assert np.array_equal(_data(result.apply(study["moving"])), _data(result.moved))
    labels = result.apply(nib.load(str(study["moving_labels"])), labels=True)
    assert np.array_equal(_data(labels), _data(result.moved_labels))
    back = result.apply(study["fixed"], inverse=True)
    assert np.array_equal(_data(back), _data(result.inverse_moved))


def test_bad_input_is_a_one_line_error(study, tmp_path):
    with pytest.raises(InputError, match="all zeros"):
        dd.register((np.zeros((8, 8, 8)), np.eye(4)), study["fixed"], model=False, refine=1)
    with pytest.raises(InputError, match="expected a file path"):
        dd.register([1, 2, 3], study["fixed"], model=study["model"])
    with pytest.raises(InputError, match="--refine"):
        dd.register(study["moving"], study["fixed"], model=False)
    with pytest.raises(InputError, match="unknown backend"):
        dd.register(study["moving"], study["fixed"], model=study["model"], backend="tensorflow")


def test_output_selection_and_fail_fast(study, result, tmp_path, monkeypatch):
    out = tmp_path / "some"
    written = result.save(out, outputs="moved,fwd_warp.nii.gz,report")
    assert sorted(p.name for p in written) == ["fwd_warp.nii.gz", "moved.nii.gz", "report.json"]
    assert sorted(p.name for p in out.iterdir()) == ["fwd_warp.nii.gz", "moved.nii.gz", "report.json"]
    with pytest.raises(OutputExistsError):
        result.save(out, outputs=["moved"])
    assert select_outputs(None, labels=False) == select_outputs("default", labels=False) == (
        "moved", "fwd_warp", "inv_warp", "affine", "qc", "report")
    assert select_outputs("default,jacobian", labels=True) == (
        "moved", "fwd_warp", "jacobian", "moved_labels", "inv_warp", "affine", "qc", "report")
    assert select_outputs("all", labels=False) == tuple(n for n in OUTPUTS if n != "moved_labels")
    with pytest.raises(InputError, match="unknown output 'warp'"):
        select_outputs("moved,warp", labels=False)
    with pytest.raises(InputError, match="label maps"):
        select_outputs("moved_labels", labels=False)
    # register_files checks the output folder before computing anything
    monkeypatch.setattr("dccnn_deploy.registration.pipeline.run", lambda *a, **k: pytest.fail("computed"))
    with pytest.raises(OutputExistsError):
        register_files(study["moving"], study["fixed"], out, RegisterOptions(model=str(study["model"]), outputs="moved"))


def test_composite_transform_layout(result, saved):
    h5py = pytest.importorskip("h5py")
    with h5py.File(saved / "fwd_transform.h5") as f:
        types = [f[f"TransformGroup/{i}/TransformType"][0].decode() for i in range(3)]
        assert types == ["CompositeTransform_double_3_3", "AffineTransform_double_3_3", "DisplacementFieldTransform_float_3_3"]
        fixed = f["TransformGroup/2/TransformFixedParameters"][()]
        assert fixed[:3].tolist() == [44, 48, 40] and f["TransformGroup/2/TransformParameters"].size == 44 * 48 * 40 * 3
    with h5py.File(saved / "inv_transform.h5") as f:
        types = [f[f"TransformGroup/{i}/TransformType"][0].decode() for i in range(1, 3)]
        assert types == ["DisplacementFieldTransform_float_3_3", "AffineTransform_double_3_3"]


def _sitk_labels(sitk, transform_path: Path, moving: Path, reference: Path) -> np.ndarray:
    image = sitk.ReadImage(str(moving))
    out = sitk.Resample(image, sitk.ReadImage(str(reference)), sitk.ReadTransform(str(transform_path)),
                        sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def _mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    return mean_of(dice(a, b, [1, 2, 3]))


def test_composite_transforms_apply_in_simpleitk_like_the_warps(study, saved):
    sitk = pytest.importorskip("SimpleITK")
    fixed_labels = _data(nib.load(str(study["fixed_labels"])))
    for transform, moving, reference, expected in (
        ("fwd", study["moving_labels"], study["fixed"], _data(nib.load(str(saved / "moved_labels.nii.gz")))),
        ("inv", study["fixed_labels"], study["moving"], None),
    ):
        via_h5 = _sitk_labels(sitk, saved / f"{transform}_transform.h5", moving, reference)
        warp = sitk.DisplacementFieldTransform(sitk.ReadImage(str(saved / f"{transform}_warp.nii.gz"), sitk.sitkVectorFloat64))
        out = sitk.Resample(sitk.ReadImage(str(moving)), sitk.ReadImage(str(reference)), warp, sitk.sitkNearestNeighbor, 0)
        via_nii = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
        target = fixed_labels if transform == "fwd" else _data(nib.load(str(study["moving_labels"])))
        assert abs(_mean_dice(via_h5, target) - _mean_dice(via_nii, target)) < 0.002, transform
        assert np.mean(via_h5 == via_nii) > 0.99, transform
        if expected is not None:
            assert np.mean(via_h5 == expected) > 0.99


def test_composite_transforms_apply_in_antspyx_like_the_warps(study, saved):
    ants = pytest.importorskip("ants")
    fixed_labels = _data(nib.load(str(study["fixed_labels"])))
    moving = ants.image_read(str(study["moving_labels"]))
    fixed = ants.image_read(str(study["fixed"]))
    results = {}
    for name in ("fwd_transform.h5", "fwd_warp.nii.gz"):
        out = ants.apply_transforms(fixed, moving, transformlist=[str(saved / name)], interpolator="nearestNeighbor")
        results[name] = out.numpy()
    h5_dice, nii_dice = (_mean_dice(results[n], fixed_labels) for n in ("fwd_transform.h5", "fwd_warp.nii.gz"))
    assert nii_dice > 0.5 and abs(h5_dice - nii_dice) < 0.002
    assert "CompositeTransform" in str(ants.read_transform(str(saved / "fwd_transform.h5")))


def test_cli_json_quiet_progress_and_outputs(study, tmp_path):
    from typer.testing import CliRunner

    from dccnn_deploy.cli.app import app

    runner = CliRunner()
    base = ["register", str(study["moving"]), str(study["fixed"]), "--model", str(study["model"])]
    res = runner.invoke(app, base + ["-o", str(tmp_path / "a"), "--json", "--outputs", "moved,report"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report == json.loads((tmp_path / "a" / "report.json").read_text())
    assert "] affine pre-alignment" in res.stderr  # plain progress lines (not a terminal), on stderr
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["moved.nii.gz", "report.json"]
    from rich.console import Console

    from dccnn_deploy.cli.register_cmd import summary_table

    console = Console(record=True, width=120)
    console.print(summary_table(report))
    mi = report["sanity"]["mutual_information"]
    row = next(line for line in console.export_text().splitlines() if "mutual information" in line)
    assert [c.strip() for c in row.split("│")[2:5]] == [f"{mi[k]:.4f}" for k in ("none", "affine", "final")]
    from dccnn_deploy.cli.register_cmd import input_handling

    assert input_handling(report) == []  # one contrast, two brains: nothing to say
    mapped = {**report, "contrast": {"mapped": True, "mapped_image": "fixed", "map": "rank (decreasing)"},
              "refine": {"preset": "auto", "similarity": "lncc"}, "network_input_stripped": ["moving"],
              "field_of_view": {"moving_tissue_outside_other_view": 0.0, "fixed_tissue_outside_other_view": 0.234,
                                "cut_to_common_view": True}}
    console = Console(record=True, width=200)
    console.print(summary_table(mapped))
    assert ("moving head stripped for the network; contrasts differ: the fixed image mapped into the other's contrast "
            "(rank (decreasing)); 23 % of the fixed image's tissue outside the other's field of view: both cut to the "
            "common view for the network; refined (auto, lncc)") in " ".join(console.export_text().split())  # wrapped
    res = runner.invoke(app, base + ["-o", str(tmp_path / "b"), "--quiet", "--outputs", "report"])
    # quiet: no progress, no summary; only what the result's checks warn of (the tiny random model may lower a similarity)
    assert res.exit_code == 0 and all(line.startswith("warning: ") for line in res.output.splitlines())
    res = runner.invoke(app, base + ["-o", str(tmp_path / "c"), "--backend", "tensorflow"])
    assert res.exit_code == 2 and "unknown backend" in res.stderr and "\n" not in res.stderr.strip()
    res = runner.invoke(app, base + ["-o", str(tmp_path / "c"), "--outputs", "moved,bogus"])
    assert res.exit_code == 2 and "unknown output 'bogus'" in res.stderr and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_onnx_model_picks_onnxruntime(study, tmp_path):
    pytest.importorskip("onnxruntime")
    from dccnn_deploy.checkpoint import load_model
    from dccnn_deploy.export.onnx_export import export_onnx
    from dccnn_deploy.models import resolve_backend

    assert resolve_backend("m.onnx", None) == "onnxruntime" and resolve_backend("m.pt", None) == "torch"
    bundle = load_model(study["model"])
    onnx_path = export_onnx(bundle.model, bundle.grid_shape, tmp_path / "tiny.onnx",
                            metadata={"spacing": str(bundle.spacing_mm)}).path
    result = dd.register(study["moving"], study["fixed"], model=onnx_path)
    assert result.metrics["backend"] == "onnxruntime-cpu"
    from dccnn_deploy.ops import native

    assert result.metrics["compiled_sampler"] is native.available()  # recorded for support
    assert dd.open_model(onnx_path).fit_divisor is None  # a static graph keeps its grid
    assert result.metrics["grid"]["shape"] == list(bundle.grid_shape)


def test_a_checkpoint_fits_the_model_grid_to_the_fixed_foreground(study, tmp_path):
    """A torch network takes any grid that is a multiple of its divisor: the pipeline shortens the
    grid to the fixed foreground (plus margin); fields, outputs and metrics follow that grid."""
    import torch

    from dccnn_deploy.checkpoint import default_metadata, save_checkpoint
    from dccnn_deploy.model import DCCNNLSTMReg
    from conftest import SMALL

    torch.manual_seed(0)
    wide = save_checkpoint(tmp_path / "wide.pt", DCCNNLSTMReg(SMALL), default_metadata((48, 48, 48), 4.5))
    network = dd.open_model(wide)
    assert network.fit_divisor == SMALL.divisor
    result = dd.register(study["moving"], study["fixed"], model=network)
    shape = result.metrics["grid"]["shape"]
    assert result.metrics["grid"]["model_shape"] == [48, 48, 48]
    assert all(n % SMALL.divisor == 0 and n < 48 for n in shape), shape
    assert result.transform.grid.shape == tuple(shape) == result.transform.forward.shape[2:]
    moved = _data(result.moved)
    assert moved.shape == nib.load(study["fixed"]).shape and np.isfinite(moved).all()
    assert result.metrics["fields"]["folding_percent_forward"] == 0


def test_apply_many_images_at_once(study, saved, tmp_path):
    from typer.testing import CliRunner

    from dccnn_deploy.cli.app import app

    out = tmp_path / "applied"
    (tmp_path / "copy").mkdir()
    second = tmp_path / "copy" / "second.nii.gz"
    second.write_bytes(Path(study["moving"]).read_bytes())
    res = CliRunner().invoke(app, ["apply", str(saved / "fwd_warp.nii.gz"), str(study["moving"]), str(second),
                                   "--label-map", str(study["moving_labels"]), "-o", str(out)])
    assert res.exit_code == 0, res.output
    moved = _data(nib.load(str(saved / "moved.nii.gz")))
    for name in (Path(study["moving"]).name, "second.nii.gz"):
        assert np.abs(_data(nib.load(str(out / name))) - moved).max() < 1e-3
    labels = _data(nib.load(str(out / Path(study["moving_labels"]).name)))
    assert np.array_equal(labels, _data(nib.load(str(saved / "moved_labels.nii.gz"))))


def test_import_is_light():
    code = "import sys, dccnn_deploy as dd; assert 'torch' not in sys.modules, 'torch'; print(dd.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def _readme_api_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
@pytest.mark.skipif(dd.default_model_path() is None, reason="no default model installed")
def test_readme_api_example_runs_as_written(tmp_path, monkeypatch):
    """The README's example, executed as written on the bundled pair with the default model."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_api_example(), "README.md", "exec"), namespace)
    result = namespace["result"]
    assert isinstance(result, dd.RegistrationResult)
    assert (tmp_path / "out" / "report.json").is_file() and (tmp_path / "out" / "inv_warp.nii.gz").is_file()
    sim = result.metrics["similarity"]
    assert sim["after"]["ncc"] > sim["after_affine"]["ncc"]


def test_composite_round_trip_and_dccnn_apply_with_h5(study, result, saved, tmp_path):
    from typer.testing import CliRunner

    from dccnn_deploy.cli.app import app
    from dccnn_deploy.io import load_itk_composite

    matrix, (field, affine) = load_itk_composite(saved / "fwd_transform.h5")
    (want_matrix, (want_field, want_affine)) = result.composite_steps("fwd")
    assert np.allclose(matrix, want_matrix, atol=1e-9) and np.allclose(affine, want_affine, atol=1e-9)
    assert np.allclose(field, want_field, atol=1e-5)
    runner = CliRunner()
    out = tmp_path / "via_h5.nii.gz"
    res = runner.invoke(app, ["apply", str(saved / "fwd_transform.h5"), str(study["moving_labels"]), "-o", str(out), "--labels"])
    assert res.exit_code == 0, res.output
    assert np.mean(_data(nib.load(str(out))) == _data(result.moved_labels)) > 0.995
    back = tmp_path / "back.nii.gz"
    res = runner.invoke(app, ["apply", str(saved / "inv_transform.h5"), str(study["fixed"]), "-o", str(back),
                              "--reference", str(study["moving"])])
    assert res.exit_code == 0, res.output
    ours, theirs = _data(nib.load(str(back))), _data(result.inverse_moved)
    inner = (slice(4, -4),) * 3
    assert np.corrcoef(ours[inner].ravel(), theirs[inner].ravel())[0, 1] > 0.99


def test_preprocess_settings_from_every_kind_of_metadata():
    from dccnn_deploy.preprocess.settings import PreprocessSettings

    checkpoint = {"grid_shape": [32, 40, 48], "spacing_mm": 3.0, "normalisation": {"method": "percentile", "lower": 1.0, "upper": 99.0}}
    onnx = {"grid_shape": "32,40,48", "spacing": "3.0,3.0,3.0", "normalisation": str(checkpoint["normalisation"])}
    want = PreprocessSettings((32, 40, 48), 3.0, 1.0, 99.0)
    assert PreprocessSettings.from_metadata(checkpoint) == want == PreprocessSettings.from_metadata(onnx)
    assert PreprocessSettings.from_metadata({"grid_shape": "8,8,8", "spacing": "unknown"}).spacing_mm == 2.0
    for bad in ({}, {"grid_shape": "8,8"}, {"grid_shape": "8,8,8", "normalisation": {"method": "zscore"}}):
        with pytest.raises(InputError, match="m.onnx"):
            PreprocessSettings.from_metadata(bad, "m.onnx")


def test_checkpoint_normalisation_reaches_the_pipeline(study, tmp_path):
    """The percentiles in a checkpoint's metadata are the ones registration uses."""
    from dccnn_deploy.checkpoint import read_checkpoint
    import torch

    payload = read_checkpoint(study["model"])
    payload["metadata"] = {**payload["metadata"], "normalisation": {"method": "percentile", "lower": 20.0, "upper": 60.0}}
    torch.save(payload, tmp_path / "clipped.pt")
    default = dd.register(study["moving"], study["fixed"], model=study["model"], affine=False)
    clipped = dd.register(study["moving"], study["fixed"], model=tmp_path / "clipped.pt", affine=False)
    assert (clipped.prepared.fixed_g == 1.0).mean() > (default.prepared.fixed_g == 1.0).mean() + 0.05


def test_default_registration_runs_the_forward_path_only_and_inverts_it_numerically(study, result):
    from dccnn_deploy.ops.invert import inverse_residual

    network = dd.open_model(study["model"])
    seen, run = [], network.backend.run
    network.backend.run = lambda m, f, inverse=True: seen.append(inverse) or run(m, f, inverse=inverse)
    res = dd.register(study["moving"], study["fixed"], model=network,
                      moving_labels=study["moving_labels"], fixed_labels=study["fixed_labels"])
    assert seen and not any(seen)  # the network's inverse path was never run
    assert np.array_equal(_data(res.moved), _data(result.moved))  # the forward map is the same
    reg = res.transform
    assert float(inverse_residual(reg.forward, reg.inverse).mean()) < 0.01  # voxels of the model grid
    assert np.allclose(_data(res.inv_warp), _data(result.inv_warp), atol=0.05)
    seen.clear()
    dd.register(study["moving"], study["fixed"], model=network, refine=2)
    assert seen and all(seen)  # refinement starts from both of the network's fields


def test_the_model_s_passes_stop_when_they_no_longer_improve_the_alignment(study):
    """The model's own passes (here 4) are scored; an image against itself keeps none of them (the
    written warp is the identity), while passes asked for explicitly all run."""
    import dataclasses

    network = dd.open_model(study["model"])
    network = dataclasses.replace(network, settings=dataclasses.replace(network.settings, inference_passes=4))
    itself = dd.register(study["fixed"], study["fixed"], model=network).metrics
    scored = itself["passes_scored"]
    assert itself["passes"] == 0 and scored["max"] == 4 and len(scored["local_ncc"]) == 2
    assert scored["local_ncc"][1] - scored["local_ncc"][0] < 1e-3
    assert itself["fields"]["folding_percent_forward"] == 0 and itself["warnings"] == []
    asked = dd.register(study["fixed"], study["fixed"], model=network, passes=4).metrics
    assert asked["passes"] == 4 and asked["passes_scored"] is None
