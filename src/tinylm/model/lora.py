"""LoRA: low-rank adapters on a frozen GPT (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models"; the layout follows Hugging Face PEFT's `lora.Linear`).

    add_lora(model, cfg, name)     wraps the target nn.Linear layers in LoRALinear (once) and adds the
                                   adapter `name` to each: A (r x in, Kaiming-uniform), B (out x r, zeros)
    LoRALinear.forward(x)          base(x) + (alpha / r) * B A dropout(x)   for the active adapter(s)
    set_active(model, adapters)    None (base only) | a name (the whole batch) | one name or None per row
    adapters_disabled(model)       a context in which every layer applies no adapter (the base model), then
                                   the previous choice again: DPO's reference model without a second copy
    adapter_state / load_adapter_state      the adapter's tensors by layer name (`<layer>.lora_A`, `.lora_B`)
    merge_lora(model, name)        W <- W + (alpha / r) B A, the adapter removed; layers left without
                                   adapters become plain nn.Linear again (so the state dict is a base run's)

B starts at zero, so a fresh adapter leaves the model's output unchanged. Several adapters can live
on one model: the generation engine decodes rows for different adapters in one batch by passing one
adapter name (or None) per batch row to `set_active`.

Target layers have short names (`TARGETS`): qkv (attention's fused q, k, v projection), proj
(attention output), fc (MLP input; SwiGLU's gate and up), mlp_proj (MLP output) and head (the
output layer; with tied embeddings only the head's use of the matrix is adapted). A tied head
keeps sharing its matrix with the embedding until `merge_lora` folds an adapter into it, which
unties the two (the merged model then has `tie_weights = False`).
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinylm.config import LORA_TARGETS, LoRAConfig
from tinylm.errors import CheckpointError, ConfigError

TARGETS: dict[str, str] = {"qkv": "attn.qkv", "proj": "attn.proj", "fc": "mlp.fc", "mlp_proj": "mlp.proj",
                           "head": "head"}
assert tuple(TARGETS) == LORA_TARGETS
A_SUFFIX, B_SUFFIX = "lora_A", "lora_B"


def check_name(name: object) -> None:
    """A one-line ConfigError unless `name` can name an adapter: it is a key of each layer's parameter
    and module dicts, so torch refuses an empty name, a dot and its dicts' own attribute names."""
    ok = isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_-]+", name) is not None
    if not ok or hasattr(nn.ParameterDict(), name) or hasattr(nn.ModuleDict(), name):
        raise ConfigError(f"{name!r} cannot name a LoRA adapter: use letters, digits, '_' and '-' (e.g. "
                          "'poet_v2'), other than the names of torch's ParameterDict and ModuleDict methods")


