"""The mapping between tinylm's GPT and Hugging Face's `GPT2LMHeadModel`.

    tinylm                          transformers (GPT2LMHeadModel)
    tok_emb.weight                  transformer.wte.weight
    pos_emb.weight                  transformer.wpe.weight
    blocks.{i}.ln1.{weight,bias}    transformer.h.{i}.ln_1.{weight,bias}
    blocks.{i}.attn.qkv             transformer.h.{i}.attn.c_attn     (Conv1D: weight is (in, out))
    blocks.{i}.attn.proj            transformer.h.{i}.attn.c_proj
    blocks.{i}.ln2                  transformer.h.{i}.ln_2
    blocks.{i}.mlp.fc               transformer.h.{i}.mlp.c_fc
    blocks.{i}.mlp.proj             transformer.h.{i}.mlp.c_proj
    ln_f                            transformer.ln_f
    head.weight                     lm_head.weight                    (only when untied)

GPT-2's Conv1D layers store weights transposed relative to nn.Linear. GPT-2 always has biases,
so a bias-free tinylm model exports zero biases.
"""

from __future__ import annotations

from typing import Any

import torch

from tinylm.config import ModelConfig
from tinylm.errors import ConfigError, ExportError
from tinylm.config.fields import Fields

LAYER_NORM_EPS = 1e-5
ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
# transformers' names for the activations tinylm has (the tanh approximation has several names)
IMPORT_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                      "gelu_fast": "gelu_tanh"}
# (tinylm suffix, GPT-2 suffix, Conv1D i.e. transposed)
_BLOCK = (("ln1", "ln_1", False), ("attn.qkv", "attn.c_attn", True), ("attn.proj", "attn.c_proj", True),
          ("ln2", "ln_2", False), ("mlp.fc", "mlp.c_fc", True), ("mlp.proj", "mlp.c_proj", True))


def gpt2_problems(cfg: ModelConfig) -> list[str]:
    """Why GPT-2 cannot express `cfg` (empty when it can), one phrase per field."""
    problems = []
    if cfg.pos != "learned":
        problems.append(f"model.pos = {cfg.pos!r} (GPT-2 has learned positions)")
    if cfg.norm != "layernorm":
        problems.append(f"model.norm = {cfg.norm!r} (GPT-2 uses layernorm)")
    if cfg.norm_position != "pre":
        problems.append(f"model.norm_position = {cfg.norm_position!r} (GPT-2 is pre-norm)")
    if cfg.mlp not in ACTIVATIONS:
        problems.append(f"model.mlp = {cfg.mlp!r} (GPT-2 has a gelu MLP)")
    if cfg.kv_heads != cfg.n_head:
        problems.append(f"model.n_kv_head = {cfg.n_kv_head} (GPT-2 has one key/value head per query head)")
    if cfg.qk_norm:
        problems.append("model.qk_norm = true (GPT-2 does not normalise queries and keys)")
    if cfg.head_size and cfg.head_size * cfg.n_head != cfg.d_model:
        problems.append(f"model.head_size = {cfg.head_size} (GPT-2's heads split d_model evenly)")
    return problems


def check_gpt2_compatible(cfg: ModelConfig) -> None:
    problems = gpt2_problems(cfg)
    if problems:
        raise ExportError(f"GPT-2 cannot express {'; '.join(problems)}")


def gpt2_config(cfg: ModelConfig, eot_id: int | None = None, bos_id: int | None = None) -> dict[str, Any]:
    """A transformers `GPT2Config` (as a dict) for `cfg`; `bos_id` (default: `eot_id`) is what
    generation without a prompt starts from."""
    check_gpt2_compatible(cfg)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context,
        "n_ctx": cfg.context,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.ff_width,
        "activation_function": ACTIVATIONS[cfg.mlp],
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "tie_word_embeddings": cfg.tie_weights,
        "bos_token_id": eot_id if bos_id is None else bos_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
    }


