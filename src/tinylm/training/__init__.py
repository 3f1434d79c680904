"""Training: the loop, optimizers, the learning-rate schedule, checkpoints and metrics."""

from tinylm.training.trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
