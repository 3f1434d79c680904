"""Inference precision, int8 weight-only quantization, CPU decode kernels and the compiled decode step.

    load(run, dtype=, quantize=, compile=) ─► prepare(model, device, dtype, quantize)
        GPUs: the whole model cast to `dtype` (bfloat16 / float16 weights and activations)
        CPUs: weight-only: the linear layers' weights cast to `dtype` (an output layer tied to the
              embedding gets its own copy), everything else, activations and the KV cache float32
        quantize="int8": torchao's int8 weight-only quantization of every linear layer
                         (`quantize_(model, Int8WeightOnlyConfig())`: symmetric, one scale per output row)
    first generation ─► pack_for_decoding(model)   (CPU only; a no-op elsewhere)
        decoding reads every weight once per token (a matrix-vector product per layer), so the
        layout and kernel of each linear layer decide the speed; every module keeps its class,
        name and parameters (LoRA wrappers and state dicts see nn.Linear as before):
          float32   weights stored column-major, so x @ W^T runs as MKL's non-transposed product
                    (2-3x faster than the row-major one on the AMD EPYC CPUs we measured)
          bfloat16  a copy prepacked for oneDNN (`mkldnn::_linear_pointwise`, what inductor's
                    freezing uses), instead of a reorder of the whole weight at every call;
                    input rounded to bfloat16, output and bias added in float32
          int8      `aten::_weight_int8pack_mm` on torchao's int8 data and scales (what inductor
                    lowers torchao's int8 linear to), input rounded to bfloat16, output float32
    compile ─► DecodeStep: torch.compile of the one-token decode step over a static per-row KV cache
        (`model.new_cache(..., static=True)`: fixed shapes, no host reads), CUDA graphs on GPUs
        (mode "reduce-overhead"); registered for the model, so `generate_ids`, `stream_ids`, beam
        search and the server decode through it. Its first call compiles (the warm-up, reported);
        it is "auto" = on for CUDA GPUs and off on CPUs, where the eager kernels above are as fast
        (measured: within +-5%) and the warm-up takes 10 s to a minute.

Why weight-only on CPUs: decoding is bound by reading the weights, so halving (bfloat16) or
quartering (int8) their bytes is what pays; float32 activations keep the residual stream, norms,
attention and softmax as exact as before (what bfloat16 autocast did), and CPU attention over a
handful of positions is faster in float32 than in bfloat16. The precision of `auto`: bfloat16 on
CUDA GPUs that support it (float16 on older ones) and on CPUs with native bfloat16 (AVX512-BF16 or
AMX), float32 elsewhere (`runtime.resolve_dtype`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from typing import Callable

import torch
import torch.nn as nn

from tinylm.config import COMPILE, QUANTIZE
from tinylm.errors import ConfigError
from tinylm.runtime import resolve_dtype


# --------------------------------------------------------------------------- precision and quantization


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


def _is_model_linear(module: nn.Module, name: str) -> bool:
    """The model's own linear layers (an nn.Linear, also inside a wrapper), not LoRA's small
    adapter matrices (named lora_*), which stay in the inference dtype."""
    return type(module) in (nn.Linear, PackedLinear) and not name.rsplit(".", 1)[-1].startswith("lora")


def prepare(model: nn.Module, device: torch.device, dtype: torch.dtype, quantize: str = "none") -> nn.Module:
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
                if _is_model_linear(module, name) and not is_quantized(module.weight):
                    module.weight.data = module.weight.data.to(dtype)
                    module.__class__ = PackedLinear
    if quantize == "int8":
        quantize_, Int8WeightOnlyConfig = _torchao()
        # set_inductor_config=False: leave the process's torch.compile settings as they are
        quantize_(model, Int8WeightOnlyConfig(set_inductor_config=False),
                  filter_fn=lambda m, name: _is_model_linear(m, name) and not is_quantized(m.weight))
    model.inference_dtype = dtype
    return model


def adapter_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype of LoRA matrices added to a model `prepare` made: its activations' (float32 on CPUs,
    where the precision is weight-only; `dtype` elsewhere), as `prepare` leaves those it found."""
    return torch.float32 if device.type == "cpu" else dtype


def is_quantized(weight: torch.Tensor) -> bool:
    """Whether `weight` is a torchao int8 tensor (int8 data `qdata` and per-row scales `scale`)."""
    return hasattr(weight, "qdata") and hasattr(weight, "scale")


def weights_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model computes in (its token embedding's; quantized linears compute in it too)."""
    emb = getattr(model, "tok_emb", None)
    return emb.weight.dtype if emb is not None else next(model.parameters()).dtype


# --------------------------------------------------------------------------- CPU decode kernels


class PackedLinear(nn.Linear):
    """An nn.Linear with a bfloat16 weight whose forward runs oneDNN's matrix product on a copy of
    the weight prepacked for it (`mkldnn::_reorder_linear_weight`, what inductor's freezing does),
    instead of a reorder of the whole weight at every call; a float32 input is rounded to bfloat16
    for the product, and the output and bias are added in the input's dtype. Same parameters and
    names as the nn.Linear it was (`prepare` changes the class of the module in place); the copy
    is made at the first call and rebuilt when the weight changes in place (e.g. an adapter merged
    into it). Under torch.compile, or where oneDNN has no bfloat16, it is a plain product."""

    packed: torch.Tensor | bool | None = None
    packed_version = -1

    def _repack(self) -> None:
        try:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 1)
        except (RuntimeError, AttributeError):  # no oneDNN bfloat16 here: the plain product
            self.packed = False
        self.packed_version = self.weight._version

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # inductor prepacks for itself
            return nn.functional.linear(x, self.weight)
        if self.weight._version != self.packed_version:
            self._repack()
        if self.packed is False:
            return nn.functional.linear(x, self.weight)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._product(x.to(torch.bfloat16)).to(x.dtype)
        return y if self.bias is None else y + self.bias


