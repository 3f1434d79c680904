"""Batches of token windows.

Training draws windows of `context + 1` tokens at random offsets from a seeded generator
(input = window[:-1], target = window[1:]); the generator state is the loader's whole state,
saved in train_state.pt so a resumed run draws exactly the batches it would have drawn.
Evaluation walks the split in non-overlapping windows that score every token but the first.
"""

from __future__ import annotations

import numpy as np
import torch

from tinylm.errors import DataError


class RandomWindows:
    def __init__(self, tokens: np.ndarray, context: int, batch_size: int, seed: int):
        if len(tokens) < context + 1:
            raise DataError(f"the training split has {len(tokens):,} tokens, fewer than "
                            f"model.context + 1 = {context + 1}; use more text or a smaller model.context")
        self.tokens, self.context, self.batch_size = tokens, context, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        n_starts = len(self.tokens) - self.context  # a window starting at s ends at s + context
        starts = torch.randint(n_starts, (self.batch_size,), generator=self.generator).tolist()
        windows = np.stack([self.tokens[s:s + self.context + 1] for s in starts]).astype(np.int64)
        batch = torch.from_numpy(windows)
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def eval_windows(n_tokens: int, context: int, max_windows: int = 0) -> list[tuple[int, int]]:
    """(start, length) of windows with stride `context` covering tokens 1..n-1 as targets once.

    With `max_windows`, an evenly spaced subset of them (for quick periodic validation)."""
    windows = [(s, min(context + 1, n_tokens - s)) for s in range(0, n_tokens - 1, context)]
    if max_windows and len(windows) > max_windows:
        picks = np.linspace(0, len(windows) - 1, max_windows).round().astype(int)
        windows = [windows[i] for i in picks]
    return windows