class LoRALinear(nn.Module):
    """An nn.Linear (`.base`, frozen by `add_lora`) with named low-rank adapters.

    forward(x): x (..., in_features) -> (..., out_features) = base(x) + sum over the active adapter of
    scale * dropout(x) @ A.T @ B.T, where A is (r, in_features), B is (out_features, r), scale = alpha / r.
    `active` is None (base only), an adapter name, or a list of names (or None) with one entry per
    row of the batch (dimension 0 of x)."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()
        self.scale: dict[str, float] = {}
        self.active: str | list[str | None] | None = None

    # the wrapped layer's attributes, so code that reads `layer.weight` keeps working
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def adapters(self) -> list[str]:
        return list(self.lora_A.keys())

    def add(self, name: str, r: int, alpha: float, dropout: float, dtype: torch.dtype | None = None) -> None:
        """A new adapter: A Kaiming-uniform (a = sqrt(5), as nn.Linear and PEFT), B zeros; in `dtype`
        (default: the base weight's; an inference model gives its activations' dtype, see
        `tinylm.generation.precision.adapter_dtype`)."""
        check_name(name)
        if name in self.lora_A:
            raise ConfigError(f"the model already has an adapter named {name!r}")
        weight = self.base.weight
        dtype = dtype or weight.dtype
        a = torch.empty(r, self.in_features, device=weight.device, dtype=dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_A[name] = nn.Parameter(a)
        self.lora_B[name] = nn.Parameter(torch.zeros(self.out_features, r, device=weight.device, dtype=dtype))
        self.lora_dropout[name] = (nn.Dropout(dropout) if dropout > 0 else nn.Identity()).train(self.training)
        self.scale[name] = alpha / r

    def remove(self, name: str) -> None:
        for container in (self.lora_A, self.lora_B, self.lora_dropout):
            del container[name]
        del self.scale[name]
        if self.active == name:
            self.active = None
        elif isinstance(self.active, list):
            self.active = [None if a == name else a for a in self.active]

    def delta_weight(self, name: str) -> torch.Tensor:
        """scale * B A: the (out, in) matrix the adapter adds to the base weight."""
        return self.scale[name] * (self.lora_B[name] @ self.lora_A[name])

    def _delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(self.lora_dropout[name](x), self.lora_A[name]), self.lora_B[name]) * self.scale[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        active = self.active
        if active is None:
            return y
        if isinstance(active, str):
            if active not in self.lora_A:  # this adapter does not touch this layer
                return y
            return y + self._delta(active, x).to(y.dtype)
        if len(active) != x.shape[0]:
            raise ValueError(f"set_active got {len(active)} adapter names for a batch of {x.shape[0]} rows")
        out = y.clone()
        for name in dict.fromkeys(a for a in active if a is not None and a in self.lora_A):
            rows = torch.tensor([i for i, a in enumerate(active) if a == name], device=x.device)
            out[rows] = y[rows] + self._delta(name, x[rows]).to(y.dtype)
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: r={self.lora_A[n].shape[0]}, scale={self.scale[n]:g}" for n in self.adapters)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's LoRA-wrapped layers by module name (e.g. "blocks.0.attn.qkv")."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_names(model: nn.Module) -> list[str]:
    """The adapters present on the model, in the order they were added."""
    names: dict[str, None] = {}
    for layer in lora_layers(model).values():
        names.update(dict.fromkeys(layer.adapters))
    return list(names)


def target_modules(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Module names of the model's layers called `targets` (short names, see TARGETS)."""
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ConfigError(f"lora.targets: the model has no layer {unknown[0]!r}; choose from {', '.join(TARGETS)}")
    suffixes = {TARGETS[t] for t in targets}
    names = [name for name, m in model.named_modules()
             if isinstance(m, (nn.Linear, LoRALinear)) and not name.endswith(".base")
             and any(name == s or name.endswith("." + s) for s in suffixes)]
    found = {s for s in suffixes if any(n == s or n.endswith("." + s) for n in names)}
    missing = [t for t in targets if TARGETS[t] not in found]
    if missing:
        raise ConfigError(f"lora.targets: this model has no {missing[0]!r} layer; choose from the layers it has")
    return names


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def add_lora(model: nn.Module, lora_cfg: LoRAConfig, name: str = "default",
             dtype: torch.dtype | None = None) -> list[str]:
    """Add adapter `name` with `lora_cfg`'s rank, alpha, dropout and targets to `model`, wrapping the
    target nn.Linear layers in LoRALinear (once); freezes every base parameter except biases /
    norm weights when lora_cfg.train_biases / train_norms ask for them. Returns the adapted layers'
    names. The adapter's A matrices draw from torch's global RNG (seed it first for reproducibility);
    `dtype` as in `LoRALinear.add`."""
    check_name(name)  # before any layer is wrapped
    lora_cfg.validate()
    names = target_modules(model, lora_cfg.target_list)
    for param in model.parameters():
        param.requires_grad_(False)
    for module_name in names:
        layer = model.get_submodule(module_name)
        if not isinstance(layer, LoRALinear):
            layer = LoRALinear(layer).train(layer.training)  # the model's mode (a new module is in training)
            _set_module(model, module_name, layer)
        layer.add(name, lora_cfg.r, lora_cfg.alpha, lora_cfg.dropout, dtype)
    for param_name in extra_trainable(model, lora_cfg):
        model.get_parameter(param_name).requires_grad_(True)
    return names


def extra_trainable(model: nn.Module, lora_cfg: LoRAConfig) -> list[str]:
    """Base parameters an adapter also trains (biases and/or norm weights when asked), by their
    name in a plain model (no `.base`)."""
    names = []
    for name, module in model.named_modules():
        is_norm = isinstance(module, (nn.LayerNorm, nn.RMSNorm))
        for pname, p in module.named_parameters(recurse=False):
            if (lora_cfg.train_norms and is_norm) or (lora_cfg.train_biases and pname == "bias"):
                names.append(plain_name(f"{name}.{pname}" if name else pname))
    return sorted(set(names))


def plain_name(name: str) -> str:
    """A parameter's name in the unwrapped model: "blocks.0.attn.qkv.base.weight" -> "blocks.0.attn.qkv.weight"."""
    return name.replace(".base.", ".")


