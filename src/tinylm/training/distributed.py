"""Several processes through torchrun and PyTorch DistributedDataParallel (DDP).

`torchrun --nproc_per_node=N -m tinylm train ...` starts N copies of the trainer with RANK,
LOCAL_RANK and WORLD_SIZE in the environment. Each joins a process group (NCCL on CUDA GPUs,
gloo on the CPU), takes GPU `cuda:LOCAL_RANK` (or its share of the CPU cores), and wraps the
model in DDP, which averages gradients across processes during backward. Data: every process
draws the same global batch from the same seeded sampler and keeps its own slice of it, so
the batches do not depend on the number of processes (data/loader.py). Only rank 0 writes files
(the run directory, prepared data, caches) and prints; the others only read what rank 0 wrote and
decided (`broadcast_object`, e.g. the data directory) and follow its clock and stop decisions (`sync_clock`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from tinylm.errors import ConfigError


@dataclass(frozen=True)
class Procs:
    """Where this process stands among the processes of the run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def from_environment() -> Procs:
    """The torchrun variables, or a single process when they are absent."""
    env = os.environ
    if "RANK" not in env or int(env.get("WORLD_SIZE", "1")) <= 1:
        return Procs()
    return Procs(int(env["RANK"]), int(env.get("LOCAL_RANK", "0")), int(env["WORLD_SIZE"]),
                 int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))


def start(procs: Procs, device: torch.device) -> torch.device:
    """Join the process group; returns this process's device (cuda:LOCAL_RANK on GPUs)."""
    if not procs.distributed:
        return device
    if device.type == "mps":
        raise ConfigError("several processes on Apple MPS are not supported; run one process, or --device cpu")
    if device.type == "cuda":
        if torch.cuda.device_count() < procs.local_world_size:
            raise ConfigError(f"torchrun started {procs.local_world_size} processes on this machine but it has "
                              f"{torch.cuda.device_count()} CUDA GPUs; use --nproc_per_node="
                              f"{torch.cuda.device_count()} (or --device cpu)")
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        _join(procs, "nccl" if device.type == "cuda" else "gloo")
    return device


_groups_joined = 0  # process groups this process has joined (each train() call joins one and leaves it)


def _join(procs: Procs, backend: str) -> None:
    """Join a process group through torchrun's store, under a prefix of its own for each group this
    process joins: a second train() in the same processes (a script that trains, then resumes or
    fine-tunes) would otherwise read the first group's addresses, left in the store, and fail to connect."""
    global _groups_joined
    _groups_joined += 1
    timeout = timedelta(minutes=30)
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    dist.init_process_group(backend, store=dist.PrefixStore(f"tinylm-{_groups_joined}", store), rank=rank,
                            world_size=world_size, timeout=timeout)


def stop(together: bool = False) -> None:
    """Tear the process group down; with `together` (a normal end) after a barrier, so that no
    process destroys its gloo/NCCL connections while a peer still uses them (a rank that left
    early was seen to abort with "terminate called without an active exception")."""
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def sync_clock(procs: Procs, elapsed: float, stop_requested: bool, device: torch.device) -> tuple[float, bool]:
    """Rank 0's clock and Ctrl-C on every process (one small all-reduce per step), so that all
    of them take the same learning rate and stop at the same step."""
    if not procs.distributed:
        return elapsed, stop_requested
    main = 1.0 if procs.main else 0.0
    values = torch.tensor([main * elapsed, main * float(stop_requested)], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    elapsed0, stop0 = values.tolist()
    return elapsed0, stop0 > 0


def gather_objects(procs: Procs, obj: Any) -> list[Any]:
    """`obj` of every process, in rank order (a one-element list for a single process)."""
    if not procs.distributed:
        return [obj]
    out: list[Any] = [None] * procs.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(procs: Procs, obj: Any) -> Any:
    """Rank 0's `obj` in every process (what rank 0 decided, e.g. the data directory it prepared)."""
    if not procs.distributed:
        return obj
    box = [obj if procs.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(procs: Procs, values: list[float], device: torch.device) -> list[float]:
    """Sum `values` over the processes (e.g. loss totals of each process's share of windows)."""
    if not procs.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(procs: Procs) -> None:
    if procs.distributed:
        dist.barrier()


def cpu_threads(procs: Procs, requested: int = 0) -> int:
    """Threads per process: `requested`, else this machine's cores shared among its processes."""
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // procs.local_world_size)
