"""``(height, width)`` from an int or a pair, with the validation the models need.

Built on timm's ``to_2tuple``. Used for MSA²Net's ``img_size`` (Kolahi et al., BMVC 2024), DenseUNet's
``input_size`` (Zhang, Dong, Li, "Joint Attention for Medical Image Segmentation", ISBI 2022) and the odd
over-complete map sizes of PSANet's point-wise attention (Zhao et al., ECCV 2018: ``(2h-1, 2w-1)``).
"""

from __future__ import annotations

from collections.abc import Sequence

from timm.layers import to_2tuple

__all__ = ["to_pair"]


def to_pair(value: int | Sequence[int], *, name: str = "size", odd: bool = False) -> tuple[int, int]:
    """``(h, w)`` from ``value`` (an int is used for both sides).

    Args:
        value: an int or a sequence of two ints.
        name: how the error message calls ``value`` (with any hint, e.g. ``"mask_size (2*side-1 of the map)"``).
        odd: require both sides to be odd and >= 1. Defaults to False.

    Returns:
        The pair as a tuple of two ints.

    Raises:
        ValueError: naming ``name`` if ``value`` is not one or two ints (odd ones when ``odd``).
    """
    pair = tuple(int(v) for v in to_2tuple(value))
    if len(pair) != 2 or odd and any(v < 1 or v % 2 == 0 for v in pair):
        wanted = "one or two odd ints >= 1" if odd else "an int or (height, width)"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return pair  # type: ignore[return-value]
