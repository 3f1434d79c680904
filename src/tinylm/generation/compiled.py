"""The compiled decode step: torch.compile of one token per row over a static KV cache.

    Run.ready() with compile ─► DecodeStep(model) ─► handed to every Engine the run builds (the engine
    decodes its running rows through it; each row's prefill and refills stay eager)

The step is the one-token decode over a static per-row cache (`model.new_cache(..., static=True)`:
fixed shapes, no host reads), CUDA graphs on GPUs (mode "reduce-overhead"). Its first call at a batch
size compiles (the warm-up, reported through `on_warmup`); compile = "auto" is on for CUDA GPUs and
off on CPUs, where the eager kernels are as fast (measured: within +-5%) and the warm-up takes 10 s
to a minute. Whoever builds a step owns it (a `Run`, a test): nothing registers it for a model.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import torch
import torch.nn as nn


class DecodeStep:
    """The logits (B, vocab) in float32 of one new token per row, `idx` (B, 1), appended to a
    static per-row cache, through torch.compile (fullgraph, fixed shapes: one compilation per batch
    size; CUDA graphs on GPUs, whose cache tensors sit at fixed addresses). `acquire(B)` lends a
    static cache for B rows (kept for the next generation: new tensors would mean new CUDA graphs)
    and `release` takes it back. `warmup_s` is the first call's time (the compilation); `on_warmup`
    is told when it ends. If compiling fails, the step warns once and runs eagerly."""

    def __init__(self, model: nn.Module, on_warmup: Callable[[float], None] | None = None):
        self.model, self.on_warmup = model, on_warmup
        self.cuda = weights_device(model).type == "cuda"
        # CUDA graphs on GPUs; on CPUs, freezing: the weights become constants inductor prepacks
        options = None if self.cuda else {"freezing": True}
        mode = "reduce-overhead" if self.cuda else None
        self.fn = torch.compile(self._step, fullgraph=True, dynamic=False, mode=mode, options=options)
        self.warmup_s: float | None = None
        self.failed: str | None = None
        self.batches: set[int] = set()
        self.free: dict[int, list] = {}
        self.lock = threading.RLock()

    def _step(self, idx: torch.Tensor, cache) -> torch.Tensor:
        hidden = self.model.features(idx, cache=cache)
        return self.model.head(hidden[:, -1]).float()

    def acquire(self, batch: int):
        """A static cache for `batch` rows, every row empty."""
        with self.lock:
            pool = self.free.setdefault(batch, [])
            cache = pool.pop() if pool else self.model.new_cache(batch, static=True)
        cache.reset()
        if self.cuda:  # fixed addresses: CUDA graphs may write into them
            for t in (*cache.k, *cache.v, cache.lengths):
                torch._dynamo.mark_static_address(t)
        return cache

    def release(self, cache) -> None:
        with self.lock:
            self.free.setdefault(cache.lengths.size(0), []).append(cache)

    def __call__(self, idx: torch.Tensor, cache) -> torch.Tensor:
        if not getattr(cache, "static", False):
            raise ValueError("the compiled decode step needs a static cache (model.new_cache(..., static=True))")
        if self.failed is not None:
            return self._step(idx, cache)
        with self.lock:  # one compilation at a time (the server's thread and a caller's)
            first = idx.size(0) not in self.batches
            start = time.perf_counter()
            try:
                out = self.fn(idx, cache)
            except Exception as e:  # noqa: BLE001 - any compiler failure: decode eagerly instead
                if not first:
                    raise
                from tinylm.console import warn

                self.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                warn(f"torch.compile of the decode step failed ({self.failed}); decoding without it")
                return self._step(idx, cache)
            if first:
                self.batches.add(idx.size(0))
                if self.warmup_s is None:
                    self.warmup_s = time.perf_counter() - start
                    if self.on_warmup is not None:
                        self.on_warmup(self.warmup_s)
            return out.clone() if self.cuda else out  # a CUDA graph's output is overwritten by its next run


def weights_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
