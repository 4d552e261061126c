"""Dataset converters: public releases as distributed -> the canonical nnU-Net raw layout with named splits.

Each converter reads one release layout (documented in its module), writes images, labels, ``dataset.json`` and
``splits.json`` into a staging folder next to the destination, and renames it into place only when everything
succeeded. Users call :func:`convert_dataset` (or ``attnseg convert-dataset NAME SRC DST``).

=============  ======================================  ===========================================================
name           module                                  named splits
=============  ======================================  ===========================================================
isic2017       :mod:`attnseg.data.conversion.isic`     official, malunet (70/30), 80-10-10, dlka
isic2018       :mod:`attnseg.data.conversion.isic`     official, malunet (70/30), 80-10-10, dlka
tn3k           :mod:`attnseg.data.conversion.thyroid`  official (2,879 / 614), fold0..fold4
ddti           :mod:`attnseg.data.conversion.thyroid`  80-10-10
acdc           :mod:`attnseg.data.conversion.acdc`     70-10-20 (patients), official (with annotated testing/)
synapse        :mod:`attnseg.data.conversion.synapse`  transunet (18 / 12)
=============  ======================================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from attnseg.data.conversion._common import SPLIT_SEED, ConversionReport, check_destination
from attnseg.data.conversion.acdc import convert_acdc
from attnseg.data.conversion.isic import convert_isic2017, convert_isic2018
from attnseg.data.conversion.synapse import convert_synapse
from attnseg.data.conversion.thyroid import convert_ddti, convert_tn3k
from attnseg.data.layout import DatasetError

__all__ = ["CONVERTERS", "ConversionReport", "SPLIT_SEED", "convert_dataset", "list_converters"]

CONVERTERS: dict[str, Callable[..., ConversionReport]] = {
    "isic2017": convert_isic2017,
    "isic2018": convert_isic2018,
    "tn3k": convert_tn3k,
    "ddti": convert_ddti,
    "acdc": convert_acdc,
    "synapse": convert_synapse,
}


def list_converters() -> list[str]:
    """Names accepted by :func:`convert_dataset`."""
    return sorted(CONVERTERS)


def convert_dataset(
    name: str,
    src: str | Path,
    dst: str | Path,
    *,
    seed: int = SPLIT_SEED,
    overwrite: bool = False,
    workers: int = 1,
    max_size: int | None = None,
) -> ConversionReport:
    """Convert the release of dataset ``name`` found in ``src`` into the canonical layout at ``dst``.

    Args:
        name: one of :func:`list_converters` (case-insensitive; ``-``/``_`` ignored, e.g. ``ISIC-2018``).
        src: the release folder as distributed.
        dst: the dataset folder to create (must not exist or be empty, unless ``overwrite``).
        seed: seed of the seeded splits (recorded in ``dataset.json``).
        overwrite: replace an existing dataset folder (only after the new one is complete).
        workers: threads for image conversion.
        max_size: 2D datasets only: downsize images whose longer side exceeds this many pixels.

    Raises:
        DatasetError: unknown name, or any problem with the source files (the message names the file).
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in CONVERTERS:
        raise DatasetError(f"unknown dataset {name!r}; choose from {', '.join(list_converters())}")
    if workers < 1:
        raise DatasetError(f"--workers must be >= 1, got {workers}")
    if max_size is not None and max_size < 16:
        raise DatasetError(f"--max-size must be at least 16 pixels, got {max_size}")
    check_destination(Path(dst), overwrite, Path(src))  # before reading thousands of source files
    kwargs: dict[str, Any] = {"seed": seed, "overwrite": overwrite, "workers": workers, "max_size": max_size}
    return CONVERTERS[key](Path(src), Path(dst), **kwargs)
