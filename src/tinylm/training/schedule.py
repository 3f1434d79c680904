"""Learning-rate schedules: linear warmup, then one of

    cosine    cosine decay from `lr` to `min_lr` over the whole run (the default)
    wsd       warmup-stable-decay: `lr` until the last `cooldown` fraction, then linear to `min_lr`
    constant  `lr` after the warmup

Progress is a fraction in [0, 1]: steps done / max_steps, or, when a wall-clock budget is set
and runs out first, seconds elapsed / budget. So a time-budgeted run anneals exactly as the
budget ends, whatever speed the machine has. Optimizer groups with their own base rate (Muon's
`muon_lr`) follow the same curve, scaled by `lr_factor`.
"""

from __future__ import annotations

import math

from tinylm.config import TrainConfig


def progress_fraction(step: int, elapsed: float, cfg: TrainConfig) -> float:
    frac = step / cfg.max_steps
    if cfg.time_budget > 0:
        frac = max(frac, elapsed / cfg.time_budget)
    return min(frac, 1.0)


def _decay(frac: float, cfg: TrainConfig) -> float:
    """1 -> 0 as the run progresses (how far from min_lr towards lr)."""
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    if cfg.schedule == "wsd":
        return min(1.0, (1.0 - frac) / cfg.cooldown)
    return 1.0  # constant: min_lr is never reached


def learning_rate(step: int, frac: float, cfg: TrainConfig) -> float:
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    return warmup * (cfg.min_lr + (cfg.lr - cfg.min_lr) * _decay(frac, cfg))


def lr_factor(step: int, frac: float, cfg: TrainConfig) -> float:
    """The schedule as a multiple of the base rate (1 at the top)."""
    return learning_rate(step, frac, cfg) / cfg.lr
