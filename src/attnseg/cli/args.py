"""Small option parsers shared by subcommands."""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["parse_size", "parse_json_kwargs", "join_multi_value_options"]

MULTI_VALUE_OPTIONS = ("--input-size",)


def join_multi_value_options(argv: list[str]) -> list[str]:
    """Let ``--input-size 224 224`` (2 or 3 numbers) reach click as one value ``224,224``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        out.append(token)
        i += 1
        if token in MULTI_VALUE_OPTIONS:
            values = []
            while i < len(argv) and re.fullmatch(r"\d+", argv[i]):
                values.append(argv[i])
                i += 1
            if values:
                out.append(",".join(values))
    return out


def parse_size(text: str | None, option: str = "--input-size") -> list[int] | None:
    """``"224,224"``, ``"224x224"`` or ``"224 224"`` -> ``[224, 224]``."""
    if text is None:
        return None
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"{option} expects 2 or 3 integers (H W or D H W), got {text!r}") from None
    if len(values) not in (2, 3) or min(values) < 1:
        raise ValueError(f"{option} expects 2 or 3 positive integers (H W or D H W), got {text!r}")
    return values


def parse_json_kwargs(text: str | None, option: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{option} must be a JSON object, e.g. '{{\"width\": 16}}' ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object, got {type(value).__name__}")
    return value