def model_config_from_gpt2(config: dict[str, Any], origin: str = "config.json") -> ModelConfig:
    """The tinylm ModelConfig of a transformers GPT-2 config dict (ConfigError naming the field)."""
    model_type = config.get("model_type")
    if model_type != "gpt2":
        raise ConfigError(f"{origin}: model_type is {model_type!r}; only GPT-2 models (model_type 'gpt2') "
                          "can be imported")
    f = Fields(config, origin)  # typed reads: `"n_layer": true` is no integer
    activation = f.str("activation_function", "gelu_new")
    if activation not in IMPORT_ACTIVATIONS:
        raise ConfigError(f"{origin}: activation_function {activation!r} has no tinylm equivalent "
                          f"(supported: {', '.join(IMPORT_ACTIVATIONS)})")
    eps = f.float("layer_norm_epsilon", LAYER_NORM_EPS)
    for name, ok in (("scale_attn_by_inverse_layer_idx", False), ("scale_attn_weights", True)):
        if f.bool(name, ok) != ok:
            raise ConfigError(f"{origin}: {name} = {config[name]} has no tinylm equivalent")
    d_model = f.int("n_embd")
    dropout = f.float("resid_pdrop", 0.0)
    cfg = ModelConfig(vocab_size=f.int("vocab_size"), context=f.int("n_positions"),
                      n_layer=f.int("n_layer"), n_head=f.int("n_head"), d_model=d_model,
                      d_ff=f.int("n_inner", 0) or 4 * d_model, mlp=IMPORT_ACTIVATIONS[activation],
                      pos="learned", norm="layernorm", norm_position="pre", dropout=dropout if dropout < 1 else 0.0,
                      bias=True, tie_weights=f.bool("tie_word_embeddings", True), norm_eps=eps)
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{origin}: {e}") from None
    return cfg


def to_gpt2_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel tensors (float, contiguous, on the CPU) of a tinylm GPT."""
    cfg: ModelConfig = model.cfg
    check_gpt2_compatible(cfg)
    src = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    out = {"transformer.wte.weight": src["tok_emb.weight"], "transformer.wpe.weight": src["pos_emb.weight"]}

    def linear_or_norm(ours: str, theirs: str, conv: bool) -> None:
        weight = src[f"{ours}.weight"]
        out[f"{theirs}.weight"] = weight.t() if conv else weight
        rows = weight.shape[0]
        out[f"{theirs}.bias"] = src.get(f"{ours}.bias", torch.zeros(rows, dtype=weight.dtype))

    for i in range(cfg.n_layer):
        for ours, theirs, conv in _BLOCK:
            linear_or_norm(f"blocks.{i}.{ours}", f"transformer.h.{i}.{theirs}", conv)
    linear_or_norm("ln_f", "transformer.ln_f", False)
    if not cfg.tie_weights:
        out["lm_head.weight"] = src["head.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def from_gpt2_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """tinylm GPT tensors (the names `run.weights.weights_state` uses) from GPT2LMHeadModel (or
    GPT2Model, without the `transformer.` prefix) tensors. Raises KeyError for a missing tensor."""
    if not any(k.startswith("transformer.") for k in state):
        state = {f"transformer.{k}": v for k, v in state.items()}
        state.pop("transformer.lm_head.weight", None)

    def get(name: str) -> torch.Tensor:
        if name not in state:
            raise KeyError(name)
        return state[name]

    out = {"tok_emb.weight": get("transformer.wte.weight"), "pos_emb.weight": get("transformer.wpe.weight")}

    def linear_or_norm(ours: str, theirs: str, conv: bool) -> None:
        weight = get(f"{theirs}.weight")
        out[f"{ours}.weight"] = weight.t() if conv else weight
        if cfg.bias:
            out[f"{ours}.bias"] = get(f"{theirs}.bias")

    for i in range(cfg.n_layer):
        for ours, theirs, conv in _BLOCK:
            linear_or_norm(f"blocks.{i}.{ours}", f"transformer.h.{i}.{theirs}", conv)
    linear_or_norm("ln_f", "transformer.ln_f", False)
    if not cfg.tie_weights:
        out["head.weight"] = get("lm_head.weight")
    return {k: v.float().contiguous().clone() for k, v in out.items()}
