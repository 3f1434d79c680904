"""Training: `train(cfg)` (launch.py) composes the model, the data and the weights format and runs the loop
(trainer.py); optimizers, the learning-rate schedule, batch plans, checkpoints, resume rules and metrics."""

from tinylm.training.launch import train
from tinylm.training.trainer import TrainResult

__all__ = ["TrainResult", "train"]
