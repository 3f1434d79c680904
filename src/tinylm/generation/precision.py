"""Inference precision and int8 weight-only quantization: the weights a loaded run decodes with.

    load(run, dtype=, quantize=, compile=) ─► resolve(device, dtype, quantize) ─► to_inference(model, device,
                                                                                   dtype, quantize)
        GPUs: the whole model cast to `dtype` (bfloat16 / float16 weights and activations)
        CPUs: weight-only: the linear layers' weights cast to `dtype` (an output layer tied to the
              embedding gets its own copy), everything else, activations and the KV cache float32
        quantize="int8": torchao's int8 weight-only quantization of every linear layer
                         (`quantize_(model, Int8WeightOnlyConfig())`: symmetric, one scale per output row)
    compile = auto | on | off ─► use_compile(setting, device): the compiled decode step (compiled.py)

Why weight-only on CPUs: decoding is bound by reading the weights, so halving (bfloat16) or
quartering (int8) their bytes is what pays; float32 activations keep the residual stream, norms,
attention and softmax as exact as before (what bfloat16 autocast did), and CPU attention over a
handful of positions is faster in float32 than in bfloat16. The precision of `auto`: bfloat16 on
CUDA GPUs that support it (float16 on older ones) and on CPUs with native bfloat16 (AVX512-BF16 or
AMX), float32 elsewhere (`runtime.resolve_dtype`). The decode kernels of each layer: kernels.py.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from tinylm.config import COMPILE, QUANTIZE
from tinylm.errors import ConfigError
from tinylm.generation.kernels import PackedLinear, is_model_linear, is_quantized
from tinylm.runtime import resolve_dtype

# On CPUs, `auto` keeps float32 for models whose linear weights take less than this in float32: they
# stay in the caches, decoding is bound by per-operation overhead, not by reading weights, and the
# bfloat16 conversions only add work (measured: the 0.93M shakespeare-char model decodes 1.5x faster
# in float32; the 30M tinystories-gpt2 one 1.35x faster with bfloat16 weights).
CPU_BFLOAT16_MIN_BYTES = 32 * 2**20


def resolve(device: torch.device, dtype: str = "auto", quantize: str = "none",
            linear_params: int | None = None) -> torch.dtype:
    """The dtype the weights (and activations) of an inference model take for `dtype` on `device`
    with `quantize`; a one-line ConfigError for what the device cannot run. `auto` is
    `runtime.resolve_dtype`'s choice, except float32 on CPUs for models with fewer than
    CPU_BFLOAT16_MIN_BYTES / 4 `linear_params` (weights of linear layers).

    int8 weight-only quantization computes in bfloat16 on CPUs (the int8 kernel's fast path; `auto`
    gives bfloat16 there even on CPUs without native bfloat16), and on CUDA in bfloat16 or float16."""
    if quantize not in QUANTIZE:
        raise ConfigError(f"unknown quantization {quantize!r}; use none or int8")
    if dtype == "float16" and device.type == "cpu":
        raise ConfigError("float16 weights are for GPUs (CPUs have no fast float16 kernels); "
                          "use --dtype bfloat16 or float32")
    resolved = resolve_dtype(dtype, device)
    if quantize == "none":
        small = linear_params is not None and 4 * linear_params < CPU_BFLOAT16_MIN_BYTES
        if dtype == "auto" and device.type == "cpu" and small:
            return torch.float32
        return resolved
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--quantize int8 runs on CPUs and CUDA GPUs, not on {device.type}; "
                          "use --device cpu, or leave out --quantize")
    if dtype == "auto" and device.type == "cpu":
        return torch.bfloat16
    if resolved == torch.float32:
        raise ConfigError("--quantize int8 computes with bfloat16 activations (float16 also on GPUs), not "
                          "float32; use --dtype bfloat16 (or auto), or leave out --quantize for float32")
    return resolved


def _torchao():
    """torchao's quantize_ and Int8WeightOnlyConfig (quiet about its optional GPU kernels)."""
    # at import it warns about CUDA-only extensions a CPU install lacks, and torch about its enums
    logs = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as e:
        raise ConfigError(f"--quantize int8 needs torchao ({e.name} is missing): "
                          "pip install 'tinylm[quantize]'") from None
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)
    return quantize_, Int8WeightOnlyConfig


def to_inference(model: nn.Module, device: torch.device, dtype: torch.dtype, quantize: str = "none") -> nn.Module:
    """Make `model` an inference model on `device` in place (eval mode): on GPUs every weight cast to
    `dtype`; on CPUs the linear layers' weights only (weight-only, see the module docstring); with
    quantize="int8" every linear layer's weight quantized by torchao (int8 weight-only, one scale per
    output channel). Records `model.inference_dtype` (the generation engine then runs it without
    autocast). Returns the model. Linear layers already quantized are left as they are."""
    if quantize not in QUANTIZE:
        raise ConfigError(f"unknown quantization {quantize!r}; use none or int8")
    model.to(device=device).eval()
    if device.type != "cpu":
        model.to(dtype=dtype)
    elif dtype != torch.float32 or quantize == "int8":
        head, emb = getattr(model, "head", None), getattr(model, "tok_emb", None)
        if head is not None and emb is not None and head.weight is emb.weight:  # the output layer's own copy
            head.weight = nn.Parameter(emb.weight.detach().clone())
        if quantize == "none":  # bfloat16 weights, float32 inputs: the packed product rounds them
            for name, module in model.named_modules():
                if is_model_linear(module, name) and not is_quantized(module.weight):
                    module.weight.data = module.weight.data.to(dtype)
                    module.__class__ = PackedLinear
    if quantize == "int8":
        quantize_, Int8WeightOnlyConfig = _torchao()
        # set_inductor_config=False: leave the process's torch.compile settings as they are
        quantize_(model, Int8WeightOnlyConfig(set_inductor_config=False),
                  filter_fn=lambda m, name: is_model_linear(m, name) and not is_quantized(m.weight))
    model.inference_dtype = dtype
    return model


def adapter_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype of LoRA matrices added to a model `to_inference` made: its activations' (float32 on CPUs,
    where the precision is weight-only; `dtype` elsewhere), as `to_inference` leaves those it found."""
    return torch.float32 if device.type == "cpu" else dtype


def linear_params(model: nn.Module) -> int:
    """Weights of the model's linear layers (the tied output layer counts: decoding reads it)."""
    return sum(m.weight.numel() for name, m in model.named_modules() if is_model_linear(m, name))


def use_compile(setting: str | bool, device: torch.device) -> bool:
    """Whether `compile` = auto | on | off compiles the decode step on `device` (auto: CUDA only);
    True and False are on and off."""
    if isinstance(setting, bool):
        return setting
    if setting not in COMPILE:
        raise ConfigError(f"unknown compile setting {setting!r}; use auto, on or off")
    return setting == "on" or (setting == "auto" and device.type == "cuda")
