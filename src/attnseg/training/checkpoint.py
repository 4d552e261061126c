"""Self-describing, atomically written checkpoints.

``RUN/checkpoints/{name}.safetensors`` holds the model weights (unwrapped from DDP/compile);
``RUN/checkpoints/{name}_state.pt`` holds the training state (iteration, optimiser, scheduler, grad scaler, RNG,
best metric) as plain tensors and containers, loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["unwrap", "save_weights", "load_weights", "save_state", "load_state", "checkpoint_paths"]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def checkpoint_paths(run_dir: str | Path, name: str) -> tuple[Path, Path]:
    d = Path(run_dir) / "checkpoints"
    return d / f"{name}.safetensors", d / f"{name}_state.pt"


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    _atomic(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    from safetensors.torch import load_file

    unwrap(model).load_state_dict(load_file(str(path)), strict=True)
    return model


def save_state(state: dict[str, Any], path: Path) -> None:
    _atomic(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
