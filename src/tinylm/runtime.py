"""Devices and numeric precision.

`auto` picks CUDA, then Apple's MPS, then the CPU. Autocast precision `auto` means bfloat16 on
CUDA GPUs that support it (float16 on older ones) and on CPUs with native bfloat16 matrix
units (AMX or AVX512-BF16, where it runs several times faster than float32), float32 elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from functools import lru_cache
from pathlib import Path

import torch

from tinylm.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but no CUDA GPU is available; "
                          "use --device cpu (or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' was asked for but Apple MPS is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bfloat16 matrices natively (Intel AMX or AVX512-BF16)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None:
            with contextlib.suppress(Exception):
                if fn():
                    return True
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
        return " amx_bf16" in flags or " avx512_bf16" in flags
    return False


@lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """True when the CPU has Intel AMX tile units (Sapphire Rapids and later Xeons): torch's probe, else
    the amx_tile / amx_int8 flags in /proc/cpuinfo."""
    fn = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if fn is not None:
        with contextlib.suppress(Exception):
            if fn():
                return True
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
        return " amx_tile" in flags or " amx_int8" in flags
    return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast precision for `name` on `device` (float32 means no autocast)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise ConfigError("float16 autocast is for CUDA GPUs; on the CPU use bfloat16 or float32")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed-precision context for forward passes (a no-op for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def weights_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the model computes in (its token embedding's; quantized linears compute in it too)."""
    emb = getattr(model, "tok_emb", None)
    return emb.weight.dtype if emb is not None else next(model.parameters()).dtype


def autocast_for(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` for a model whose weights are another dtype (a float32 model run in bfloat16);
    nothing for a model prepared for inference (`tinylm.generation.precision.to_inference`: its weights are
    already what it computes in) or already in `dtype`."""
    if getattr(model, "inference_dtype", None) is not None or dtype == weights_dtype(model):
        return contextlib.nullcontext()
    return autocast(device, dtype)


def memory_bytes(device: torch.device) -> int | None:
    """The device's whole memory in bytes (the machine's RAM for the CPU), or None where unknown."""
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
        if device.type == "mps":
            return int(torch.mps.recommended_max_memory())
        if device.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError, RuntimeError):
        pass
    return None


def check_memory(need: int, device: torch.device, what: str, fix: str) -> None:
    """A one-line ConfigError when `need` bytes (a lower bound: what is certainly allocated) exceed
    the device's whole memory, so impossible sizes fail before the allocation does (or before the
    operating system kills the process)."""
    have = memory_bytes(device)
    if have is not None and need > have:
        raise ConfigError(f"{what} need at least {need / 2**30:,.1f} GiB, more than this {device.type} device has "
                          f"({have / 2**30:,.1f} GiB); {fix}")


# Dense bf16/fp16 tensor-core peaks (FLOP/s) of common GPUs, for model FLOPs utilisation (MFU).
_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
               "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12}


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of square `n` x `n` matrix products in `dtype` on `device`, measured for ~`seconds`."""
    # fixed values, not torch.randn: drawing from the global generator here (the first run on a machine
    # measures, later ones read the cache) would change a training run's dropout masks
    a = torch.linspace(-1.0, 1.0, n * n, device=device).reshape(n, n).to(dtype)
    b = a.flip(0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    for _ in range(2):  # warm up kernels and thread pools
        a @ b
    sync()
    start, runs = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - start) < seconds or runs < 3:
        a @ b
        runs += 1
        if runs % 4 == 0 or elapsed >= seconds:
            sync()
    sync()
    return 2 * n**3 * runs / (time.perf_counter() - start)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_peak_flops(dtype: torch.dtype) -> float:
    """This CPU's measured matrix-product FLOP/s at the current thread count, cached in the tinylm
    cache (peak_flops.json) per CPU model, thread count and dtype, so it is measured once."""
    from tinylm.fileio import cache_root, write_text

    path = cache_root() / "peak_flops.json"
    key = f"{_cpu_name()}|{torch.get_num_threads()} threads|{str(dtype).removeprefix('torch.')}"
    known: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(path.read_text())
    if key not in known:
        known[key] = measure_matmul_flops(torch.device("cpu"), dtype)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, json.dumps(known, indent=1))
    return known[key]


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak FLOP/s for `dtype`, the denominator of MFU: the table's dense tensor-core
    peak for known CUDA GPUs, the measured matrix-product rate on CPUs, else None."""
    if device.type == "cpu":
        return cpu_peak_flops(dtype)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in _PEAK_FLOPS.items() if k in name), None)
    return peak if dtype in (torch.bfloat16, torch.float16) else None  # float32: no single meaningful peak
