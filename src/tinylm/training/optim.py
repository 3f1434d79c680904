"""Optimizers, chosen by `train.optimizer`:

    adamw  AdamW, decoupled weight decay on the weight matrices of linear layers only
    adam   Adam, weight decay (if any) as an L2 term on the same matrices
    muon   PyTorch's torch.optim.Muon on the transformer blocks' weight matrices, AdamW on the
           rest (embeddings, output head, norms, biases), which Muon is not designed for

Embeddings, norms and biases are not decayed unless `train.decay_all`. Every parameter group
records its `base_lr`; the trainer sets `lr = base_lr * schedule factor` before each step. The
result is a list of optimizers (one, or two for muon) stepped together; `load_state` restores
them from a checkpoint, also one written by tinylm's own Muon before it used PyTorch's.

Muon (Keller Jordan, 2024, "Muon: An optimizer for hidden layers in neural networks"; the
reference is modded-nanogpt / github.com/KellerJordan/Muon): per 2-D parameter, an SGD momentum
buffer with Nesterov look-ahead, replaced by its nearest semi-orthogonal matrix (five quintic
Newton-Schulz steps, coefficients (3.4445, -4.7750, 2.0315): singular values land near 1, not
exactly on it) and applied with lr * sqrt(max(1, rows / cols)), so tall matrices get the same
per-element update RMS as wide ones. That scale is torch's adjust_lr_fn="original", the
reference's; "match_rms_adamw" (Moonshot's 0.2 * sqrt(max(rows, cols))) would change the
effective step and with it every tuned `train.muon_lr`. torch keeps the momentum as an EMA,
(1 - momentum) times the reference's sum, which the orthogonalization's normalisation cancels;
it runs Newton-Schulz in bfloat16 (also on CPUs).
"""

from __future__ import annotations

import torch

from tinylm.config import TrainConfig
from tinylm.errors import ConfigError


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


def muon(params, lr: float, momentum: float = 0.95, weight_decay: float = 0.0) -> torch.optim.Muon:
    """torch.optim.Muon with the reference's conventions (see the module docstring), every setting
    explicit (torch's defaults are lr 1e-3 and weight decay 0.1). `params`: 2-D tensors or groups
    of them; anything else is a ValueError."""
    return torch.optim.Muon(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay,
                            ns_steps=5, adjust_lr_fn="original")


def build_optimizers(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    if cfg.optimizer == "adamw":
        return [torch.optim.AdamW(param_groups(model, cfg), **_adam_kwargs(cfg, device))]
    if cfg.optimizer == "adam":
        return [torch.optim.Adam(param_groups(model, cfg), **_adam_kwargs(cfg, device))]
    if cfg.optimizer == "muon":
        hidden = [p for module_name, module, name, p in _named_matrices(model)
                  if module_name.startswith("blocks.") and isinstance(module, torch.nn.Linear) and name == "weight"]
        hidden_opt = muon([{"params": hidden, "base_lr": cfg.muon_lr}], lr=cfg.muon_lr, momentum=cfg.muon_momentum)
        rest = param_groups(model, cfg, exclude=frozenset(id(p) for p in hidden))
        return [hidden_opt, torch.optim.AdamW(rest, **_adam_kwargs(cfg, device))]
    raise ConfigError(f"train.optimizer {cfg.optimizer!r} does not exist")



def load_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """`optimizer.load_state_dict(saved)`; a Muon state saved by tinylm's own Muon (before it used
    torch.optim.Muon: groups without `ns_coefficients`, momentum summed rather than averaged) is
    converted first, so such runs resume with the same updates."""
    if isinstance(optimizer, torch.optim.Muon) and any("ns_coefficients" not in g for g in saved["param_groups"]):
        groups = [{**optimizer.defaults, **g} for g in saved["param_groups"]]
        momentum = {i: g["momentum"] for g in groups for i in g["params"]}
        state = {i: {k: v * (1 - momentum[i]) if k == "momentum_buffer" else v for k, v in s.items()}
                 for i, s in saved["state"].items()}
        saved = {"state": state, "param_groups": groups}
    optimizer.load_state_dict(saved)
