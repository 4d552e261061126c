"""attnseg.kinds: the one rule behind recipe-value and model-option checks, on hand-picked values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pytest
import torch

from attnseg.kinds import describe, fits, without_none


@pytest.mark.parametrize(
    ("value", "hint", "ok"),
    [
        (3, int, True),
        (3.0, int, False),
        (True, int, False),  # a bool is not a number here
        (3, float, True),
        ("3", float, False),
        (None, int | None, True),
        ("auto", int | Literal["auto"], True),
        ("Auto", int | Literal["auto"], False),
        ([8, 16], Sequence[int], True),
        ((8, 16), Sequence[int], True),
        ([8, "16"], Sequence[int], False),
        ("816", Sequence[str], False),  # a string is not a list of strings
        (8, Sequence[int], False),
        ([8, 16], int | Sequence[int], True),
        ([64, 64], tuple[int, int], True),  # JSON and YAML give lists for tuples
        ([64, 64, 64], tuple[int, int], False),
        ([0.5, 1], tuple[float, ...], True),
        ({"a": 1}, Mapping[str, Any], True),
        ({"a": 1}, dict[str, str], False),
        ([("a", 1)], Mapping[str, Any], False),
        (torch.zeros(1), torch.Tensor, True),  # other types: their owner checks them
    ],
)
def test_fits(value: Any, hint: Any, ok: bool) -> None:
    assert fits(value, hint) is ok


def test_describe_and_without_none() -> None:
    assert describe(int | Sequence[int] | None) == "int or a list of int or None"
    assert describe(tuple[int, int]) == "a list of 2 (int, int)"
    assert describe(Literal[2, 3]) == "2 or 3"
    assert describe(Mapping[str, Any]) == "a mapping"
    assert without_none(Sequence[int] | None) == Sequence[int]
    assert without_none(int | str | None) == int | str | None  # two kinds left: unchanged
