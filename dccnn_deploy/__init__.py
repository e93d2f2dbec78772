"""dccnn-deploy: DCCNN-LSTM-Reg symmetric diffeomorphic registration, from training to deployment."""

__version__ = "0.1.0"

# The model classes are imported on first use (PEP 562), so ``import dccnn_deploy`` and the
# CLI's start-up (``dccnn --help``) do not pull in torch.
_LAZY = {
    "ModelConfig": "dccnn_deploy.config",
    "LossWeights": "dccnn_deploy.config",
    "DCCNNLSTMReg": "dccnn_deploy.model",
    "RegistrationOutput": "dccnn_deploy.model",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dccnn_deploy' has no attribute {name!r}")


__all__ = ["__version__", "ModelConfig", "LossWeights", "DCCNNLSTMReg", "RegistrationOutput"]
