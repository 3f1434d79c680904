"""Optimizers. AdamW with decoupled weight decay on the weight matrices of linear layers
only: embeddings, norms and biases are not decayed."""

from __future__ import annotations

import torch

from tinylm.config import TrainConfig
from tinylm.errors import ConfigError


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))  # a tied weight belongs to the module that owns it first (the embedding)
            is_matrix = isinstance(module, torch.nn.Linear) and name == "weight"
            (decay if is_matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                 betas=(cfg.beta1, cfg.beta2))
    raise ConfigError(f"train.optimizer {cfg.optimizer!r} does not exist")
