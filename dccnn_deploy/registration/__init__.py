"""The registration pipeline: image pair -> affine + symmetric deformable maps -> outputs."""

from dccnn_deploy.registration.pipeline import RegisterOptions, register_files, run
from dccnn_deploy.registration.result import RegistrationResult

__all__ = ["RegisterOptions", "RegistrationResult", "register_files", "run"]
