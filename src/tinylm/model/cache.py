"""The key/value cache: what a decoder keeps of the tokens it has seen, one row per sequence.

    KVCache.k[layer], .v[layer]   (batch, n_kv_head, max_len, head_dim)
    KVCache.lengths               (batch,) on the device: row b holds its first lengths[b] positions

    forward(idx (B, T), cache) ─► `GPT.features` asks `plan(T)` where the T new tokens go ─► every layer
    `append`s its keys and values there and attends over what `append` returns ─► lengths += T

Every row has its own length: a forward appends each row's tokens at that row's length and a row attends
to its own positions only (the mask `plan` builds), so rows at different positions decode together (the
generation engine's continuous batching). Two ways need no mask:

- an *aligned* cache or view (`length` is an int: every row holds exactly `length` positions, as the
  caller knows without asking the device): a prefill from 0 is plain causal attention, and one new token
  sees every cached position. A new cache is aligned at 0; `rows(a, b, length=L)` is an aligned view of
  some rows (the engine's rows of one length), `rows(a, b)` a per-row one.
- a `static` cache (for torch.compile and CUDA graphs) attends over all `max_len` positions under the
  per-row mask: the same shapes at every step, and no length is read back to the host.
"""

from __future__ import annotations

import torch

from tinylm.config import ModelConfig


class KVCache:
    """Keys and values of every layer for `batch` rows of up to `max_len` positions (see the module
    docstring). `length`: the positions every row holds when the caller knows they are equal (aligned),
    else None (per-row: `lengths` decides); `static`: attend over all `max_len` positions (fixed shapes)."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device: torch.device, dtype: torch.dtype,
                 static: bool = False):
        shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.max_len = max_len
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.static = static
        self.length: int | None = None if static else 0
        self._arange = torch.arange(max_len, device=device)  # positions 0..max_len-1, sliced by `plan`
        self._slices: dict[tuple[int, int], tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]] = {}

    @property
    def batch(self) -> int:
        return self.lengths.size(0)

    def reset(self) -> None:
        """Every row empty again (aligned at 0, unless static)."""
        self.lengths.zero_()
        self.length = None if self.static else 0

    def rows(self, start: int, stop: int, length: int | None = None) -> KVCache:
        """A view of rows start..stop-1 sharing this cache's storage (writes go through, `lengths` too).
        With `length` the view is aligned: its rows hold `length` positions from now on (their lengths are
        set to it; 0 to prefill rows from their start, the row's old positions forgotten); without, per-row
        (static if this cache is)."""
        sliced = self._slices.get((start, stop))
        if sliced is None:
            sliced = ([t[start:stop] for t in self.k], [t[start:stop] for t in self.v], self.lengths[start:stop])
            if start == 0:  # a decode step's rows (0..n-1): the same few ranges at every step, sliced once
                self._slices[start, stop] = sliced
        view = KVCache.__new__(KVCache)
        view.k, view.v, view.lengths = sliced
        view.max_len, view._arange, view._slices = self.max_len, self._arange, {}
        if length is not None:
            view.lengths.fill_(length)
        view.length = length
        view.static = self.static and length is None
        return view

    def plan(self, T: int) -> tuple[torch.Tensor, torch.Tensor | None, int | tuple[torch.Tensor, torch.Tensor], int]:
        """Where T new tokens of each row go: (positions (B, T) counted from each row's first token, the
        attention mask (B or 1, 1, T, keys) or None, where `append` writes (a start index for an aligned
        cache, else row and column indices), keys: how many positions the layers attend over). A
        ValueError when a row would pass `max_len`."""
        device = self.lengths.device
        if self.length is not None:  # aligned: row b's tokens sit at length + t, like every other row's
            start = self.length
            if start + T > self.max_len:
                raise ValueError(f"sequence length {start + T} exceeds the cache's {self.max_len} positions")
            queries = self._arange[start:start + T]
            mask = None
            if start > 0 and T > 1:
                mask = (self._arange[None, :start + T] <= queries[:, None])[None, None]
            return queries[None].expand(self.batch, T), mask, start, start + T
        new = self._arange[:T] if T <= self.max_len else torch.arange(T, device=device)
        if self.static:  # the caller keeps every row within max_len (a static cache never reads lengths back)
            keys = self.max_len
        else:
            keys = int(self.lengths.max()) + T
            if keys > self.max_len:
                raise ValueError(f"sequence length {keys} exceeds the cache's {self.max_len} positions")
        positions = self.lengths[:, None] + new  # row b's tokens sit at lengths[b] + t and see the keys up to them
        mask = (self._arange[None, None, :keys] <= positions[:, :, None])[:, None]
        rows = (self._arange[:self.batch] if self.batch <= self.max_len else torch.arange(self.batch, device=device))[:, None]
        return positions, mask, (rows, positions), keys

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor, where: int | tuple[torch.Tensor, torch.Tensor],
               keys: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys and values (B, n_kv_head, T, head_dim) of `layer` where `plan` said, and
        return the keys and values to attend over, (B, n_kv_head, keys, head_dim)."""
        K, V = self.k[layer], self.v[layer]
        if isinstance(where, int):
            K[:, :, where:where + k.size(2)] = k
            V[:, :, where:where + k.size(2)] = v
        else:
            rows, cols = where
            K[rows, :, cols] = k.transpose(1, 2).to(K.dtype)
            V[rows, :, cols] = v.transpose(1, 2).to(V.dtype)
        return (K, V) if keys == self.max_len else (K[:, :, :keys], V[:, :, :keys])

    def advance(self, T: int) -> None:
        """Record the T tokens each row just appended (after the forward)."""
        self.lengths += T
        if self.length is not None:
            self.length += T

    def copy_rows(self, dst: torch.Tensor | list[int], src: torch.Tensor | list[int], positions: int) -> None:
        """Row dst[i] becomes a copy of row src[i] (its first `positions` keys and values, and its length):
        beam search's reordering, and the engine's moves of rows into freed slots."""
        dst = torch.as_tensor(dst, dtype=torch.long, device=self.lengths.device)
        src = torch.as_tensor(src, dtype=torch.long, device=self.lengths.device)
        for t in (*self.k, *self.v):
            t[dst, :, :positions] = t[src, :, :positions]
        self.lengths[dst] = self.lengths[src]
