"""tinylm GPT -> Hugging Face Llama (`LlamaForCausalLM`): config and weight names.

A tinylm model is a Llama when it uses rotary positions (rotate-half layout), pre-norm RMSNorm,
a SwiGLU MLP and no query/key norm. Biases (`model.attn_bias` / `model.mlp_bias`, both following
`model.bias` unless set; RMSNorm has none) map to Llama's `attention_bias` and `mlp_bias`,
`model.head_size` to `head_dim` and `model.norm_eps` to `rms_norm_eps`. tinylm fuses q, k, v
into one matrix and gate, up into another; Llama keeps them apart, so the export splits rows:

    attn.qkv   rows [q (n_head * head_dim); k (kv_heads * head_dim); v (kv_heads * head_dim)]
    mlp.fc     rows [gate (ff_width); up (ff_width)]

transformers >= 5 reads the rotary base from `rope_parameters`; 4.x from `rope_theta`. The
config carries both, and each version ignores or converts the one it does not use.
"""

from __future__ import annotations

from typing import Any

import torch

from tinylm.config import ModelConfig
from tinylm.errors import ConfigError
from tinylm.config.fields import Fields



def llama_incompatibility(cfg: ModelConfig) -> str | None:
    """Why `cfg` cannot be expressed as a Llama, or None when it can."""
    checks = (
        (cfg.pos == "rope", f"positions are {cfg.pos!r}, Llama uses rope"),
        (cfg.norm == "rmsnorm", f"norm is {cfg.norm!r}, Llama uses rmsnorm"),
        (cfg.norm_position == "pre", f"norm_position is {cfg.norm_position!r}, Llama is pre-norm"),
        (cfg.mlp == "swiglu", f"mlp is {cfg.mlp!r}, Llama uses swiglu"),
        (not cfg.qk_norm, "qk_norm has no Llama equivalent"),
    )
    return next((why for ok, why in checks if not ok), None)


def llama_compatible(cfg: ModelConfig) -> bool:
    """Whether a model of this shape is exactly a transformers `LlamaForCausalLM`."""
    return llama_incompatibility(cfg) is None


def _check(cfg: ModelConfig) -> None:
    why = llama_incompatibility(cfg)
    if why is not None:
        raise ValueError(f"this model is not Llama-compatible: {why}")


