"""The fast outputs path (issue 12): same results as a float64 reference, same file content,
background writes, and a CLI start-up that does not import torch."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from dccnn_deploy.io import BackgroundWriter, load_itk_displacement, save_itk_displacement, save_volume
from dccnn_deploy.io import nifti as nifti_io
from dccnn_deploy.io.nifti import nifti_image
from dccnn_deploy.ops.smoothing import gaussian_smooth
from dccnn_deploy.ops.warp import compose, warp
from dccnn_deploy.preprocess.grid import Grid, model_grid
from dccnn_deploy.runtime import backends as backends_module
from dccnn_deploy.runtime.backends import TorchBackend, _transposed_as_conv, cpu_inference_model, uses_bf16
from dccnn_deploy.transform import Registration, map_jacobian, sample_at, world_displacement
from conftest import lively_model
from phantoms import grid_points, lia_affine, rotation

ROOT = Path(__file__).resolve().parents[1]


def _rot4(axis, degrees: float) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rotation(axis, degrees)
    return out


def _case(seed: int = 0):
    """Oblique fixed/moving grids (LIA, anisotropic), an affine and smooth fields of a few voxels."""
    rng = np.random.default_rng(seed)
    fixed = Grid((37, 41, 33), lia_affine((37, 41, 33), 1.1, (2.0, -3.0, 4.0)))
    moving = Grid((35, 39, 36), _rot4((0, 0, 1), 8.0) @ lia_affine((35, 39, 36), 1.2, (0.0, 1.0, -2.0)))
    matrix = _rot4((1, 0.2, 0), 6.0) @ np.diag([1.04, 0.97, 1.02, 1.0])
    matrix[:3, 3] = [2.5, -1.5, 3.0]
    grid = model_grid((14, 16, 12), 3.0, (1.0, -2.0, 0.5))
    fields = [gaussian_smooth(torch.from_numpy(rng.normal(0, 4.0, (1, 3, 14, 16, 12)).astype(np.float32)), 1.5)
              for _ in range(2)]
    return fixed, moving, Registration(matrix, grid, *fields), rng


def _reference_points(reg: Registration, target: Grid, forward: bool) -> np.ndarray:
    """float64 NumPy/SciPy map of the target voxels, ``(D, H, W, 3)`` world mm."""
    a_g = reg.grid.affine
    to_grid = np.linalg.inv(a_g) @ (target.affine if forward else np.linalg.inv(reg.affine) @ target.affine)
    out = (reg.affine @ a_g) if forward else a_g
    p = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in target.shape], indexing="ij"), -1)
    v = p @ to_grid[:3, :3].T + to_grid[:3, 3]
    field = (reg.forward if forward else reg.inverse)[0].double().numpy()
    coords = np.moveaxis(v, -1, 0)
    u = np.stack([ndimage.map_coordinates(field[k], coords, order=1, mode="nearest") for k in range(3)], -1)
    return (v + u) @ out[:3, :3].T + out[:3, 3]


def test_exact_inverse_inverts_the_forward_map_between_nodes():
    """With ``exact_inverse`` the inverse map at the moving voxels is the preimage under the
    (trilinear) forward map at every voxel, not only at the model-grid nodes."""
    from dccnn_deploy.ops.invert import invert_displacement
    from dccnn_deploy.ops.jacobian import jacobian_determinant

    fixed, moving, reg, _ = _case()
    forward = 0.6 * reg.forward
    assert float(jacobian_determinant(forward).min()) > 0.1  # a diffeomorphism
    node_inverse = invert_displacement(forward, iterations=30)
    errors = {}
    for exact in (False, True):
        r = Registration(reg.affine, reg.grid, forward, node_inverse, exact_inverse=exact)
        back = r.inverse_points(moving)[0].permute(1, 2, 3, 0).numpy().astype(np.float64)  # fixed world
        to_grid = np.linalg.inv(reg.grid.affine)
        v = back @ to_grid[:3, :3].T + to_grid[:3, 3]
        inside = np.all((v >= 1) & (v <= np.array(reg.grid.shape) - 2), axis=-1)
        u = np.stack([ndimage.map_coordinates(forward[0, k].double().numpy(), np.moveaxis(v, -1, 0), order=1)
                      for k in range(3)], -1)
        out = reg.affine @ reg.grid.affine
        mapped = (v + u) @ out[:3, :3].T + out[:3, 3]  # the forward map of the inverse points
        errors[exact] = np.linalg.norm(mapped - grid_points(moving), axis=-1)[inside]
    assert errors[False].mean() > 0.02  # interpolating the node inverse is not exact between nodes
    assert errors[True].mean() < 0.2 * errors[False].mean()
    assert np.percentile(errors[True], 99) < 0.25 * np.percentile(errors[False], 99)


def test_compiled_preimage_step_matches_pytorch(monkeypatch):
    """The compiled preimage step (one pass over the target voxels) gives the PyTorch step's inverse points."""
    from dccnn_deploy.ops import native
    from dccnn_deploy.ops.invert import invert_displacement

    if not native.available():
        pytest.skip("the compiled sampler is not built")
    fixed, moving, reg, _ = _case()
    forward = 0.6 * reg.forward
    r = Registration(reg.affine, reg.grid, forward, invert_displacement(forward, iterations=30), exact_inverse=True)
    got = r.inverse_points(moving)
    monkeypatch.setattr(native, "serves", lambda volume: False)
    want = r.inverse_points(moving)
    assert got.shape == want.shape and (got - want).abs().max() < 1e-3  # mm


