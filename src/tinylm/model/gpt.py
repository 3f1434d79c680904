"""A decoder-only transformer (GPT), configurable in the ways small-LM recipes differ.

    tokens -> token embedding (+ learned or sinusoidal position embedding) -> dropout
           -> n_layer x block -> final norm -> linear head (optionally tied to the embedding) -> logits

    block, pre-norm (default):  x = x + Attn(Norm(x));  x = x + MLP(Norm(x))
    block, post-norm:           x = Norm(x + Attn(x));  x = Norm(x + MLP(x))

Attention is causal self-attention with `n_head` query heads sharing `n_kv_head` key/value heads
(grouped-query; 1 = multi-query), optionally RMS-normalising queries and keys, with rotary
positions applied to queries and keys when `pos = "rope"`. It runs in
`scaled_dot_product_attention`, or in an explicit softmax(q k^T / sqrt(d)) v ("manual", for
teaching and inspecting the weights). The MLP is Linear -> GELU (exact or tanh) -> Linear, or SwiGLU.

For generation, a `KVCache` (cache.py) keeps each layer's keys and values, so a new token attends to
the cached ones instead of recomputing the prefix. Every row of a cache has its own length: rows at
different positions decode together (the generation engine's continuous batching), each counting
positions from its own first token and attending to its own positions only. Rows the caller knows to be
equally long (an aligned cache) need no mask: a prefill from position 0 is plain causal attention and one
new token sees every cached position. Grouped-query heads are passed to
`scaled_dot_product_attention` as they are (`enable_gqa`), not repeated.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinylm.config import ModelConfig
from tinylm.model.cache import KVCache
from tinylm.runtime import check_memory


def norm_layer(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


def sinusoidal_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(same)."""
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    angles = positions.float()[..., None] * inv_freq
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)[..., :dim]


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles p * base^(-2i/head_dim), as (B, 1, T, head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # the same angle for both halves
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + d/2]) by their angle (the "rotate half" layout of GPT-NeoX and Llama)."""
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


def _dropout(p: float) -> nn.Module:
    """Dropout of probability p; none at all for p = 0 (a decode step calls it once per layer or more)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_head, self.n_kv, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        # q for every head, k and v for the key/value heads, in one matmul
        self.qkv = nn.Linear(cfg.d_model, (self.n_head + 2 * self.n_kv) * self.head_dim, bias=cfg.has_attn_bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, cfg.d_model, bias=cfg.has_attn_bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.attn_drop = _dropout(cfg.dropout)
        self.resid_drop = _dropout(cfg.dropout)
        self.weights: torch.Tensor | None = None  # the last attention weights (manual attention only)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rotary: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None = None, layer: int = 0, where: tuple = ()) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model); with `cache`, the keys and values go `where` the cache's
        `plan` said (and the attention sees the cached ones)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split([self.n_head * self.head_dim, self.n_kv * self.head_dim,
                                     self.n_kv * self.head_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, heads, T, head_dim)
        k = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:  # append to the cached keys and values and attend over all of them
            k, v = cache.append(layer, k, v, *where)
        # without a mask: causal over T > 1 new tokens, or one token that sees every key before it
        causal = mask is None and T > 1
        dropout = self.cfg.dropout if self.training else 0.0
        if self.cfg.attention == "manual":
            if self.n_kv != self.n_head:  # each key/value head serves n_head / n_kv query heads
                k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)
                v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, heads, T, keys)
            allowed = mask if mask is not None else torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
            self.weights = weights.detach()
            y = self.attn_drop(weights) @ v
        else:  # the same computation in a fused kernel; grouped key/value heads as they are
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout,
                                               enable_gqa=self.n_kv != self.n_head)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # concatenate the heads
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.approximate = "tanh" if cfg.mlp == "gelu_tanh" else "none"
        # SwiGLU: proj(silu(gate) * up), with gate and up computed by one matmul
        self.fc = nn.Linear(cfg.d_model, (2 if self.swiglu else 1) * cfg.ff_width, bias=cfg.has_mlp_bias)
        self.proj = nn.Linear(cfg.ff_width, cfg.d_model, bias=cfg.has_mlp_bias)
        self.drop = _dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate=self.approximate)
        return self.drop(self.proj(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.ln1 = norm_layer(cfg, cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = norm_layer(cfg, cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rotary: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None = None, layer: int = 0, where: tuple = ()) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln1(x), mask, rotary, cache, layer, where)
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attn(x, mask, rotary, cache, layer, where))
        return self.ln2(x + self.mlp(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (it comes from the tokenizer)")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model) if cfg.pos == "learned" else None
        self.drop = _dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = norm_layer(cfg, cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        if cfg.init == "gpt2":
            # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * n_layer),
            # so the variance of the residual stream does not grow with depth.
            for name, p in self.named_parameters():
                if name.endswith("proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            if self.cfg.init == "xavier":
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (shared tensors counted once); optionally without the embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + (self.pos_emb.weight.numel() if self.pos_emb is not None else 0)
        return n

    def flops_per_token(self, seq_len: int = 0) -> int:
        """Training FLOPs per token (forward + backward, Kaplan et al. / PaLM): 6 per weight that
        multiplies an activation (the blocks and the output head) plus 12 * n_layer * d_model *
        seq_len (default: the context) for the attention scores and their weighted sum."""
        matmul_params = self.num_params(non_embedding=True) + (self.head.weight.numel() if self.cfg.tie_weights else 0)
        return 6 * matmul_params + 12 * self.cfg.n_layer * self.cfg.d_model * (seq_len or self.cfg.context)

    def new_cache(self, batch: int, max_len: int | None = None, static: bool = False) -> KVCache:
        """An empty key/value cache for `batch` sequences of up to `max_len` (default: the context)
        positions, aligned at 0 (`static`: attention over all `max_len` positions, fixed shapes for
        torch.compile). A one-line error when it certainly cannot fit in memory."""
        weight = self.tok_emb.weight
        max_len = max_len or self.cfg.context
        cfg = self.cfg
        need = 2 * cfg.n_layer * batch * max_len * cfg.kv_heads * cfg.head_dim * weight.element_size()
        check_memory(need, weight.device, f"the KV cache ({batch} x {max_len:,} positions x {cfg.n_layer} layers)",
                     "lower model.context (tinylm import --context N caps an imported model's) or the batch")
        return KVCache(cfg, batch, max_len, weight.device, weight.dtype, static)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids. Returns logits (B, T, vocab) and, when `targets` (B, T) is given,
        the mean cross-entropy (targets of -1 are ignored). With `cache`, idx continues each row's
        cached sequence (and is appended to the cache)."""
        logits = self.head(self.features(idx, cache=cache))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    def features(self, idx: torch.Tensor, *, cache: KVCache | None = None) -> torch.Tensor:
        """The final normalised hidden states (B, T, d_model): `self.head` of them are the logits
        (callers that need few positions' logits apply the head to those alone). Without a cache, plain
        causal attention over at most `context` tokens; with one, see `KVCache.plan`."""
        B, T = idx.shape
        mask, where = None, ()
        if cache is None:
            if T > self.cfg.context:
                raise ValueError(f"sequence length {T} exceeds the model's context {self.cfg.context}")
            positions = torch.arange(T, device=idx.device)[None].expand(B, T)
        else:
            positions, mask, *where = cache.plan(T)
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        elif self.cfg.pos == "sinusoidal":
            x = x + sinusoidal_embedding(positions, self.cfg.d_model).to(x.dtype)
        rotary = rotary_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_base) if self.cfg.pos == "rope" else None
        x = self.drop(x)
        where = tuple(where)
        for layer, block in enumerate(self.blocks):
            x = block(x, mask, rotary, cache, layer, where)
        if cache is not None:
            cache.advance(T)
        return self.ln_f(x)
