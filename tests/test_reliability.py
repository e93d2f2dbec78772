"""Reliability (issue 13): checked batch resume, concurrent shards, no tracebacks, no partial or
stale outputs, geometry sanity, readable names, output lock. Signals and concurrency run real
``python -m dccnn_deploy.cli.app`` processes; the rest uses the CLI in-process. Registrations
use the tiny test model without the affine stage (a few seconds each)."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import save_nifti
from dccnn_deploy.cli.app import app
from dccnn_deploy.io.staging import OutputLock, clean_stale, probe_output_dir
from dccnn_deploy.io import InputError
from dccnn_deploy.registration.batch import pair_id, readable
from dccnn_deploy.registration.provenance import differences, input_record, options_record
from dccnn_deploy.registration.pipeline import RegisterOptions
from dccnn_deploy.registration.sanity import affine_sanity, fov_overlap

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def cli_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", COLUMNS="200")
    return env


def dccnn(*args: str) -> subprocess.Popen:
    """A real ``dccnn`` process (this checkout's package)."""
    return subprocess.Popen([sys.executable, "-m", "dccnn_deploy.cli.app", *map(str, args)], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float = 60.0, step: float = 0.005) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


def fast(study) -> list[str]:
    """Options of a quick registration: the tiny model, no affine stage."""
    return ["--model", str(study["model"]), "--no-affine"]


PROGRESS_LINE = re.compile(r"^\[\s*[\d.]+s\] ")  # plain progress lines (stdout is not a terminal)


def one_line_error(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip() and not PROGRESS_LINE.match(line)]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


@pytest.fixture(scope="module", autouse=True)
def _no_default_model():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("dccnn_deploy.models.default_model_path", lambda: None)
        yield


# ------------------------------------------------------------------ 1. batch resume

def test_batch_resume_follows_inputs_not_row_order(study, tmp_path):
    for sub in ("subA", "subB", "subC"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "T1.nii.gz").write_bytes(study["moving"].read_bytes())
    (tmp_path / "fixed.nii.gz").write_bytes(study["fixed"].read_bytes())
    first = tmp_path / "first.csv"
    first.write_text("subA/T1.nii.gz,fixed.nii.gz\nsubB/T1.nii.gz,fixed.nii.gz\n")
    out = tmp_path / "out"
    args = ["batch", "-o", str(out), *fast(study)]
    assert runner.invoke(app, args + ["--pairs", str(first)]).exit_code == 0
    # the study grows: a new first row, the old rows reordered, one row repeated
    second = tmp_path / "second.csv"
    second.write_text("moving,fixed\nsubC/T1.nii.gz,fixed.nii.gz\nsubB/T1.nii.gz,fixed.nii.gz\n"
                      "subA/T1.nii.gz,fixed.nii.gz\nsubB/T1.nii.gz,fixed.nii.gz\n")
    res = runner.invoke(app, args + ["--pairs", str(second)])
    assert res.exit_code == 0, res.output
    assert "line 5 repeats line 3" in res.output
    rows = {Path(r["moving"]).parent.name: r for r in csv.DictReader((out / "summary.csv").open())}
    assert sorted(rows) == ["subA", "subB", "subC"]  # each registered once, none lost
    for sub, row in rows.items():  # every folder holds its own row's result
        report = json.loads((out / row["dir"] / "report.json").read_text())
        assert report["inputs"]["moving"]["path"] == str((tmp_path / sub / "T1.nii.gz").resolve())
        assert row["fixed"] == str((tmp_path / "fixed.nii.gz").resolve())
    assert len([p for p in out.iterdir() if p.is_dir()]) == 3
    page = (out / "report.html").read_text()
    assert all(str(tmp_path / sub / "T1.nii.gz") in page for sub in rows)  # inputs traceable
    # an input changed on disk: that pair is redone, the others reused
    before = (out / rows["subA"]["dir"] / "report.json").stat().st_mtime_ns
    img = nib.load(str(tmp_path / "subB" / "T1.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine), str(tmp_path / "subB" / "T1.nii.gz"))
    res = runner.invoke(app, args + ["--pairs", str(second)])
    assert res.exit_code == 0, res.output
    assert "redone (moving changed on disk" in res.output
    assert (out / rows["subA"]["dir"] / "report.json").stat().st_mtime_ns == before
    redone = json.loads((out / rows["subB"]["dir"] / "report.json").read_text())
    assert redone["inputs"]["moving"]["size"] == (tmp_path / "subB" / "T1.nii.gz").stat().st_size


def test_option_and_input_differences_are_detected(study):
    opts = RegisterOptions(model=str(study["model"]))
    inputs = input_record(study["moving"], study["fixed"])
    report = json.loads(json.dumps({"inputs": inputs, "options": options_record(opts)}))
    assert differences(report, inputs, options_record(opts)) == []
    changed = differences(report, inputs, options_record(RegisterOptions(model=str(study["model"]), refine=20)))
    assert changed == ["option refine auto -> 20"]
    other = differences(report, input_record(study["fixed"], study["fixed"]), options_record(opts))
    assert other == ["moving is another file"]
    assert differences({}, inputs, options_record(opts))  # an older report without a record: redo


# ------------------------------------------------------------------ 2. shards at once

def test_concurrent_shards_keep_every_row(study, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"{study['moving']},{study['fixed']}\n{study['fixed']},{study['moving']}\n")
    out = tmp_path / "out"
    procs = [dccnn("batch", "--pairs", pairs, "-o", out, *fast(study), "--shard", f"{i}/2") for i in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert sorted(Path(r["moving"]).name for r in rows) == ["fixed.nii.gz", "moving.nii.gz"]
    assert {r["status"] for r in rows} == {"ok"}
    for i in (1, 2):
        shard_rows = list(csv.DictReader((out / f"summary-shard-{i}-of-2.csv").open()))
        assert len(shard_rows) == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # `dccnn report` rebuilds the same summary from the pair folders
    (out / "summary.csv").unlink()
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    assert len(list(csv.DictReader((out / "summary.csv").open()))) == 2


# ------------------------------------------------------------------ 3. no tracebacks, before compute

def test_output_path_that_is_a_file(study, tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    res = runner.invoke(app, ["register", str(study["moving"]), str(study["fixed"]), "-o", str(target), *fast(study)])
    assert res.exit_code == 2 and "existing file" in one_line_error(res.output)
    assert target.read_text() == "not a folder"
    with pytest.raises(InputError, match="cannot create"):
        probe_output_dir(target / "sub")


def test_unwritable_output_folder(study, tmp_path):
    if os.geteuid() != 0:
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(0o500)
    elif Path("/proc/self").is_dir():
        locked = Path("/proc/self")  # no new files there, even for root
    else:
        pytest.skip("root without /proc: no unwritable folder to test with")
    try:
        res = runner.invoke(app, ["register", str(study["moving"]), str(study["fixed"]), "-o", str(locked), *fast(study)])
    finally:
        if locked != Path("/proc/self"):
            locked.chmod(0o700)
    assert res.exit_code == 2 and "not writable" in one_line_error(res.output)


def test_onnx_with_wrong_io_names(study, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 32, 32, 32]) for n in ("x", "y")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 32, 32, 32]) for n in ("a", "b")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Identity", ["y"], ["b"])],
                              "wrong", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"grid_shape": "32,32,32", "spacing": "4.5"})
    path = tmp_path / "wrong.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "out"
    res = runner.invoke(app, ["register", str(study["moving"]), str(study["fixed"]), "-o", str(out),
                              "--model", str(path), "--backend", "onnxruntime", "--no-affine"])
    assert res.exit_code == 2, res.output
    line = one_line_error(res.output)
    assert "wrong.onnx" in line and "moving" in line
    assert not out.exists()


# ------------------------------------------------------------------ 4. signals, stale staging

def _start_and_wait_for_staging(study, out: Path) -> subprocess.Popen:
    proc = dccnn("register", study["moving"], study["fixed"], "-o", out, *fast(study))
    staged = wait_for(lambda: out.is_dir() and any(p.name.startswith(".staging-") for p in out.iterdir()))
    if not staged:
        proc.kill()
        pytest.fail(f"no staging folder appeared: {proc.communicate()}")
    return proc


def test_sigterm_while_writing_leaves_nothing(study, tmp_path):
    out = tmp_path / "out"
    proc = _start_and_wait_for_staging(study, out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "SIGTERM" in one_line_error(err)
    assert not out.exists()  # the folder this run created, with its staging and lock, is gone


def test_stale_staging_of_killed_run_cleaned_never_a_live_one(study, tmp_path):
    out = tmp_path / "out"
    proc = _start_and_wait_for_staging(study, out)
    proc.kill()
    proc.communicate(timeout=60)
    stale = [p for p in out.iterdir() if p.name.startswith(".staging-")]
    assert stale
    live = out / ".staging-1-abcd1234"  # pid 1 is always alive
    live.mkdir()
    res = runner.invoke(app, ["register", str(study["moving"]), str(study["fixed"]), "-o", str(out), *fast(study)])
    assert res.exit_code == 0, res.output
    assert not any(p.exists() for p in stale)
    assert live.is_dir()
    assert not (out / ".dccnn.lock").exists()
    live.rmdir()
    assert clean_stale(out) == []


# ------------------------------------------------------------------ 5. overwrite replaces the set

def test_overwrite_replaces_the_whole_output_set(study, tmp_path):
    out = tmp_path / "out"
    labels = ["--moving-labels", str(study["moving_labels"]), "--fixed-labels", str(study["fixed_labels"])]
    base = ["register", str(study["moving"]), str(study["fixed"]), "-o", str(out), *fast(study)]
    assert runner.invoke(app, base + labels).exit_code == 0
    assert (out / "moved_labels.nii.gz").is_file()
    (out / "notes.txt").write_text("mine")  # not ours: kept
    res = runner.invoke(app, base + ["--overwrite"])
    assert res.exit_code == 0, res.output
    assert not (out / "moved_labels.nii.gz").exists()
    assert "labels" not in json.loads((out / "report.json").read_text())
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ 6. geometry

def test_pixdim_zero_is_refused(study, tmp_path):
    img = nib.load(str(study["moving"]))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), str(tmp_path / "p.nii"))
    raw = bytearray((tmp_path / "p.nii").read_bytes())
    raw[80:92] = np.zeros(3, "<f4").tobytes()  # pixdim[1..3]
    (tmp_path / "p.nii").write_bytes(bytes(raw))
    out = tmp_path / "out"
    res = runner.invoke(app, ["register", str(tmp_path / "p.nii"), str(study["fixed"]), "-o", str(out), *fast(study)])
    assert res.exit_code == 2, res.output
    line = one_line_error(res.output)
    assert "p.nii" in line and "pixdim" in line
    assert not out.exists()


