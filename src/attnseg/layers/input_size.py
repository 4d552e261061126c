"""Input-size rules of U-shaped networks: every side a multiple of the total downsampling factor.

A U-Net whose decoder adds or concatenates skips after fixed 2x upsamplings needs each side divisible by
``2 ** (number of poolings)``: U-Net (Ronneberger et al., MICCAI 2015: 16), MALUNet (Ruan et al., BIBM 2022: 32),
DenseUNet (Zhang, Dong, Li, ISBI 2022: 32), MT-UNet (Wang et al., ICASSP 2022: 32), MSA²Net's MaxViT encoder
(Kolahi et al., BMVC 2024: 32) and the scale pyramid of the 2D SALSTM reconstruction (Ji, Ye, Ma, TIP 2024).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["padded_size", "check_divisible"]


def padded_size(spatial: Sequence[int], divisor: int) -> tuple[int, ...]:
    """Each side rounded up to a positive multiple of ``divisor``.

    Args:
        spatial: the sides.
        divisor: the required factor (>= 1).

    Returns:
        The smallest valid size that contains ``spatial``.
    """
    return tuple(max(divisor, -(-int(s) // divisor) * divisor) for s in spatial)


def check_divisible(
    spatial: Sequence[int],
    divisor: int,
    *,
    what: str = "input",
    why: str = "",
    ndim: int | None = None,
    fix: str = "pad to",
) -> None:
    """Raise ``ValueError`` unless every side of ``spatial`` is a positive multiple of ``divisor``.

    The message names the rule and the nearest valid size, e.g. ``"input (250, 250): sides must be multiples of
    32 (five 2x poolings); pad to 256x256, i.e. (256, 256)"``.

    Args:
        spatial: the sides to check.
        divisor: the required factor (>= 1).
        what: what ``spatial`` is, starting the message (e.g. ``"MALUNet input"``, ``"img_size"``).
        why: the reason for the rule, shown in parentheses after it. Defaults to none.
        ndim: the required number of sides, if any (e.g. 2 for a 2D model).
        fix: the advice before the valid size. Defaults to ``"pad to"`` (``"use"`` suits a constructor argument).

    Raises:
        ValueError: if the number of sides or their divisibility is wrong.
    """
    size = tuple(int(s) for s in spatial)
    if ndim is not None and len(size) != ndim:
        raise ValueError(f"{what} must be {ndim}D, got a {len(size)}D size {size}")
    if all(s >= divisor and s % divisor == 0 for s in size):
        return
    valid = padded_size(size, divisor)
    reason = f" ({why})" if why else ""
    as_tuple = f", i.e. {valid}" if len(valid) > 1 else ""
    shown = size if len(size) > 1 else size[0]
    raise ValueError(f"{what} {shown}: sides must be multiples of {divisor}{reason}; {fix} {_show(valid)}{as_tuple}")


def _show(size: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in size)
