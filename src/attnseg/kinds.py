"""What kind of value a type annotation accepts: the one rule behind the checks of recipe values
(:mod:`attnseg.config`) and model options (:mod:`attnseg.models.registry`), so that ``iterations: abc`` in a recipe
or ``{"width": 4.5}`` for a model are one-line user errors instead of crashes deep inside."""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any

__all__ = ["describe", "fits", "without_none"]


def fits(value: Any, hint: Any) -> bool:
    """``value`` is of the kind ``hint`` names: the scalars int, float, bool, str, None and Literal, their unions, and
    the containers a JSON or YAML file can hold: ``Sequence[X]`` / ``list[X]`` / ``tuple[X, ...]`` (a list or tuple
    of X), ``tuple[X, Y]`` (of that length) and ``Mapping[K, V]`` / ``dict[K, V]``; other types (tensors, modules,
    callables, Any) are not judged (True). JSON's ``4.5`` or ``"x"`` for an ``int`` is refused, and so is ``True``
    for a number."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args))
        return not args or all(fits(v, args[0]) for v in value)
    if origin in _MAPPINGS:
        if not isinstance(value, dict):
            return False
        key, item = args if args else (Any, Any)
        return all(fits(k, key) and fits(v, item) for k, v in value.items())
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
    return True  # tensors, modules, callables, Any: their owner checks them


_SEQUENCES = (list, tuple, collections.abc.Sequence)
_MAPPINGS = (dict, collections.abc.Mapping)


def describe(hint: Any) -> str:
    """``hint`` in words for an error message (``int or 'auto'``, ``a list of int``)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin in _SEQUENCES:
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
        return f"a list of {describe(args[0])}" if args else "a list"
    if origin in _MAPPINGS:
        return "a mapping"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def without_none(hint: Any) -> Any:
    """``X | None`` -> ``X`` (other hints unchanged)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint
