"""Build hook: ship the models of ``models/`` (kept once in git) inside the wheel's package data.

``models/*.pt`` and their cards (``models/<name>.md``) are copied to
``dccnn_deploy/data/models/`` of the build, where :mod:`dccnn_deploy.models` finds them after
``pip install``. The copy is by path: whatever file is in ``models/`` at build time ships.
The compiled trilinear sampler (``dccnn_deploy/_native/trilinear.c``, used through ctypes by
:mod:`dccnn_deploy.ops.native`) is an optional extension: where it cannot be built the package
installs without it and samples with PyTorch. Everything else is configured in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

MODELS = Path(__file__).resolve().parent / "models"


class BuildWithModels(build_py):
    """``build_py`` plus the shipped models as package data."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install finds models/ in the source tree
            return
        target = Path(self.build_lib) / "dccnn_deploy" / "data" / "models"
        target.mkdir(parents=True, exist_ok=True)
        for model in sorted(MODELS.glob("*.pt")):
            for path in (model, model.with_suffix(".md")):
                if path.is_file():
                    shutil.copy2(path, target / path.name)


TRILINEAR = Extension(
    "dccnn_deploy._native._trilinear",
    sources=["dccnn_deploy/_native/trilinear.c"],
    extra_compile_args=["-O3", "-fno-math-errno"],
    optional=True,  # no compiler: the package still installs (PyTorch sampling)
)

setup(cmdclass={"build_py": BuildWithModels}, ext_modules=[TRILINEAR])