class Int8PackedLinear(PackedLinear):
    """A linear layer with a torchao int8 weight (one scale per output row) computed by
    `aten::_weight_int8pack_mm` (int8 weights, bfloat16 activations: what inductor lowers
    torchao's int8 linear to) on the tensor's own data and scales."""

    def _repack(self) -> None:
        weight = self.weight
        self.qdata = weight.qdata.contiguous()
        self.qscale = weight.scale.reshape(-1).to(torch.bfloat16).contiguous()

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        y = torch._weight_int8pack_mm(x.reshape(-1, x.size(-1)), self.qdata, self.qscale)
        return y.view(*x.shape[:-1], self.qdata.size(0))


def _pack(linear: nn.Linear) -> str:
    """Give one CPU linear layer its decode kernel; returns what it got."""
    weight = linear.weight
    if is_quantized(weight):
        if weight.qdata.dim() != 2 or weight.scale.numel() != weight.qdata.size(0):
            return "torchao"  # per-tensor or grouped scales: torchao's own computation
        linear.__class__ = Int8PackedLinear
        linear._repack()
        return "int8"
    if weight.dtype == torch.float32:
        if weight.stride() != (1, weight.size(0)):  # column-major: x @ W^T is a plain product
            weight.data = weight.data.t().contiguous().t()
        return "float32"
    if weight.dtype == torch.bfloat16:
        linear.__class__ = PackedLinear
        linear._repack()
        return "bfloat16" if linear.packed is not False else "plain"
    return "plain"


def pack_for_decoding(model: nn.Module) -> dict[str, int]:
    """Give every linear layer of a CPU model the decode kernel for its weight (see the module
    docstring); a no-op on other devices. Idempotent. Returns how many layers got which kernel."""
    done: dict[str, int] = {}
    for name, module in model.named_modules():
        if type(module) in (nn.Linear, PackedLinear) and _is_model_linear(module, name) \
                and module.weight.device.type == "cpu":
            kind = _pack(module)
            done[kind] = done.get(kind, 0) + 1
    return done


# --------------------------------------------------------------------------- the compiled decode step


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


_STEPS: weakref.WeakKeyDictionary[nn.Module, DecodeStep] = weakref.WeakKeyDictionary()


def weights_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def use_compile(setting: str | bool, device: torch.device) -> bool:
    """Whether `compile` = auto | on | off compiles the decode step on `device` (auto: CUDA only);
    True and False are on and off."""
    if isinstance(setting, bool):
        return setting
    if setting not in COMPILE:
        raise ConfigError(f"unknown compile setting {setting!r}; use auto, on or off")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def enable_compile(model: nn.Module, on_warmup: Callable[[float], None] | None = None) -> DecodeStep:
    """Register a compiled decode step for `model` (compiled at its first call): every decoder that
    uses the KV cache decodes through it from now on. Returns it (its `warmup_s` tells the warm-up)."""
    if model not in _STEPS:
        _STEPS[model] = DecodeStep(model, on_warmup)
    return _STEPS[model]


def disable_compile(model: nn.Module) -> None:
    _STEPS.pop(model, None)


def compiled_step(model: nn.Module) -> DecodeStep | None:
    """The model's registered compiled decode step, or None (eager decoding)."""
    return _STEPS.get(model)


def autocast_for(model: nn.Module, device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` for a model whose weights are another dtype (a float32 model run in
    bfloat16); nothing for a model prepared for inference (`prepare`) or already in `dtype`."""
    from tinylm.runtime import autocast

    if getattr(model, "inference_dtype", None) is not None or dtype == weights_dtype(model):
        return contextlib.nullcontext()
    return autocast(device, dtype)


def linear_params(model: nn.Module) -> int:
    """Weights of the model's linear layers (the tied output layer counts: decoding reads it)."""
    return sum(m.weight.numel() for name, m in model.named_modules() if _is_model_linear(m, name))


def linear_kernel_names(model: nn.Module) -> list[str]:
    """What computes each linear layer (for reports): packed int8 / bfloat16, torchao, or plain."""
    out = []
    for _, m in model.named_modules():
        if isinstance(m, nn.Linear):
            if isinstance(m, PackedLinear):
                out.append("int8pack" if isinstance(m, Int8PackedLinear) else "onednn-bf16")
            elif is_quantized(m.weight):
                out.append("torchao-int8")
            else:
                out.append(f"{str(m.weight.dtype).removeprefix('torch.')}"
                           f"{'-colmajor' if m.weight.dim() == 2 and m.weight.stride(0) == 1 else ''}")
    return out


