"""Batches of token windows.

Training windows are `context + 1` tokens long (input = window[:-1], target = window[1:]) and
come from one of two samplers, chosen by `data.sampling` (see `make_loader`):

- "random" (`RandomWindows`): each window starts at an independent random offset drawn from a
  seeded generator; the generator state is the loader's whole state.
- "permutation" (`PermutationWindows`): each epoch tiles the split with windows of stride
  `context` from a seeded phase and visits them in a seeded random order, so every token is a
  target exactly once per epoch; the state is just (epoch, index into that epoch's order).

Either state is saved in train_state.pt so a resumed run draws exactly the batches it would have drawn.
With several processes (`shard=(rank, world_size)`), every process draws the same global batch of
`batch_size * world_size` windows and keeps its own slice: the processes see different data, and
the global batches are the same whatever the number of processes.
Evaluation walks the split in non-overlapping windows that score every token but the first.
"""

from __future__ import annotations

import numpy as np
import torch

from tinylm.errors import CheckpointError, DataError


def _check_length(tokens: np.ndarray, context: int) -> None:
    if len(tokens) < context + 1:
        raise DataError(f"the training split has {len(tokens):,} tokens, fewer than "
                        f"model.context + 1 = {context + 1}; use more text or a smaller model.context")


class _Windows:
    """What both samplers share: the token array, window shape and this process's shard."""

    def __init__(self, tokens: np.ndarray, context: int, batch_size: int, shard: tuple[int, int]):
        _check_length(tokens, context)
        self.tokens, self.context, self.batch_size = tokens, context, batch_size
        self.rank, self.world_size = shard
        self.global_batch = batch_size * self.world_size  # windows drawn per batch, over all processes

    def _stack(self, starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's slice of the global batch starting at `starts`, as (input, target)."""
        mine = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        windows = np.stack([self.tokens[s:s + self.context + 1] for s in mine]).astype(np.int64)
        batch = torch.from_numpy(windows)
        return batch[:, :-1], batch[:, 1:]


def _wrong_sampler(state: dict, sampler: str) -> CheckpointError:
    return CheckpointError(f"the checkpoint's loader state ({', '.join(map(str, state)) or 'empty'}) was not "
                           f"written by the {sampler!r} sampler; resume with the run's own data.sampling")


class RandomWindows(_Windows):
    def __init__(self, tokens: np.ndarray, context: int, batch_size: int, seed: int,
                 shard: tuple[int, int] = (0, 1)):
        super().__init__(tokens, context, batch_size, shard)
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        n_starts = len(self.tokens) - self.context  # a window starting at s ends at s + context
        starts = torch.randint(n_starts, (self.global_batch,), generator=self.generator).tolist()
        return self._stack(starts)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "generator" not in state:
            raise _wrong_sampler(state, "random")
        self.generator.set_state(state["generator"])


class PermutationWindows(_Windows):
    """Every window of an epoch's tiling once, in a seeded order; epochs differ in phase and order.

    Epoch e draws, from a fresh `torch.Generator().manual_seed((seed * 1_000_003 + e) mod 2**63)`,
    first a phase p = randint(min(context, len(tokens) - context)) and then a permutation of the
    n = (len(tokens) - 1 - p) // context windows starting at p + i * context. Consecutive windows
    share one token, so tokens p+1 .. p+n*context are each a target exactly once per epoch (the
    bound on p keeps n >= 1). A batch takes the next `global_batch` windows of the order and runs
    on into the next epoch when the order is used up.
    """

    def __init__(self, tokens: np.ndarray, context: int, batch_size: int, seed: int,
                 shard: tuple[int, int] = (0, 1)):
        super().__init__(tokens, context, batch_size, shard)
        self.seed = seed
        self._epoch, self._index = 0, 0
        self.phase, self.n_windows, self.order = self._layout(0)  # of the current epoch

    def _layout(self, epoch: int) -> tuple[int, int, torch.Tensor]:
        """Phase, window count and window order of `epoch`."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (1 << 63))
        phase = int(torch.randint(min(self.context, len(self.tokens) - self.context), (1,), generator=g))
        n_windows = (len(self.tokens) - 1 - phase) // self.context
        return phase, n_windows, torch.randperm(n_windows, generator=g)

    @property
    def epoch(self) -> float:
        """Progress in epochs: completed epochs plus the fraction of the current one."""
        return self._epoch + self._index / self.n_windows

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts: list[int] = []
        while len(starts) < self.global_batch:
            take = min(self.global_batch - len(starts), self.n_windows - self._index)
            picked = self.order[self._index:self._index + take]
            starts += (self.phase + picked * self.context).tolist()
            self._index += take
            if self._index == self.n_windows:
                self._epoch, self._index = self._epoch + 1, 0
                self.phase, self.n_windows, self.order = self._layout(self._epoch)
        return self._stack(starts)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "index": self._index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if set(state) != {"epoch", "index"}:
            raise _wrong_sampler(state, "permutation")
        epoch, index = int(state["epoch"]), int(state["index"])
        layout = (self.phase, self.n_windows, self.order) if epoch == self._epoch else self._layout(epoch)
        if epoch < 0 or not 0 <= index < layout[1]:
            raise CheckpointError(f"the checkpoint's loader state (epoch {epoch}, window {index}) does not fit "
                                  f"this training split ({layout[1]} windows in that epoch)")
        self.phase, self.n_windows, self.order = layout
        self._epoch, self._index = epoch, index


SAMPLERS = {"random": RandomWindows, "permutation": PermutationWindows}


def make_loader(tokens: np.ndarray, context: int, batch_size: int, seed: int, sampling: str = "random",
                shard: tuple[int, int] = (0, 1)) -> RandomWindows | PermutationWindows:
    """The training loader for `data.sampling`; `shard` = (rank, world_size) of this process."""
    if sampling not in SAMPLERS:
        raise ValueError(f"unknown sampling {sampling!r}; expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[sampling](tokens, context, batch_size, seed, shard)

