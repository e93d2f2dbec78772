"""DCCNN-LSTM-Reg: dual shared-weight U-Net pyramid + symmetric CNN-LSTM cascade (SR-module)."""

from dccnn_deploy.model.unet import FeaturePyramidUNet
from dccnn_deploy.model.cnn_lstm import CNNLSTMBlock
from dccnn_deploy.model.homotopy import homotopy
from dccnn_deploy.model.dccnn import DCCNNLSTMReg, RegistrationOutput, ScaleTrace

__all__ = [
    "FeaturePyramidUNet",
    "CNNLSTMBlock",
    "homotopy",
    "DCCNNLSTMReg",
    "RegistrationOutput",
    "ScaleTrace",
]