def set_active(model: nn.Module, adapters: str | Sequence[str | None] | None) -> None:
    """Choose the adapters every LoRA layer applies: None (the base model alone), one name for the
    whole batch, or one name (or None) per batch row. A name the model does not have is a ConfigError."""
    known = set(adapter_names(model))
    wanted = [adapters] if isinstance(adapters, str) else list(adapters or [])
    unknown = sorted({a for a in wanted if a is not None and a not in known})
    if unknown:
        raise ConfigError(f"the model has no adapter {unknown[0]!r} (it has: {', '.join(sorted(known)) or 'none'})")
    value = adapters if adapters is None or isinstance(adapters, str) else list(adapters)
    for layer in lora_layers(model).values():
        layer.active = value


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, `model` computes as its base alone (every LoRA layer's `active` is None); on exit
    each layer gets back the adapters it had active. The reference model of LoRA preference tuning: the
    frozen base, with no second copy of its weights. Base parameters an adapter also trains (biases,
    norms) stay as they are: they are part of the model, not of an adapter's low-rank update."""
    layers = lora_layers(model)
    saved = {name: layer.active for name, layer in layers.items()}
    for layer in layers.values():
        layer.active = None
    try:
        yield model
    finally:
        for name, layer in layers.items():
            layer.active = saved[name]


def adapter_state(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """The tensors of adapter `name`: "<layer>.lora_A" (r, in) and "<layer>.lora_B" (out, r) for each
    adapted layer, detached CPU copies."""
    state = {}
    for layer_name, layer in lora_layers(model).items():
        if name in layer.lora_A:
            state[f"{layer_name}.{A_SUFFIX}"] = layer.lora_A[name].detach().to("cpu").contiguous().clone()
            state[f"{layer_name}.{B_SUFFIX}"] = layer.lora_B[name].detach().to("cpu").contiguous().clone()
    if not state:
        raise ConfigError(f"the model has no adapter {name!r}")
    return state


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor], name: str = "default",
                       origin: str = "adapter") -> None:
    """Copy `adapter_state`-shaped tensors into adapter `name` (which `add_lora` created), checking that
    every adapted layer gets both matrices with the right shapes (CheckpointError naming `origin`)."""
    layers = {ln: layer for ln, layer in lora_layers(model).items() if name in layer.lora_A}
    expected = {f"{ln}.{s}" for ln in layers for s in (A_SUFFIX, B_SUFFIX)}
    lora_keys = {k for k in state if k.endswith((f".{A_SUFFIX}", f".{B_SUFFIX}"))}
    missing, unexpected = sorted(expected - lora_keys), sorted(lora_keys - expected)
    if missing or unexpected:
        raise CheckpointError(f"{origin} does not fit the run's lora settings (missing: {missing[:3]}, "
                              f"unexpected: {unexpected[:3]})")
    with torch.no_grad():
        for ln, layer in layers.items():
            for suffix, params in ((A_SUFFIX, layer.lora_A), (B_SUFFIX, layer.lora_B)):
                tensor, param = state[f"{ln}.{suffix}"], params[name]
                if tuple(tensor.shape) != tuple(param.shape):
                    raise CheckpointError(f"{origin}: {ln}.{suffix} has shape {tuple(tensor.shape)}, the run's "
                                          f"lora settings expect {tuple(param.shape)}")
                param.copy_(tensor)


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under a plain model's names, without any adapter tensors."""
    return {plain_name(k): v for k, v in model.state_dict().items()
            if f".{A_SUFFIX}." not in k and f".{B_SUFFIX}." not in k}


@torch.no_grad()
def merge_lora(model: nn.Module, name: str = "default") -> nn.Module:
    """Fold adapter `name` into the base weights (W += (alpha / r) B A) and remove it; layers left with
    no adapter become plain nn.Linear again. A tied head that gets an adapter is untied first (its
    own copy of the embedding matrix; `model.cfg.tie_weights` becomes False). Returns the model."""
    layers = {ln: layer for ln, layer in lora_layers(model).items() if name in layer.lora_A}
    if not layers:
        raise ConfigError(f"the model has no adapter {name!r} to merge")
    for layer_name, layer in layers.items():
        base = layer.base
        if layer_name == "head" and getattr(model, "cfg", None) is not None and model.cfg.tie_weights:
            base.weight = nn.Parameter(base.weight.detach().clone(), requires_grad=False)
            model.cfg.tie_weights = False
        base.weight += layer.delta_weight(name).to(base.weight.dtype)
        layer.remove(name)
        if not layer.adapters:
            _set_module(model, layer_name, base)
    return model