def llama_config(cfg: ModelConfig, *, bos_token_id: int | None = None, eos_token_id: int | None = None,
                 pad_token_id: int | None = None) -> dict[str, Any]:
    """The `config.json` dict of the equivalent transformers `LlamaConfig`."""
    _check(cfg)
    theta = float(cfg.rope_base)
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ff_width,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.context,
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": "silu",
        "rope_theta": theta,  # transformers 4.x
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},  # transformers 5.x
        "rope_scaling": None,
        "attention_bias": cfg.has_attn_bias,
        "mlp_bias": cfg.has_mlp_bias,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_weights,
        "initializer_range": 0.02,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def to_llama_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under `LlamaForCausalLM` names (contiguous copies, safe to save).
    With tied weights there is no `lm_head.weight` (Llama ties it to `model.embed_tokens`)."""
    cfg: ModelConfig = model.cfg
    _check(cfg)
    q_rows, kv_rows, ff = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.ff_width
    out: dict[str, torch.Tensor] = {}

    def put(name: str, t: torch.Tensor) -> None:
        out[name] = t.detach().clone().contiguous()

    put("model.embed_tokens.weight", model.tok_emb.weight)
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        put(p + "input_layernorm.weight", block.ln1.weight)
        put(p + "post_attention_layernorm.weight", block.ln2.weight)
        for kind in ("weight", "bias"):
            qkv, proj = getattr(block.attn.qkv, kind), getattr(block.attn.proj, kind)
            fc, down = getattr(block.mlp.fc, kind), getattr(block.mlp.proj, kind)
            if qkv is not None:
                q, k, v = qkv.split([q_rows, kv_rows, kv_rows], dim=0)
                put(p + f"self_attn.q_proj.{kind}", q)
                put(p + f"self_attn.k_proj.{kind}", k)
                put(p + f"self_attn.v_proj.{kind}", v)
            if proj is not None:
                put(p + f"self_attn.o_proj.{kind}", proj)
            if fc is not None:
                gate, up = fc.split([ff, ff], dim=0)
                put(p + f"mlp.gate_proj.{kind}", gate)
                put(p + f"mlp.up_proj.{kind}", up)
            if down is not None:
                put(p + f"mlp.down_proj.{kind}", down)
    put("model.norm.weight", model.ln_f.weight)
    if not cfg.tie_weights:
        put("lm_head.weight", model.head.weight)
    return out


def from_llama_state(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `to_llama_state`: Llama-named weights -> a tinylm GPT state dict for `cfg`."""
    _check(cfg)
    out: dict[str, torch.Tensor] = {"tok_emb.weight": state["model.embed_tokens.weight"]}
    for i in range(cfg.n_layer):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        out[b + "ln1.weight"] = state[p + "input_layernorm.weight"]
        out[b + "ln2.weight"] = state[p + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias"):
            if p + f"self_attn.q_proj.{kind}" in state:
                out[b + f"attn.qkv.{kind}"] = torch.cat([state[p + f"self_attn.{n}_proj.{kind}"] for n in "qkv"])
            if p + f"self_attn.o_proj.{kind}" in state:
                out[b + f"attn.proj.{kind}"] = state[p + f"self_attn.o_proj.{kind}"]
            if p + f"mlp.gate_proj.{kind}" in state:
                out[b + f"mlp.fc.{kind}"] = torch.cat([state[p + f"mlp.{n}_proj.{kind}"] for n in ("gate", "up")])
            if p + f"mlp.down_proj.{kind}" in state:
                out[b + f"mlp.proj.{kind}"] = state[p + f"mlp.down_proj.{kind}"]
    out["ln_f.weight"] = state["model.norm.weight"]
    out["head.weight"] = state["model.embed_tokens.weight"] if cfg.tie_weights else state["lm_head.weight"]
    return out


# --------------------------------------------------------------------------- import

# The architectures read as Llama: the same tensors and computation, differing only in config flags.
LLAMA_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral"}


def rope_settings(config: dict[str, Any], origin: str) -> float:
    """The rotary base of a Llama config (transformers 4.x `rope_theta` / `rope_scaling`, 5.x
    `rope_parameters`); a ConfigError naming any rope scaling tinylm's rotary embedding lacks."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    for source in (params, scaling):
        kind = source.get("rope_type", source.get("type", "default"))
        if kind not in (None, "default"):
            raise ConfigError(f"{origin}: rope scaling {kind!r} is not implemented by tinylm's rotary embedding "
                              "(only plain RoPE, rope_type 'default', is); this model cannot be imported")
    theta = Fields(config, origin).float("rope_theta", 10000.0)
    return Fields(params, f"{origin}: rope_parameters").float("rope_theta", theta)


def model_config_from_llama(config: dict[str, Any], origin: str = "config.json") -> ModelConfig:
    """The tinylm ModelConfig of a transformers Llama-family config dict (ConfigError naming the
    field tinylm cannot express, or one of the wrong type: `"num_hidden_layers": true` is no integer)."""
    f = Fields(config, origin)
    if config.get("model_type") == "mistral":
        window = f.int("sliding_window", None)
        if window is not None and window < f.int("max_position_embeddings", 2048):
            raise ConfigError(f"{origin}: sliding_window {window} (sliding-window attention) is not implemented "
                              "by tinylm; only Mistral models without a sliding window import")
    act = f.str("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{origin}: hidden_act {act!r} is not supported (Llama's SwiGLU uses silu)")
    theta = rope_settings(config, origin)
    d_model, n_head = f.int("hidden_size"), f.int("num_attention_heads")
    if n_head < 1:
        raise ConfigError(f"{origin}: num_attention_heads must be >= 1, got {n_head}")
    head_dim = f.int("head_dim", 0) or d_model // n_head
    attn_bias, mlp_bias = f.bool("attention_bias", False), f.bool("mlp_bias", False)
    cfg = ModelConfig(
        vocab_size=f.int("vocab_size"), context=f.int("max_position_embeddings", 2048),
        n_layer=f.int("num_hidden_layers"), n_head=n_head,
        n_kv_head=f.int("num_key_value_heads", 0) or n_head, d_model=d_model,
        d_ff=f.int("intermediate_size"), ff_multiple=1, mlp="swiglu", pos="rope", rope_base=theta,
        norm="rmsnorm", norm_eps=f.float("rms_norm_eps", 1e-6), norm_position="pre", dropout=0.0,
        bias=attn_bias and mlp_bias, attn_bias=None if attn_bias == mlp_bias else attn_bias,
        mlp_bias=None if attn_bias == mlp_bias else mlp_bias,
        head_size=0 if head_dim * n_head == d_model else head_dim,
        tie_weights=f.bool("tie_word_embeddings", False))
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{origin}: {e}") from None
    return cfg
