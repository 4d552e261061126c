"""attnseg: attention-based medical image segmentation.

Public API: :func:`create_model`, :func:`list_models`, :func:`from_official`, :func:`load_run` (prediction on
arrays and files; README "Python API"), :func:`tune_allocator` (glibc malloc settings for training
processes). Heavy libraries load lazily, so ``import attnseg`` (and ``attnseg --help``)
stays fast.
"""

from __future__ import annotations

from typing import Any

from attnseg.allocator import tune_allocator  # standard library only: cheap to import

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "from_official", "load_run", "tune_allocator", "__version__"]


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


def load_run(run_dir, checkpoint: str = "best", device: Any = "auto"):
    """A trained run ready to predict, its weights loaded once: ``attnseg.load_run("runs/x").predict(image)``.

    The loader of ``attnseg predict`` (see :func:`attnseg.inference.predictor.load_run`): a run directory gives a
    ``Predictor``, a list of them an ``Ensemble`` averaging their probabilities. ``predict(array, affine=...,
    spacing=..., return_probabilities=...)`` takes ``(H, W)``, ``(H, W, 3)`` RGB or ``(C, H, W)`` images and
    ``(X, Y, Z)`` or ``(C, X, Y, Z)`` volumes in nibabel's voxel order; ``predict_files(paths)`` returns
    ``{case: label map}``.
    """
    from attnseg.inference.predictor import load_run as _load_run

    return _load_run(run_dir, checkpoint=checkpoint, device=device)
