"""Learning-rate schedule: linear warmup, then cosine decay from `lr` to `min_lr`.

Progress is a fraction in [0, 1]: steps done / max_steps, or, when a wall-clock budget is set
and runs out first, seconds elapsed / budget. So a time-budgeted run anneals exactly as the
budget ends, whatever speed the machine has.
"""

from __future__ import annotations

import math

from tinylm.config import TrainConfig


def progress_fraction(step: int, elapsed: float, cfg: TrainConfig) -> float:
    frac = step / cfg.max_steps
    if cfg.time_budget > 0:
        frac = max(frac, elapsed / cfg.time_budget)
    return min(frac, 1.0)


def learning_rate(step: int, frac: float, cfg: TrainConfig) -> float:
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    cosine = 0.5 * (1.0 + math.cos(math.pi * frac))  # 1 -> 0 as frac goes 0 -> 1
    return warmup * (cfg.min_lr + (cfg.lr - cfg.min_lr) * cosine)
