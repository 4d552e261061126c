"""Loading weights trained with the authors' official code.

``from_official(official_class, state_dict, **official_constructor_kwargs)`` builds our model for an official class
name and loads the official state dict strictly: every official tensor is used (or explicitly declared dead, e.g.
modules the official forward never executes) and every parameter/buffer of ours is filled.

Each model file registers its loader next to the network (the MONAI ``filter_swinunetr`` pattern)::

    @register_official("models.malunet.MALUNet", "MALUNet")
    def _load_malunet(state_dict, **kwargs) -> nn.Module: ...

A loader usually builds the model and calls :func:`load_mapped` with a key-renaming function.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from attnseg.errors import AttnsegError

__all__ = ["register_official", "from_official", "list_official_classes", "load_mapped", "OfficialWeightsError"]

OfficialLoader = Callable[..., nn.Module]
_LOADERS: dict[str, OfficialLoader] = {}


class OfficialWeightsError(AttnsegError, ValueError):
    """An official state dict does not fit the model it claims to be."""


def register_official(*class_names: str) -> Callable[[OfficialLoader], OfficialLoader]:
    """Register ``loader(state_dict, **official_kwargs) -> nn.Module`` for official class names.

    Give the qualified name as recorded by fixtures (``models.malunet.MALUNet``); the bare class name is derived and
    registered too unless it is ambiguous.
    """

    def decorator(loader: OfficialLoader) -> OfficialLoader:
        for qualified in class_names:
            for key in {qualified, qualified.rsplit(".", 1)[-1]}:
                if key in _LOADERS and _LOADERS[key] is not loader:
                    raise ValueError(f"official class {key!r} already has a loader ({_LOADERS[key].__module__})")
                _LOADERS[key] = loader
        return loader

    return decorator


def list_official_classes() -> list[str]:
    import attnseg.models  # noqa: F401  (registration)

    return sorted(_LOADERS)


def from_official(official_class: str, state_dict: Mapping[str, torch.Tensor], **constructor_kwargs: Any) -> nn.Module:
    """Build our model for ``official_class`` and load the official ``state_dict`` into it, strictly.

    Args:
        official_class: official class name, qualified (``models.malunet.MALUNet``) or bare (``MALUNet``).
        state_dict: the official model's ``state_dict()`` (official key names).
        **constructor_kwargs: the keyword arguments the official constructor was called with.

    Returns:
        Our model with the weights loaded, in eval mode.
    """
    import attnseg.models  # noqa: F401  (registration)

    loader = _LOADERS.get(official_class) or _LOADERS.get(official_class.rsplit(".", 1)[-1])
    if loader is None:
        raise OfficialWeightsError(
            f"no loader for official class {official_class!r}; known: {', '.join(sorted(_LOADERS))}"
        )
    model = loader(dict(state_dict), **constructor_kwargs)
    return model.eval()


def load_mapped(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    rename: Callable[[str], str | None] = lambda k: k,
    *,
    dead_keys: Iterable[str] = (),
    transforms: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> nn.Module:
    """Copy ``state_dict`` into ``model`` after renaming each official key with ``rename``.

    ``rename`` returns our key, or ``None`` for a key that must be dropped; every dropped key must be listed in
    ``dead_keys`` (prefixes allowed), so nothing is dropped silently. Dropped dead keys are reported in one warning.
    ``transforms`` maps *our* key to a function applied to the tensor (e.g. a reshape). Raises
    :class:`OfficialWeightsError` listing unused official keys, unfilled keys of ours and shape mismatches.
    """
    dead = tuple(dead_keys)
    transforms = dict(transforms or {})
    target = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    dropped: list[str] = []
    mismatched: list[str] = []
    for key, tensor in state_dict.items():
        ours = rename(key)
        if ours is None:
            if any(key == d or key.startswith(d if d.endswith(".") else d + ".") for d in dead):
                dropped.append(key)
            else:
                unused.append(key)
            continue
        if ours not in target:
            unused.append(f"{key} -> {ours}")
            continue
        if ours in transforms:
            tensor = transforms[ours](tensor)
        if tuple(tensor.shape) != tuple(target[ours].shape):
            mismatched.append(f"{key} {tuple(tensor.shape)} vs ours {ours} {tuple(target[ours].shape)}")
            continue
        mapped[ours] = tensor
    missing = sorted(set(target) - set(mapped))
    if unused or missing or mismatched:
        parts = []
        if unused:
            parts.append(f"{len(unused)} official keys unused: {unused[:8]}")
        if missing:
            parts.append(f"{len(missing)} of our keys not filled: {missing[:8]}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches: {mismatched[:8]}")
        raise OfficialWeightsError("; ".join(parts))
    if dropped:
        warnings.warn(
            f"dropped {len(dropped)} official keys of modules the official forward never executes: "
            + ", ".join(_summarise_prefixes(dropped)),
            stacklevel=2,
        )
    model.load_state_dict(mapped, strict=True)
    return model


def _summarise_prefixes(keys: list[str], depth: int = 2) -> list[str]:
    seen: dict[str, int] = {}
    for k in keys:
        prefix = ".".join(k.split(".")[:depth])
        seen[prefix] = seen.get(prefix, 0) + 1
    return [f"{p}.* ({n})" for p, n in seen.items()]
