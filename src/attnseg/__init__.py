"""attnseg: attention-based medical image segmentation.

Public API: :func:`create_model`, :func:`list_models`, :func:`from_official`. Heavy libraries load lazily, so
``import attnseg`` (and ``attnseg --help``) stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "from_official", "__version__"]


def create_model(name: str, in_channels: int = 3, num_classes: int = 2, **kwargs: Any):
    """Build a registered model; see :func:`attnseg.models.registry.create_model`."""
    from attnseg.models.registry import create_model as _create

    return _create(name, in_channels, num_classes, **kwargs)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names; see :func:`attnseg.models.registry.list_models`."""
    from attnseg.models.registry import list_models as _list

    return _list(pattern)


def from_official(official_class: str, state_dict, **constructor_kwargs: Any):
    """Build our model from an official checkpoint; see :func:`attnseg.models.official.from_official`."""
    from attnseg.models.official import from_official as _from_official

    return _from_official(official_class, state_dict, **constructor_kwargs)
