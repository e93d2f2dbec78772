"""Training DCCNN-LSTM-Reg: config (TOML), data (real images, SynthMorph-style synthesis),
the loop (checkpoints, CSV log, exact resume) and DDP under torchrun."""

from dccnn_deploy.train.config import AugmentConfig, DataConfig, SynthConfig, TrainConfig
from dccnn_deploy.train.loop import TrainResult, train

__all__ = ["TrainConfig", "DataConfig", "AugmentConfig", "SynthConfig", "TrainResult", "train"]
