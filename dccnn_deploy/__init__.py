"""dccnn-deploy: DCCNN-LSTM-Reg symmetric diffeomorphic registration, from training to deployment."""

__version__ = "0.1.0"

from dccnn_deploy.config import ModelConfig, LossWeights  # noqa: E402
from dccnn_deploy.model import DCCNNLSTMReg, RegistrationOutput  # noqa: E402

__all__ = ["__version__", "ModelConfig", "LossWeights", "DCCNNLSTMReg", "RegistrationOutput"]
