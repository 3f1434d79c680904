"""Muon: MomentUm Orthogonalized by Newton-Schulz (Keller Jordan, 2024; modded-nanogpt).

For each 2-D parameter Muon keeps an SGD momentum buffer (with Nesterov look-ahead by default)
and, instead of applying the momentum directly, replaces it by its nearest semi-orthogonal
matrix: G = U S V^T becomes roughly U V^T, so every singular direction of the update moves by
about the same amount. The orthogonalization is a few steps of a quintic Newton-Schulz iteration
(cheap matmuls, no SVD) whose coefficients are tuned for speed rather than exact convergence:
singular values land in about [0.68, 1.2] instead of exactly 1. The update is then scaled by
sqrt(max(1, rows / cols)) so tall matrices get a comparable per-element RMS.

Muon is for the hidden weight matrices of a network (the attention and MLP matrices of the
transformer blocks). Embeddings, the output head, norms and biases belong in AdamW; combining
the two optimizers is done elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

# Quintic Newton-Schulz coefficients of the reference implementation: the slope at zero (a) is
# made as large as possible while the iteration still maps (0, 1] into a band around 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately replace the 2-D matrix ``g = U S V^T`` by ``U V^T``.

    Each step applies the odd polynomial x -> a x + b x^3 + c x^5 to the singular values of X
    (written with matrices: X <- a X + (b A + c A^2) X with A = X X^T), leaving U and V
    unchanged. Runs in bfloat16 on CUDA like the reference, in float32 elsewhere; the result has
    the input's dtype.
    """
    if g.ndim != 2:
        raise ValueError(f"orthogonalize expects a 2-D matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = g.to(torch.bfloat16 if g.device.type == "cuda" else torch.float32)
    transposed = x.size(0) > x.size(1)
    if transposed:  # iterate on the wide orientation so the Gram matrix X X^T is the small one
        x = x.mT
    # The spectral norm is at most the Frobenius norm, so all singular values start in [0, 1].
    x = x / (x.norm() + eps)
    for _ in range(steps):
        gram = x @ x.mT
        poly = b * gram + c * (gram @ gram)
        x = a * x + poly @ x
    if transposed:
        x = x.mT
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters; see the module docstring.

    Per parameter and step: ``buf = momentum * buf + grad``; the update is
    ``grad + momentum * buf`` (Nesterov) or ``buf``, orthogonalized, scaled by
    ``sqrt(max(1, rows / cols))``; then decoupled weight decay ``p *= 1 - lr * weight_decay``
    and ``p -= lr * update``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be >= 1, got {ns_steps}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                    "ns_steps": ns_steps, "weight_decay": weight_decay}
        super().__init__(params, defaults)  # calls add_param_group, which checks the shapes

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            if p.ndim != 2:
                self.param_groups.pop()
                raise ValueError(f"Muon only optimizes 2-D parameters, got one of shape {tuple(p.shape)}; "
                                 "use AdamW for embeddings, norms and biases")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(grad)
                update = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
                update = orthogonalize(update, group["ns_steps"])
                # U V^T has per-element RMS 1/sqrt(max(rows, cols)): 1/sqrt(cols) when wide, and
                # the factor gives a tall matrix that same 1/sqrt(cols) (1/sqrt(fan_in) for nn.Linear).
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                p.mul_(1.0 - lr * wd)
                p.add_(update, alpha=-lr * scale)
        return loss