@pytest.mark.parametrize("forward", [True, False])
def test_maps_match_float64_reference(forward):
    fixed, moving, reg, rng = _case()
    target, source = (fixed, moving) if forward else (moving, fixed)
    pts = reg.forward_points(target) if forward else reg.inverse_points(target)
    ref = _reference_points(reg, target, forward)
    assert pts.shape == (1, 3, *target.shape)
    assert np.abs(pts[0].permute(1, 2, 3, 0).numpy() - ref).max() < 1e-4  # mm

    disp = world_displacement(pts, target)
    assert disp.shape == (*target.shape, 3) and disp.dtype == np.float32 and disp.flags.f_contiguous
    assert np.abs(disp - (ref - grid_points(target))).max() < 1e-4
    lps = world_displacement(pts, target, lps=True)  # ITK's sign convention in the same pass
    assert lps.flags.f_contiguous and np.array_equal(lps, disp * np.array([-1, -1, 1], np.float32))

    # trilinear, zeros outside (per corner, as grid_sample): SciPy's grid-constant mode
    data = rng.random(source.shape).astype(np.float32)
    vox = np.moveaxis(ref @ np.linalg.inv(source.affine)[:3, :3].T + np.linalg.inv(source.affine)[:3, 3], -1, 0)
    expected = ndimage.map_coordinates(data.astype(np.float64), vox, order=1, mode="grid-constant", cval=0.0)
    for layout in (data, np.asfortranarray(data)):
        got = sample_at(layout, source.affine, pts)
        assert got.shape == target.shape and np.abs(got - expected).max() < 1e-4
    # C-ordered points (e.g. built by `dccnn apply`) give the same samples
    assert np.array_equal(sample_at(data, source.affine, pts.contiguous()), sample_at(data, source.affine, pts))

    labels = rng.integers(0, 6, source.shape).astype(np.int32)
    near = ndimage.map_coordinates(labels, np.rint(vox).astype(np.int64), order=0, mode="grid-constant", cval=0)
    inside = np.all([(np.abs(vox[k] - np.rint(vox[k])) < 0.49) for k in range(3)], axis=0)  # away from ties
    got = sample_at(labels, source.affine, pts, labels=True)
    assert got.dtype == np.int32 and np.array_equal(got[inside], near[inside])

    # det of the world Jacobian: central differences inside, one-sided at the edges (np.gradient)
    vox_t = ref @ np.linalg.inv(target.affine)[:3, :3].T + np.linalg.inv(target.affine)[:3, 3]
    grads = np.stack([np.stack(np.gradient(vox_t[..., r], axis=(0, 1, 2)), -1) for r in range(3)], -2)
    assert np.abs(map_jacobian(pts, target) - np.linalg.det(grads)).max() < 1e-3


def test_map_jacobian_compiled_matches_pytorch(monkeypatch):
    """The one-pass compiled determinant of the world points' differences gives the slab-wise
    PyTorch value (voxel-unit displacement, package Jacobian) on an oblique LIA grid."""
    from dccnn_deploy.ops import native

    if not native.available():
        pytest.skip("the compiled sampler is not built")
    fixed, _, reg, _ = _case(3)
    points = reg.forward_points(fixed)
    compiled = map_jacobian(points, fixed)
    monkeypatch.setattr(native, "serves_displacement", lambda field: False)
    reference = map_jacobian(points, fixed)
    assert compiled.flags.f_contiguous and compiled.shape == reference.shape == fixed.shape
    assert np.abs(compiled - reference).max() < 1e-4 and reference.std() > 0.01


