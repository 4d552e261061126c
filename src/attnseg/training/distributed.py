"""torchrun / DDP helpers: ``torchrun --nproc_per_node=N -m attnseg.cli.main train ...`` runs the same command on N
processes (gloo on CPU, NCCL on CUDA). Batch size is per process; rank 0 logs and writes checkpoints."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "is_main", "world_size", "rank", "gather_objects"]


def init_distributed(device: torch.device) -> bool:
    """Join the process group when launched by torchrun; returns True under DDP."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (in rank order), on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
