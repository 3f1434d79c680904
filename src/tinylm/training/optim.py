"""Optimizers, chosen by `train.optimizer`:

    adamw  AdamW, decoupled weight decay on the weight matrices of linear layers only
    adam   Adam, weight decay (if any) as an L2 term on the same matrices
    muon   Muon (training/muon.py) on the transformer blocks' weight matrices, AdamW on the
           rest (embeddings, output head, norms, biases), which Muon is not designed for

Embeddings, norms and biases are not decayed unless `train.decay_all`. Every parameter group
records its `base_lr`; the trainer sets `lr = base_lr * schedule factor` before each step. The
result is a list of optimizers (one, or two for muon) stepped together.
"""

from __future__ import annotations

import torch

from tinylm.config import TrainConfig
from tinylm.errors import ConfigError
from tinylm.training.muon import Muon


def _named_matrices(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str, torch.nn.Parameter]]:
    """(module name, module, parameter name, parameter) once per parameter; a tied weight belongs to
    the module that owns it first (the embedding)."""
    seen, out = set(), []
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) not in seen and p.requires_grad:
                seen.add(id(p))
                out.append((module_name, module, name, p))
    return out


def param_groups(model: torch.nn.Module, cfg: TrainConfig, exclude: frozenset[int] = frozenset()) -> list[dict]:
    """AdamW/Adam groups: decayed weight matrices and everything else (but the `exclude`d ids)."""
    decay, no_decay = [], []
    for _, module, name, p in _named_matrices(model):
        if id(p) in exclude:
            continue
        is_matrix = isinstance(module, torch.nn.Linear) and name == "weight"
        (decay if is_matrix or cfg.decay_all else no_decay).append(p)
    return [g for g in ({"params": decay, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
                        {"params": no_decay, "weight_decay": 0.0, "base_lr": cfg.lr}) if g["params"]]


def _adam_kwargs(cfg: TrainConfig, device: torch.device) -> dict:
    # fused kernels on GPUs; the multi-tensor (foreach) path elsewhere
    fast = {"fused": True} if device.type in ("cuda", "mps") else {"foreach": True}
    return {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps, **fast}


def build_optimizers(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    if cfg.optimizer == "adamw":
        return [torch.optim.AdamW(param_groups(model, cfg), **_adam_kwargs(cfg, device))]
    if cfg.optimizer == "adam":
        return [torch.optim.Adam(param_groups(model, cfg), **_adam_kwargs(cfg, device))]
    if cfg.optimizer == "muon":
        hidden = [p for module_name, module, name, p in _named_matrices(model)
                  if module_name.startswith("blocks.") and isinstance(module, torch.nn.Linear) and name == "weight"]
        muon = Muon([{"params": hidden, "base_lr": cfg.muon_lr}], lr=cfg.muon_lr, momentum=cfg.muon_momentum)
        rest = param_groups(model, cfg, exclude=frozenset(id(p) for p in hidden))
        return [muon, torch.optim.AdamW(rest, **_adam_kwargs(cfg, device))]
    raise ConfigError(f"train.optimizer {cfg.optimizer!r} does not exist")

