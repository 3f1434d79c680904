"""CPU decode kernels: what computes each linear layer when one token per row is decoded.

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

`precision.to_inference` gives bfloat16 weights the `PackedLinear` class; `is_model_linear` tells the model's
own linear layers from LoRA's small adapter matrices.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def is_quantized(weight: torch.Tensor) -> bool:
    """Whether `weight` is a torchao int8 tensor (int8 data `qdata` and per-row scales `scale`)."""
    return hasattr(weight, "qdata") and hasattr(weight, "scale")


def is_model_linear(module: nn.Module, name: str) -> bool:
    """The model's own linear layers (an nn.Linear, also inside a wrapper), not LoRA's small
    adapter matrices (named lora_*), which stay in the inference dtype."""
    return type(module) in (nn.Linear, PackedLinear) and not name.rsplit(".", 1)[-1].startswith("lora")


class PackedLinear(nn.Linear):
    """An nn.Linear with a bfloat16 weight whose forward runs oneDNN's matrix product on a copy of
    the weight prepacked for it (`mkldnn::_reorder_linear_weight`, what inductor's freezing does),
    instead of a reorder of the whole weight at every call; a float32 input is rounded to bfloat16
    for the product, and the output and bias are added in the input's dtype. Same parameters and
    names as the nn.Linear it was (`precision.to_inference` changes the class of the module in place); the copy
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
        if type(module) in (nn.Linear, PackedLinear) and is_model_linear(module, name) \
                and module.weight.device.type == "cpu":
            kind = _pack(module)
            done[kind] = done.get(kind, 0) + 1
    return done


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