def test_affine_only_map_is_exact():
    fixed, moving, reg, _ = _case(1)
    only = Registration(reg.affine, reg.grid)
    pts = only.forward_points(fixed)[0].permute(1, 2, 3, 0).numpy()
    expected = grid_points(fixed) @ reg.affine[:3, :3].T + reg.affine[:3, 3]
    assert np.abs(pts - expected).max() < 1e-4
    det = map_jacobian(only.forward_points(fixed), fixed)
    assert np.allclose(det, np.linalg.det(reg.affine[:3, :3]), atol=1e-4)


def test_inverse_consistency_matches_gather_composition():
    from dccnn_deploy.metrics import inverse_consistency

    _, _, reg, _ = _case(2)
    f, i = reg.forward, reg.inverse
    err = torch.cat([compose(f, i, warp).norm(dim=1).flatten(), compose(i, f, warp).norm(dim=1).flatten()]).double()
    got = inverse_consistency(f[0], i[0])
    assert got["mean"] == pytest.approx(float(err.mean()), abs=1e-5)
    assert got["p95"] == pytest.approx(float(torch.quantile(err, 0.95)), abs=1e-5)


# ------------------------------------------------------------------ files


def _content(path: Path) -> bytes:
    with gzip.open(path) as f:
        return f.read()


@pytest.mark.parametrize("fast", [True, False])
def test_gzip_files_hold_what_nibabel_writes(tmp_path, monkeypatch, fast):
    if not fast:  # without isal: the standard library's gzip
        monkeypatch.setattr(nifti_io, "_GzipFile", gzip.GzipFile)
    rng = np.random.default_rng(0)
    affine = lia_affine((20, 22, 18), 1.3, (1.0, 2.0, 3.0))
    image = np.asfortranarray(rng.random((20, 22, 18)).astype(np.float32))
    labels = rng.integers(0, 40, (20, 22, 18)).astype(np.int32)
    disp = rng.normal(size=(20, 22, 18, 3)).astype(np.float32)
    for name, data, dtype in (("img", image, np.float32), ("lab", labels, np.int16)):
        save_volume(tmp_path / f"{name}.nii.gz", data, affine)
        nib.save(nifti_image(data.astype(dtype), affine), tmp_path / f"{name}_ref.nii.gz")
        assert _content(tmp_path / f"{name}.nii.gz") == _content(tmp_path / f"{name}_ref.nii.gz")
    save_itk_displacement(tmp_path / "w.nii.gz", disp, affine)
    save_itk_displacement(tmp_path / "wf.nii.gz", np.asfortranarray(disp), affine)
    assert _content(tmp_path / "w.nii.gz") == _content(tmp_path / "wf.nii.gz")
    back, back_affine = load_itk_displacement(tmp_path / "wf.nii.gz")
    assert np.array_equal(back, disp) and np.allclose(back_affine, affine)
    assert not list(tmp_path.glob(".tmp-*"))


def test_background_writer_writes_and_reports_errors(tmp_path):
    rng = np.random.default_rng(0)
    vol, affine = rng.random((8, 9, 10)).astype(np.float32), np.eye(4)
    with BackgroundWriter() as writer:
        writer.submit(tmp_path / "a.nii.gz", vol, affine)
        writer.submit(tmp_path / "w.nii.gz", rng.normal(size=(8, 9, 10, 3)), affine, kind="displacement")
        writer.call((tmp_path / "note.txt").write_text, "done")
    assert np.array_equal(nib.load(tmp_path / "a.nii.gz").get_fdata(), vol)
    assert load_itk_displacement(tmp_path / "w.nii.gz")[0].shape == (8, 9, 10, 3)
    assert (tmp_path / "note.txt").read_text() == "done"

    writer = BackgroundWriter()
    writer.submit(tmp_path / "a.nii.gz", vol, affine)  # exists: refused
    with pytest.raises(Exception, match="exists"):
        writer.wait()
    with pytest.raises(ValueError, match="kind"):
        writer.submit(tmp_path / "b.nii.gz", vol, affine, kind="png")
    writer.close()
    with pytest.raises(RuntimeError, match="boom"), BackgroundWriter() as writer:
        raise RuntimeError("boom")


