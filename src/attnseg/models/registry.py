"""Model registry: every architecture registers a factory by name.

A factory has the signature ``factory(in_channels: int, num_classes: int, **kwargs) -> nn.Module`` and the
module it returns maps ``[B, in_channels, *spatial]`` to logits ``[B, num_classes, *spatial]`` (never
probabilities: sigmoid/softmax belong to losses and inference).

Optional model interface, read by the workflow through the helpers below:

- ``validate_input_size(spatial: tuple[int, ...]) -> None``: raise ``ValueError`` naming the rule when the model
  cannot take that input size (e.g. "sides must be multiples of 32; use 256x256").
- ``feature_channels: int`` and ``forward_features(x) -> Tensor``: the feature map right before the classifier
  (``[B, feature_channels, *spatial]`` at input resolution), and ``forward_head(features) -> logits``. Models that
  provide these can carry plug-in heads such as SALSTM/LSTMSA.
- ``unused_parameters() -> dict[str, str]``: parameter-name prefixes the forward never uses, with the reason
  (:func:`ddp_safe` is False for such models).

The protocols are in :mod:`attnseg.models.contract`. Capability flags, set in ``register_model(...)`` after trying
them on the model's test configuration (``tests/models/test_conformance.py`` checks both directions): ``onnx_export``
(``torch.onnx.export(..., dynamo=False, opset_version=17)`` with dynamic batch and sides, as ``attnseg export`` does,
works and onnxruntime agrees) and ``torch_compile`` (``torch.compile`` with inductor works on CPU and agrees with
eager). ``test_kwargs`` / ``test_input_size`` give the small configuration the conformance suite builds, so a new
model is covered without editing the tests.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import numbers
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnseg.errors import AttnsegError
from attnseg.kinds import describe, fits
from attnseg.models.contract import (
    DeclaresUnusedParameters,
    FeatureInterfaceModel,
    SegmentationModel,
    ddp_safe,
    unused_parameters,
)

__all__ = [
    "sized_kwargs",
    "model_options",
    "UnknownModelError",
    "UnknownModelOptionError",
    "ModelInfo",
    "register_model",
    "create_model",
    "list_models",
    "model_info",
    "check_input_size",
    "batchnorm_values",
    "has_feature_interface",
    "SegmentationModel",
    "FeatureInterfaceModel",
    "DeclaresUnusedParameters",
    "ddp_safe",
    "unused_parameters",
]


class UnknownModelError(AttnsegError, KeyError):
    """No model is registered under that name (a ``KeyError``, as smp's ``create_model`` raises)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownModelOptionError(AttnsegError, TypeError):
    """An option the model does not have (a ``TypeError``, as Python raises for an unexpected keyword)."""


class ModelOptionValueError(UnknownModelOptionError, ValueError):
    """An option given a value of the wrong kind (text for a width): a ``ValueError`` as the models' own checks
    raise, and a ``TypeError`` as Python would for the wrong type."""


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model name."""

    name: str
    factory: Callable[..., nn.Module]
    spatial_dims: int = 2  # 2: images/slices, 3: volumes
    paper: str = ""  # citation, shown by `attnseg models`
    official_repo: str = ""  # owner/name of the authors' code, if any
    input_divisor: int = 1  # input sides must be multiples of this (informational; models validate themselves)
    default_input_size: tuple[int, ...] = (224, 224)
    tags: tuple[str, ...] = field(default_factory=tuple)
    onnx_export: bool = True  # ONNX export (TorchScript exporter, opset 17, dynamic axes) works, onnxruntime agrees
    torch_compile: bool = True  # torch.compile (inductor, CPU) works and agrees with eager
    # the CPU-sized configuration the conformance suite builds (register_model: test_input_size = default_input_size
    # unless given)
    test_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    test_input_size: tuple[int, ...] = (224, 224)
    # options that build the model for an input size (e.g. MSA2Net's img_size); see sized_kwargs()
    size_kwargs: Callable[[tuple[int, ...]], dict[str, Any]] | None = field(default=None, hash=False)
    # where a factory's **kwargs go (classes or functions); their named parameters are its options (model_options())
    options_from: tuple[Callable[..., Any], ...] = field(default_factory=tuple, hash=False)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    spatial_dims: int = 2,
    paper: str = "",
    official_repo: str = "",
    input_divisor: int = 1,
    default_input_size: Sequence[int] | None = None,
    tags: Sequence[str] = (),
    onnx_export: bool = True,
    torch_compile: bool = True,
    test_kwargs: dict[str, Any] | None = None,
    test_input_size: Sequence[int] | None = None,
    size_kwargs: Callable[[tuple[int, ...]], dict[str, Any]] | None = None,
    options_from: Callable[..., Any] | Sequence[Callable[..., Any]] = (),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``factory(in_channels, num_classes, **kwargs)`` under ``name``.

    Registering the same name twice raises (unlike timm, which warns): two models must never share a name.

    Args:
        name: registry name.
        spatial_dims: 2 (images/slices) or 3 (volumes).
        paper: citation shown by ``attnseg models``.
        official_repo: owner/name of the authors' code, if any.
        input_divisor: input sides must be multiples of this (informational; the model validates itself).
        default_input_size: the paper's input size; defaults to 224x224 (2D) or 96^3 (3D).
        tags: free-form labels (e.g. ``"slab"``).
        onnx_export: whether ONNX export (TorchScript exporter, opset 17, dynamic batch and sides, as
            ``attnseg export`` does) works and onnxruntime agrees. Defaults to True; the conformance suite fails
            until a model that cannot be exported says False.
        torch_compile: whether ``torch.compile`` works on CPU and agrees with eager. Defaults to True (checked
            by the conformance suite in both directions, like ``onnx_export``).
        test_kwargs: factory options of a CPU-sized configuration for the conformance suite (same code paths as the
            default, smaller widths/sizes). Defaults to none (the factory defaults).
        test_input_size: spatial input size for that configuration. Defaults to ``default_input_size``.
        size_kwargs: for models built for one input size: ``size -> options`` that build the model for ``size``
            (e.g. ``{"img_size": 128}``), so training at any valid size needs no hand-written options. Defaults to
            none (the model takes any valid size as built).
        options_from: for a factory taking ``**kwargs``: the class(es) or function(s) receiving them, whose named
            parameters are the model's other options (:func:`model_options`). ``create_model`` then refuses an
            unknown option by name; the conformance suite requires it of every ``**kwargs`` factory.
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered by {_REGISTRY[name].factory.__module__}")
        size = tuple(default_input_size) if default_input_size else ((224, 224) if spatial_dims == 2 else (96,) * 3)
        if test_input_size is not None and len(test_input_size) != spatial_dims:
            raise ValueError(f"model {name!r}: test_input_size {tuple(test_input_size)} is not {spatial_dims}D")
        _REGISTRY[name] = ModelInfo(
            name=name,
            factory=factory,
            spatial_dims=spatial_dims,
            paper=paper,
            official_repo=official_repo,
            input_divisor=input_divisor,
            default_input_size=size,
            tags=tuple(tags),
            onnx_export=bool(onnx_export),
            torch_compile=bool(torch_compile),
            test_kwargs=dict(test_kwargs or {}),
            test_input_size=tuple(test_input_size) if test_input_size else size,
            size_kwargs=size_kwargs,
            options_from=(options_from,) if callable(options_from) else tuple(options_from),
        )
        return factory

    return decorator


def _ensure_models_imported() -> None:
    # Importing the package registers every architecture (one import line per model file).
    import attnseg.models  # noqa: F401


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered model names, optionally filtered by a substring."""
    _ensure_models_imported()
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or pattern in n]


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; raises ``KeyError`` listing the valid names (and a close match)."""
    _ensure_models_imported()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} Available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, in_channels: int = 3, num_classes: int = 2, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: registered name (see :func:`list_models`).
        in_channels: image channels.
        num_classes: output channels (logits); 1 for binary sigmoid models, K+1 for K structures plus background.
        **kwargs: architecture options passed to the factory.

    Returns:
        An ``nn.Module`` mapping ``[B, in_channels, *spatial]`` to logits ``[B, num_classes, *spatial]``.

    Example:
        >>> model = create_model("unet", in_channels=1, num_classes=9, width=16)
    """
    for name_, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name_} must be an integer, got {value!r}")
        if value < 1:
            raise ValueError(f"{name_} must be >= 1, got {value}")
    info = model_info(name)
    _check_options(name, kwargs)
    model = info.factory(in_channels, num_classes, **kwargs)
    # Remember how the model was built so checkpoints can rebuild it through the registry.
    model.attnseg_build = {"name": name, "in_channels": in_channels, "num_classes": num_classes, "kwargs": dict(kwargs)}
    return model


_NOT_OPTIONS = frozenset({"self", "in_channels", "num_classes", "variant"})  # given by create_model / the factory


def model_options(name: str) -> dict[str, Any] | None:
    """The options of model ``name`` with their defaults (``inspect.Parameter.empty`` when required), in order.

    The factory's named parameters after ``in_channels`` and ``num_classes``, then, for a factory taking
    ``**kwargs``, those of its ``options_from`` targets. None when a ``**kwargs`` factory declares no target (its
    options cannot be listed, so they are not checked).

    Example:
        >>> model_options("unet")
        {'width': 32, 'dropout': 0.0}
    """
    info = model_info(name)
    params = list(inspect.signature(info.factory).parameters.values())
    skip = _NOT_OPTIONS | {p.name for p in params[:2]}
    options: dict[str, Any] = {}
    open_ended = False
    for target in (info.factory, *info.options_from):
        for p in inspect.signature(target).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                open_ended = open_ended or target is info.factory
            elif p.kind is not p.VAR_POSITIONAL and p.name not in skip:
                options.setdefault(p.name, p.default)
    return None if open_ended and not info.options_from else options


def _check_options(name: str, kwargs: dict[str, Any]) -> None:
    options = model_options(name)
    unknown = [k for k in kwargs if options is not None and k not in options]
    if unknown:
        listed = ", ".join(k if v is inspect.Parameter.empty else f"{k}={v!r}" for k, v in options.items())
        close = difflib.get_close_matches(unknown[0], list(options), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownModelOptionError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}{hint}; its options: {listed}"
        )
    hints = _option_hints(name)
    for key, value in kwargs.items():
        hint = hints.get(key)
        if hint is not None and not fits(value, hint):
            raise ModelOptionValueError(
                f"model {name!r} option {key!r} takes {describe(hint)}, got {value!r} ({type(value).__name__})"
            )


def _option_hints(name: str) -> dict[str, Any]:
    """Type annotations of the model's options (factory first, then its ``options_from`` targets)."""
    info = model_info(name)
    hints: dict[str, Any] = {}
    for target in (*reversed(info.options_from), info.factory):
        try:
            hints.update(typing.get_type_hints(target.__init__ if inspect.isclass(target) else target))
        except Exception:  # noqa: BLE001 - an annotation that does not evaluate: its options are not checked
            continue
    return hints


def sized_kwargs(name: str, input_size: Sequence[int], kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """``kwargs`` completed with the options that build model ``name`` for ``input_size`` (given options win).

    Example:
        >>> sized_kwargs("msa2net", (128, 128))
        {'img_size': (128, 128)}
    """
    info = model_info(name)
    sized = info.size_kwargs(tuple(int(s) for s in input_size)) if info.size_kwargs else {}
    return {**sized, **(kwargs or {})}


def check_input_size(model: nn.Module, spatial: Sequence[int]) -> None:
    """Raise ``ValueError`` if ``model`` cannot take inputs of spatial size ``spatial``."""
    validate = getattr(model, "validate_input_size", None)
    if callable(validate):
        validate(tuple(int(s) for s in spatial))


@contextlib.contextmanager
def batchnorm_values(model: nn.Module) -> Iterator[dict[str, int]]:
    """Within the block, forward passes of ``model`` record, per BatchNorm (by module name), how many values per
    channel its first input had (batch x spatial): train-mode BatchNorm fails below two."""
    values: dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            values.setdefault(name, args[0].numel() // args[0].shape[1])

        return hook

    hooks = [
        m.register_forward_pre_hook(record(name))
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        yield values
    finally:
        for h in hooks:
            h.remove()


def has_feature_interface(model: nn.Module) -> bool:
    """True when ``model`` exposes ``feature_channels``, ``forward_features`` and ``forward_head``."""
    return all(hasattr(model, a) for a in ("feature_channels", "forward_features", "forward_head"))
