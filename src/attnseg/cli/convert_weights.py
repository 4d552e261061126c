"""``attnseg convert-weights``: an official checkpoint -> our model's weights (safetensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

__all__ = ["convert_weights_command", "read_official_state_dict"]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network_weights")


def read_official_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of an official checkpoint (``.pth``/``.pt`` via ``torch.load(weights_only=True)``, or safetensors).

    Unwraps ``{"state_dict": ...}``-style containers and the ``module.`` prefix of ``nn.DataParallel``.
    """
    import torch

    from attnseg.data.io import ImageReadError

    if not path.exists():
        raise ImageReadError(path, "checkpoint not found")
    if not path.is_file():
        raise ImageReadError(path, "is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ImageReadError(path, f"cannot load as safetensors ({_first_line(exc)})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ImageReadError(
                path, f"cannot load as a weights-only PyTorch checkpoint ({_first_line(exc)})"
            ) from None
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImageReadError(path, "does not hold a state dict of tensors")
    if not all(isinstance(k, str) for k in state):
        raise ImageReadError(path, "does not hold a state dict: its keys are not all parameter names (strings)")
    if state and all(k.startswith("module.") for k in state):
        state = dict(state)  # torch strips the prefix in place: work on a copy
        torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state, "module.")
    return state


def _first_line(exc: BaseException) -> str:
    text = (str(exc).splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def convert_weights_command(
    checkpoint: Path = typer.Argument(..., help="Official checkpoint (.pth/.pt, read with weights_only=True)."),
    output: Path = typer.Argument(..., help="Output .safetensors file (our parameter names)."),
    official_class: str = typer.Option(..., "--official-class", help="Official class, e.g. models.malunet.MALUNet."),
    kwargs: str | None = typer.Option(None, "--kwargs", help="Official constructor kwargs as JSON."),
) -> None:
    """Map an official checkpoint onto attnseg's model (strict: every tensor used, every parameter filled)."""
    from rich.console import Console
    from safetensors.torch import save_file

    from attnseg.cli.args import parse_json_kwargs
    from attnseg.config import ConfigError
    from attnseg.io import atomic_write
    from attnseg.models.official import OfficialWeightsError, from_official

    try:
        constructor_kwargs = parse_json_kwargs(kwargs, "--kwargs")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if output.suffix != ".safetensors":
        raise ConfigError(f"{output}: the output must be a .safetensors file")
    if output.exists() and checkpoint.exists() and output.resolve() == checkpoint.resolve():
        raise ConfigError(f"{output}: the output would overwrite the checkpoint it is converted from")
    state = read_official_state_dict(checkpoint)
    try:
        model = from_official(official_class, state, **constructor_kwargs)
    except OfficialWeightsError as exc:
        raise OfficialWeightsError(f"{checkpoint}: {exc}") from None
    except (TypeError, ValueError) as exc:  # the constructor refused --kwargs (unknown name, bad value)
        raise ConfigError(f"--kwargs {kwargs or '{}'}: {official_class}: {exc}") from None
    build = getattr(model, "attnseg_build", None)
    metadata = {
        "official_class": official_class,
        "official_kwargs": json.dumps(constructor_kwargs),
        "source": checkpoint.name,
    }
    if build:
        metadata["attnseg_build"] = json.dumps(build)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(output, lambda tmp: save_file(weights, str(tmp), metadata=metadata))
    n = sum(p.numel() for p in model.parameters())
    Console().print(
        f"[green]converted[/] {len(state)} official tensors -> {output} ({type(model).__name__}, {n:,} parameters)"
    )