# ------------------------------------------------------------------ start-up


def _python_prints(code: str) -> list[str]:
    """The words a fresh Python process running ``code`` prints (it must succeed)."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_cli_help_and_version_do_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from dccnn_deploy.cli.app import app\n"
        "r = CliRunner()\n"
        "out = r.invoke(app, ['--version']).output + r.invoke(app, ['--help']).output\n"
        "heavy = [m for m in ('torch', 'nibabel', 'onnx', 'onnxruntime', 'PIL', 'scipy') if m in sys.modules]\n"
        "print(heavy, 'dccnn-deploy' in out, 'register' in out and 'benchmark' in out)\n"
    )
    assert _python_prints(code) == ["[]", "True", "True"]


def test_affine_stage_does_not_make_torch_import_sympy():
    """torch imports sympy (~0.3 s) the first time autograd is handed a tensor of output gradients;
    the affine stage's MI backward must not do that."""
    code = (
        "import sys, numpy as np\n"
        "from dccnn_deploy.preprocess.affine import register_affine\n"
        "rng = np.random.default_rng(0)\n"
        "x = np.zeros((40, 40, 40), np.float32); x[8:32, 10:30, 6:34] = 1.0\n"
        "x += 0.1 * rng.random(x.shape, dtype=np.float32)\n"
        "a = np.diag([2.0, 2.0, 2.0, 1.0]); b = a.copy(); b[:3, 3] = 3.0\n"
        "register_affine(x, a, x[::-1].copy(), b, levels=(8.0, 4.0), iterations=(20, 10))\n"
        "print('sympy' in sys.modules)\n"
    )
    assert _python_prints(code) == ["False"]


def test_registering_commands_pause_the_collector_until_torch_is_imported():
    code = (
        "import gc, sys\n"
        "from dccnn_deploy.cli.app import PAUSED_COLLECTION\n"
        "from dccnn_deploy.runtime.collector import pause_collection, resume_collection\n"
        "resume_collection()\n"
        "print(gc.isenabled(), gc.get_freeze_count() == 0)\n"  # not paused: untouched
        "pause_collection()\n"
        "print(gc.isenabled(), 'torch' in sys.modules)\n"
        "from dccnn_deploy.cli.register_cmd import options_from_cli\n"
        "options_from_cli(None, None, 'cpu', 0, False, False)\n"
        "print(gc.isenabled(), 'torch' in sys.modules, gc.get_freeze_count() > 100_000)\n"
        "print(sorted(PAUSED_COLLECTION))\n"
    )
    assert _python_prints(code) == ["True", "True", "False", "False", "True", "True", "True",
                                    "['batch',", "'demo',", "'register']"]


def test_cli_lists_every_command_with_its_docstring():
    import importlib

    from dccnn_deploy.cli.app import COMMANDS, load_command, short_help

    for name, (module, func) in COMMANDS.items():
        fn = getattr(importlib.import_module(f"dccnn_deploy.cli.{module}"), func)
        assert short_help(name) == fn.__doc__.strip().splitlines()[0]
        assert load_command(name).name == name


# ------------------------------------------------------------------ the GPU check script


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """CI runs the GPU script's CPU mode: every step, a tiny model, a CSV with every check."""
    import csv
    import os

    env = {**os.environ, "GPU_CHECK_TIMEOUT": "1800"}  # the 8-minute limit is for the GPU run
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path), "--dry-run"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "gpu_check.csv")))
    checks = {r["check"] for r in rows}
    assert {"env", "parity", "latency", "register", "batch"} <= checks
    parity = [r for r in rows if r["check"] == "parity" and r["setting"].startswith("torch")]
    assert float(parity[0]["value"]) == 0.0  # CPU against CPU
    latency = [r for r in rows if r["check"] == "latency" and "fp32" in r["setting"]]
    assert len(latency) == 4 and all(float(r["value"]) > 0 for r in latency)  # 2 grids x (both paths, forward path)
    assert sum("forward path" in r["setting"] for r in latency) == 2
    register = [r for r in rows if r["check"] == "register"][0]
    assert float(register["value"]) > 0, register


