"""What kind of value a type annotation accepts: the one rule behind the checks of recipe values
(:mod:`attnseg.config`) and model options (:mod:`attnseg.models.registry`), so that ``iterations: abc`` in a recipe
or ``{"width": 4.5}`` for a model are one-line user errors instead of crashes deep inside."""

from __future__ import annotations

import types
import typing
from typing import Any

__all__ = ["describe", "fits", "without_none"]


def fits(value: Any, hint: Any) -> bool:
    """``value`` is of the scalar kind ``hint`` names (int, float, bool, str, None, Literal, and unions of them);
    containers and other types are not judged (True). JSON's ``4.5`` or ``"x"`` for an ``int`` is refused, and so is
    ``True`` for a number."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # containers, tensors, callables, Any: their owner checks them


def describe(hint: Any) -> str:
    """``hint`` in words for an error message (``int or 'auto'``)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


def without_none(hint: Any) -> Any:
    """``X | None`` -> ``X`` (other hints unchanged)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint
