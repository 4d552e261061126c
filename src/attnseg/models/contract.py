"""What every registered model offers: the segmentation-model protocols and the helpers that read them.

Required of every model (checked for each registered name by ``tests/models/test_conformance.py``):

- ``forward(x) -> logits``: ``[B, in_channels, *spatial]`` (or a slab ``[B, in_channels, K, *spatial]`` for models
  with a ``slab_size`` attribute) to logits ``[B, num_classes, *spatial]`` at input resolution.
- ``validate_input_size(spatial) -> None``: raise ``ValueError`` when the model cannot take inputs of spatial size
  ``spatial``; the message names the rule and a valid size (digits, e.g. "use (256, 256)"). A model that takes any
  size implements it as a no-op or checks only the number of dims. ``forward`` calls it too.

Optional:

- the feature interface (``feature_channels``, ``forward_features``, ``forward_head``), see
  :class:`FeatureInterfaceModel`;
- ``unused_parameters() -> dict[str, str]``: parameter-name prefixes that ``forward`` never uses, each mapped to the
  reason (also explained in the model's docstring), e.g. weights kept only for an official parameter count. Such
  models need ``find_unused_parameters=True`` under DDP (:func:`ddp_safe` is False for them).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

__all__ = [
    "SegmentationModel",
    "FeatureInterfaceModel",
    "DeclaresUnusedParameters",
    "unused_parameters",
    "ddp_safe",
]


@runtime_checkable
class SegmentationModel(Protocol):
    """The interface of every registered model (``isinstance`` checks that both methods exist)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, *spatial]`` at input resolution (never probabilities)."""
        ...

    def validate_input_size(self, spatial: tuple[int, ...]) -> None:
        """Raise ``ValueError`` naming the rule and a valid size when ``spatial`` cannot be taken."""
        ...


@runtime_checkable
class FeatureInterfaceModel(Protocol):
    """Optional: the feature map before the classifier, so plug-in heads (SALSTM/LSTMSA) can sit on the model."""

    feature_channels: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, feature_channels, *spatial]`` at input resolution."""
        ...

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Features to logits; ``forward_head(forward_features(x)) == forward(x)``."""
        ...


@runtime_checkable
class DeclaresUnusedParameters(Protocol):
    """Optional: a model whose forward leaves some parameters unused (e.g. kept for an official parameter count)."""

    def unused_parameters(self) -> dict[str, str]:
        """Parameter-name prefixes (as in ``named_parameters``) the forward never uses, mapped to the reason."""
        ...


def unused_parameters(model: nn.Module) -> dict[str, str]:
    """The model's declared unused parameter prefixes (``{}`` when it declares none)."""
    declare = getattr(model, "unused_parameters", None)
    return dict(declare()) if callable(declare) else {}


def ddp_safe(model: nn.Module) -> bool:
    """True when every parameter takes part in the forward (no declared unused parameters).

    DistributedDataParallel with the default ``find_unused_parameters=False`` fails on the first backward of a model
    for which this is False.
    """
    return not unused_parameters(model)