def test_gpu_check_prepare_writes_the_pair_on_the_whole_model_grid(study, tmp_path):
    """``gpu_check.py --prepare`` (run here before carrying arrays to a GPU machine): the pair as
    ``dccnn register`` prepares it, on the model's whole grid (an engine's static shape)."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    gpu_check.prepare(tmp_path / "data", study["moving"], study["fixed"], study["model"])
    for name in ("moving_g.npy", "fixed_g.npy"):
        array = np.load(tmp_path / "data" / name)
        assert array.shape == (32, 32, 32) and np.isfinite(array).all() and array.max() > 0.5
    assert (tmp_path / "data" / "moving.nii.gz").is_file() and (tmp_path / "data" / "fixed.nii.gz").is_file()


@pytest.mark.parametrize("padding", [0, 1, (2, 1, 1)])
def test_stride_one_transposed_convolution_becomes_an_equal_convolution(padding):
    torch.manual_seed(0)
    tconv = torch.nn.ConvTranspose3d(5, 3, (3, 2, 3), padding=padding).eval()
    conv = _transposed_as_conv(tconv)
    x = torch.rand(2, 5, 9, 8, 7)
    assert isinstance(conv, torch.nn.Conv3d)
    with torch.no_grad():
        assert torch.allclose(conv(x), tconv(x), atol=1e-5)
    for other in (torch.nn.ConvTranspose3d(5, 3, 2, stride=2), torch.nn.ConvTranspose3d(5, 3, 2, padding=2)):
        assert _transposed_as_conv(other) is other  # no equal plain convolution: left alone


def test_cpu_tuned_torch_backend_matches_the_plain_model():
    """The tuned copy (channels-last, transposed convs as convs) gives the plain model's fields
    and leaves the caller's model as it was."""
    model = lively_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    moving, fixed = (rng.random((20, 24, 16), dtype=np.float32) for _ in range(2))
    plain = TorchBackend(model, cpu_tuned=False, precision="fp32").run(moving, fixed)
    backend = TorchBackend(model, precision="fp32")
    tuned = backend.run(moving, fixed)
    assert max(float(np.abs(a).max()) for a in plain) > 0.3
    assert max(float(np.abs(a - b).max()) for a, b in zip(tuned, plain)) < 1e-4
    assert not any(isinstance(m, torch.nn.ConvTranspose3d) for m in backend.model.modules())
    assert backend.model.unet.stem[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert any(isinstance(m, torch.nn.ConvTranspose3d) for m in model.modules())
    assert cpu_inference_model(model) is not model


def test_bf16_precision_stays_close_to_float32(monkeypatch):
    """bfloat16 autocast of the convolutions: the same fields within a tenth of a voxel here;
    ``auto`` takes it only on CPUs with native bfloat16; bad names are refused."""
    model = lively_model(0)
    rng = np.random.default_rng(0)
    moving, fixed = (rng.random((20, 24, 16), dtype=np.float32) for _ in range(2))
    exact = TorchBackend(model, precision="fp32")
    half = TorchBackend(model, precision="bf16")
    assert (exact.name, half.name) == ("torch-cpu", "torch-cpu-bf16")
    ref, approx = exact.run(moving, fixed), half.run(moving, fixed)
    assert max(float(np.abs(a).max()) for a in ref) > 0.3
    diff = max(float(np.abs(a - b).max()) for a, b in zip(approx, ref))
    assert 0 < diff < 0.1  # real model, real pair: 0.019 voxel at most (docs/benchmarks.md)
    monkeypatch.setattr(backends_module, "cpu_has_native_bf16", lambda: False)
    assert not uses_bf16("auto", "cpu") and uses_bf16("bf16", "cpu") and not uses_bf16("fp32", "cpu")
    monkeypatch.setattr(backends_module, "cpu_has_native_bf16", lambda: True)
    assert uses_bf16("auto", "cpu") and not uses_bf16("auto", "cuda")
    with pytest.raises(ValueError, match="precision"):
        uses_bf16("fp16", "cpu")


def test_batch_opens_the_model_once_reads_ahead_and_matches_single_registrations(study, tmp_path, monkeypatch):
    """``dccnn batch``: one model opening for the study, the inputs read ahead of their turn,
    and per pair the same warp as ``dccnn register`` of that pair alone."""
    from typer.testing import CliRunner

    from dccnn_deploy.cli import batch_cmd
    from dccnn_deploy.cli.app import app
    from dccnn_deploy.registration import pipeline

    for sub in ("a", "b", "c"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "T1.nii.gz").write_bytes(study["moving"].read_bytes())
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("".join(f"{sub}/T1.nii.gz,{study['fixed']}\n" for sub in ("a", "b", "c")))
    opened, ahead = [], []
    real_open, real_read = pipeline.open_network, batch_cmd.read_ahead
    monkeypatch.setattr(pipeline, "open_network", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    monkeypatch.setattr(batch_cmd, "read_ahead", lambda *a, **k: ahead.append(real_read(*a, **k)) or ahead[-1])
    fast = ["--model", str(study["model"]), "--no-affine"]
    runner = CliRunner()
    res = runner.invoke(app, ["batch", "--pairs", str(pairs), "-o", str(tmp_path / "out"), *fast])
    assert res.exit_code == 0, res.output
    assert len(opened) == 1
    assert len(ahead) == 3 and all(set(r) == {"moving", "fixed"} for r in ahead)
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["ok"] * 3
    single = tmp_path / "single"
    res = runner.invoke(app, ["register", str(tmp_path / "b" / "T1.nii.gz"), str(study["fixed"]), "-o", str(single), *fast])
    assert res.exit_code == 0, res.output
    row = next(r for r in rows if Path(r["moving"]).parent.name == "b")
    report = json.loads((tmp_path / "out" / row["dir"] / "report.json").read_text())
    assert report["inputs"]["moving"]["path"] == str((tmp_path / "b" / "T1.nii.gz").resolve())
    for name in ("fwd_warp.nii.gz", "inv_warp.nii.gz", "moved.nii.gz"):
        a = np.asarray(nib.load(str(tmp_path / "out" / row["dir"] / name)).dataobj)
        b = np.asarray(nib.load(str(single / name)).dataobj)
        assert np.array_equal(a, b), name
    res = runner.invoke(app, ["batch", "--pairs", str(pairs), "-o", str(tmp_path / "out"), *fast])  # resume
    assert res.exit_code == 0 and [r["status"] for r in csv.DictReader((tmp_path / "out" / "summary.csv").open())] == ["ok"] * 3
    assert ahead[3:] == [None] * 3  # finished pairs are not read ahead


@pytest.mark.parametrize("order", ["F", "C"])
def test_composite_field_chunks_hold_what_h5py_gzip_writes(tmp_path, monkeypatch, order):
    """Fields in ``.h5`` composites: chunks compressed by ISA-L (several, the last partial) read
    back through HDF5's own shuffle + gzip filters as the ITK parameter order of the field."""
    h5py = pytest.importorskip("h5py")
    from dccnn_deploy.io import itk_transforms
    from dccnn_deploy.io.itk_transforms import load_itk_composite, save_itk_composite

    monkeypatch.setattr(itk_transforms, "FIELD_CHUNK", 1000)
    rng = np.random.default_rng(1)
    disp = np.asarray(rng.normal(0, 3.0, (13, 11, 9, 3)).astype(np.float32), order=order)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    save_itk_composite(tmp_path / "t.h5", [np.eye(4), (disp, affine)])
    with h5py.File(tmp_path / "t.h5") as f:
        data = f["TransformGroup/2/TransformParameters"]
        assert (data.compression, data.shuffle, data.chunks, data.dtype) == ("gzip", True, (1000,), np.float32)
        expected = (disp * np.array([-1.0, -1.0, 1.0], np.float32)).transpose(2, 1, 0, 3).ravel()  # LPS, x fastest
        assert np.array_equal(data[()], expected)
    _, (field, field_affine) = load_itk_composite(tmp_path / "t.h5")
    assert np.array_equal(field, disp) and np.allclose(field_affine, affine)



_MAPPED_MIB = """
import ctypes, sys
import torch
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    from dccnn_deploy.runtime.allocator import tune_allocator
    assert tune_allocator()
block = torch.ones(16 << 20)  # 64 MiB: glibc maps it on its own by default
print(libc.mallinfo2().hblkhd >> 20)  # MiB held in mmap-ed blocks
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tuned_allocator_serves_large_blocks_from_the_heap():
    """By default glibc maps a 64 MiB block on its own (fresh pages on every allocation, returned
    to the kernel on free); tuned, it comes from the heap, where freed blocks are reused."""
    def mapped_mib(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _MAPPED_MIB, mode], capture_output=True, text=True)
        if "mallinfo2" in out.stderr:
            pytest.skip("glibc < 2.33: no mallinfo2")
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    assert mapped_mib("default") >= 64
    assert mapped_mib("tuned") < 16


_PREFAULT = """
import resource, sys
import torch
from dccnn_deploy.runtime.allocator import prefault_heap, tune_allocator
if sys.argv[1] == "prefaulted":
    assert tune_allocator()
    assert prefault_heap(96 << 20) == 96 << 20
elif sys.argv[1] == "untuned":
    assert prefault_heap(96 << 20) == 0  # without the heap settings a freed block may leave the heap
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = torch.ones(16 << 20)  # 64 MiB, written: 16 384 pages
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_prefaulted_heap_serves_a_large_block_without_page_faults():
    """A block touched and freed by :func:`prefault_heap` stays in the heap: a 64 MiB tensor
    allocated after it reuses those pages instead of faulting in 16 384 new ones."""
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _PREFAULT, mode], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    assert faults("untuned") > 15_000
    assert faults("prefaulted") < 2_000


_SPIN_SETTING = """
import os, sys
import dccnn_deploy.cli.app as cli
cli.app = lambda: print(os.environ.get("GOMP_SPINCOUNT"), "torch" in sys.modules, flush=True)
sys.argv = ["dccnn", sys.argv[1]]
cli.main()
"""


@pytest.mark.parametrize("command, preset, expected", [
    ("register", None, "10000 False"),  # set before torch (and its OpenMP runtime) is loaded
    ("register", "123", "123 False"),  # the user's own setting is kept
    ("train", None, "None False"),  # training keeps OpenMP's default
])
def test_registering_commands_shorten_openmp_spinning(command, preset, expected):
    """``dccnn register`` (and the other registering commands) shorten the idle OpenMP workers'
    spinning before torch loads, unless the user chose a setting; in-process, once torch is
    imported, :func:`tune_openmp` changes nothing."""
    from dccnn_deploy.runtime.openmp import tune_openmp

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    if preset is not None:
        env["GOMP_SPINCOUNT"] = preset
    out = subprocess.run([sys.executable, "-c", _SPIN_SETTING, command], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == expected
    assert tune_openmp() is False  # torch is imported here


def test_unfold_map_smooths_a_folded_written_map_locally():
    """A 1 mm map that folds in one small place (as trilinear interpolation between model-grid
    nodes can) is smoothed there until no voxel has det J <= 0; every voxel outside the repaired
    box keeps its exact position; a map without folds comes back untouched."""
    from dccnn_deploy.transform import unfold_map

    target = Grid((40, 44, 36), lia_affine((40, 44, 36), 1.0, (3.0, -5.0, 8.0)))
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in target.shape], indexing="ij"))
    centre = np.array([14.0, 30.0, 20.0]).reshape(3, 1, 1, 1)
    bump = np.exp(-((index - centre) ** 2).sum(axis=0) / (2 * 2.0**2))
    displaced = index.copy()
    displaced[0] -= 1.6 * (index[0] - centre[0]) * bump  # d(x0)/dx0 = 1 - 1.6 at the centre: folded
    world = np.einsum("ij,j...->i...", target.affine[:3, :3], displaced) + target.affine[:3, 3].reshape(3, 1, 1, 1)
    points = torch.from_numpy(world.astype(np.float32))[None]
    before = points.clone()
    assert (map_jacobian(points, target) <= 0).sum() > 0

    repaired, folded, left = unfold_map(points, target)
    assert folded > 0 and left == 0
    assert (map_jacobian(repaired, target) > 0).all()
    changed = (repaired != before).any(dim=1)[0].nonzero()
    assert len(changed) and (changed.float() - torch.tensor([14.0, 30.0, 20.0])).abs().max() < 20  # only near the fold
    assert torch.equal(repaired[0, :, :, :5], before[0, :, :, :5])  # far away: exactly as it was

    calm = torch.from_numpy(np.einsum("ij,j...->i...", target.affine[:3, :3], index).astype(np.float32)
                            + target.affine[:3, 3].reshape(3, 1, 1, 1).astype(np.float32))[None]
    same, folded, left = unfold_map(calm.clone(), target)
    assert folded == left == 0 and torch.equal(same, calm)
