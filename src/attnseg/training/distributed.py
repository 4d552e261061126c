"""torchrun / DDP helpers: ``torchrun --nproc_per_node=N -m attnseg.cli.main train ...`` runs the same command on N
processes (gloo on CPU, NCCL on CUDA). Batch size is per process; rank 0 logs and writes checkpoints. On CUDA each
process takes the GPU of its local rank (``cuda:LOCAL_RANK``)."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "init_distributed",
    "process_device",
    "is_main",
    "world_size",
    "rank",
    "gather_objects",
    "broadcast_buffers",
]


def _launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_device(device: torch.device) -> torch.device:
    """This process's device: under torchrun with more than one process, plain ``cuda`` is ``cuda:LOCAL_RANK``.

    With several processes on this node an explicit ``cuda:N`` would put them all on one GPU (NCCL refuses that),
    and a node with fewer GPUs than processes cannot give each its own: both are configuration errors.
    """
    if device.type != "cuda" or _launched_world_size() <= 1:
        return device
    from attnseg.config import ConfigError

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.index is not None:
        if local_world > 1:
            raise ConfigError(
                f"{device}: torchrun started {local_world} processes on this node and each takes the GPU of its local "
                "rank; use --device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs",
                option="device",
            )
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(
            f"torchrun started {local_world} processes on this node but it has {count} visible GPU(s); "
            f"process {local_rank} has none (one process per GPU: --nproc_per_node={count} at most)",
            option="device",
        )
    return torch.device("cuda", local_rank)


def init_distributed(device: torch.device) -> bool:
    """Join the process group when launched by torchrun; returns True under DDP.

    ``device`` is this process's device (:func:`process_device`); a CUDA device becomes the current device first,
    so NCCL and CUDA calls without an explicit index use this process's GPU. An existing group is kept as it is.
    """
    if _launched_world_size() > 1 and device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if _launched_world_size() <= 1 or dist.is_initialized():
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


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP copies rank 0's buffers to the other ranks at the start of each forward; each rank's own batch then moves its
    copy, so after a step the ranks' running statistics differ. Validation calls this first, so that every rank
    evaluates the model rank 0 saves.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for buffer in module.buffers():
            data = buffer.contiguous()  # channels-last buffers: the collective needs a dense copy
            dist.broadcast(data, src=0)
            if data is not buffer:
                buffer.copy_(data)
