"""dccnn-deploy: DCCNN-LSTM-Reg symmetric diffeomorphic registration, from training to deployment.

>>> import dccnn_deploy as dd
>>> result = dd.register("moving.nii.gz", "fixed.nii.gz")   # doctest: +SKIP

Importing the package is light: torch and the rest load when a name below is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first use)
_LAZY = {
    "register": "dccnn_deploy.api",
    "open_model": "dccnn_deploy.api",
    "RegistrationResult": "dccnn_deploy.registration.result",
    "sample_pair": "dccnn_deploy.sample",
    "default_model_path": "dccnn_deploy.models",
    "InputError": "dccnn_deploy.io.errors",
    "OutputExistsError": "dccnn_deploy.io.errors",
    "ModelConfig": "dccnn_deploy.config",
    "LossWeights": "dccnn_deploy.config",
    "DCCNNLSTMReg": "dccnn_deploy.model",
    "RegistrationOutput": "dccnn_deploy.model",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from dccnn_deploy.api import open_model, register
    from dccnn_deploy.config import LossWeights, ModelConfig
    from dccnn_deploy.io.errors import InputError, OutputExistsError
    from dccnn_deploy.model import DCCNNLSTMReg, RegistrationOutput
    from dccnn_deploy.models import default_model_path
    from dccnn_deploy.registration.result import RegistrationResult
    from dccnn_deploy.sample import sample_pair


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dccnn_deploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
