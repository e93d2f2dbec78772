"""The registration pipeline: NIfTI pair -> affine + symmetric deformable maps -> outputs."""

from dccnn_deploy.registration.pipeline import RegisterOptions, register_files

__all__ = ["RegisterOptions", "register_files"]