def test_affine_sanity_checks():
    assert affine_sanity(np.eye(4)) == []
    squash = np.diag([0.54, 1.0, 1.0, 1.0])
    assert any("scale" in w for w in affine_sanity(squash))
    shear = np.eye(4)
    shear[0, 1] = 0.5
    assert any("shear" in w for w in affine_sanity(shear))
    assert any("volume change" in w for w in affine_sanity(np.diag([1.4, 1.4, 1.4, 1.0])))
    assert any("determinant" in w for w in affine_sanity(np.diag([-1.0, 1.0, 1.0, 1.0])))
    box = ((40, 40, 40), np.diag([2.0, 2.0, 2.0, 1.0]))
    half = ((20, 40, 40), np.diag([2.0, 2.0, 2.0, 1.0]))
    assert fov_overlap(np.eye(4), box, box) == (1.0, 1.0)
    covered, inside = fov_overlap(np.eye(4), half, box)
    assert covered == pytest.approx(0.5, abs=0.05) and inside == 1.0
    assert any("covers only" in w for w in affine_sanity(np.eye(4), half, box))
    away = np.eye(4)
    away[:3, 3] = 70.0
    assert any("inside the fixed" in w for w in affine_sanity(away, box, box))


def test_half_field_of_view_is_flagged_and_strict_exits_3(study, tmp_path):
    img = nib.load(str(study["moving"]))
    data = np.asarray(img.dataobj)
    half = save_nifti(tmp_path / "half.nii.gz", data[:, :, : data.shape[2] // 2].copy(), img.affine)
    out = tmp_path / "out"
    res = runner.invoke(app, ["register", str(half), str(study["fixed"]), "-o", str(out), *fast(study), "--strict"])
    assert res.exit_code == 3, res.output
    assert "warning:" in res.output and "field of view" in res.output
    warnings = json.loads((out / "report.json").read_text())["warnings"]
    assert any("field of view" in w for w in warnings)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"{half},{study['fixed']}\n")
    res = runner.invoke(app, ["batch", "--pairs", str(pairs), "-o", str(tmp_path / "study"), *fast(study), "--strict"])
    assert res.exit_code == 3, res.output
    row = next(csv.DictReader((tmp_path / "study" / "summary.csv").open()))
    assert "field of view" in row["warnings"]
    assert '<span class="b">geometry</span>' in (tmp_path / "study" / "report.html").read_text()


# ------------------------------------------------------------------ 7. names

def test_names_readable_and_unique():
    assert readable("ünï cødé") == "uni_code"
    assert readable("../..") == "pair"
    a = pair_id("T1_to_mni", (Path("/data/subA/T1.nii.gz"), Path("/mni.nii.gz")))
    b = pair_id("T1_to_mni", (Path("/data/subB/T1.nii.gz"), Path("/mni.nii.gz")))
    assert a != b and a.startswith("T1_to_mni-") and b.startswith("T1_to_mni-")
    assert a == pair_id("T1_to_mni", (Path("/data/subA/T1.nii.gz"), Path("/mni.nii.gz")))  # stable


# ------------------------------------------------------------------ 8. one run per output folder

def test_second_run_on_the_same_output_fails_at_once(study, tmp_path):
    out = tmp_path / "out"
    first = dccnn("register", study["moving"], study["fixed"], "-o", out, *fast(study))
    assert wait_for(lambda: (out / ".dccnn.lock").exists(), step=0.01)
    first.send_signal(signal.SIGSTOP)  # frozen while it holds the folder: no race with its finish
    try:
        second = dccnn("register", study["moving"], study["fixed"], "-o", out, *fast(study))
        _, err = second.communicate(timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    first_err = first.communicate(timeout=120)[1]
    assert second.returncode == 2, err
    line = one_line_error(err)
    assert "in use by another dccnn run" in line and f"pid {first.pid}" in line
    assert first.returncode == 0, first_err
    assert (out / "report.json").is_file() and not (out / ".dccnn.lock").exists()
    # the process left at once (cli.app.FAST_EXIT) with everything written and whole
    from dccnn_deploy.registration.outputs import DEFAULT_FILES

    assert sorted(p.name for p in out.iterdir()) == sorted(DEFAULT_FILES)
    assert json.loads((out / "report.json").read_text())["seconds"]["outputs"] > 0
    assert nib.load(str(out / "inv_warp.nii.gz")).get_fdata().shape[-1] == 3


def test_lock_is_exclusive_and_released(tmp_path):
    with OutputLock(tmp_path / "o"):
        assert (tmp_path / "o" / ".dccnn.lock").read_text().split()[0] == str(os.getpid())
        with OutputLock(tmp_path / "o"):  # re-entrant in one process
            pass
        assert (tmp_path / "o" / ".dccnn.lock").exists()
        fd = os.open(tmp_path / "o" / ".dccnn.lock", os.O_RDWR)  # another open file: the kernel lock conflicts
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert not (tmp_path / "o" / ".dccnn.lock").exists()
    with OutputLock(tmp_path / "o"):  # free again
        pass
