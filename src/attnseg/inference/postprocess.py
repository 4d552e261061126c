"""Post-processing of predicted label maps: keep each class's largest connected component.

An organ such as the liver or the spleen is one connected structure, so any island of its label apart from the
largest is a false positive. nnU-Net applies the same rule (Isensee et al., Nature Methods 2021, "Postprocessing":
remove all but the largest connected component per class when that helps on the validation cases); attnseg applies it
to the classes named by ``attnseg predict --keep-largest`` (or ``Predictor.keep_largest``). Connectivity is full
(8-neighbourhood in 2D, 26 in 3D), as nnU-Net's; the removed voxels become background.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from attnseg.config import ConfigError

__all__ = ["keep_largest_component", "parse_classes"]


def keep_largest_component(labels: np.ndarray, classes: Iterable[int]) -> np.ndarray:
    """A copy of ``labels`` where each class of ``classes`` keeps only its largest connected component.

    Ties between equally large components keep the first in scan order (``scipy.ndimage.label`` numbering).
    """
    from scipy import ndimage

    out = labels.copy()
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)  # full connectivity, as nnU-Net
    for c in classes:
        components, count = ndimage.label(labels == c, structure=structure)
        if count < 2:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0  # outside the class
        out[(components > 0) & (components != sizes.argmax())] = 0
    return out


def parse_classes(
    text: str, label_names: Mapping[int, str], num_classes: int, flag: str = "--keep-largest"
) -> tuple[int, ...]:
    """Foreground classes from ``all`` or a comma-separated list of label names or ids (``liver,spleen``, ``1,3``);
    anything else is a :class:`ConfigError` naming ``flag`` and the run's classes."""
    foreground = range(1, num_classes)
    if text.strip() == "all":
        return tuple(foreground)
    by_name = {name: idx for idx, name in label_names.items()}
    chosen: list[int] = []
    for token in (t.strip() for t in text.split(",")):
        idx = int(token) if token.isdigit() else by_name.get(token)
        if idx is None or idx not in foreground:
            known = ", ".join(f"{label_names.get(i, i)}={i}" for i in foreground)
            raise ConfigError(f"{flag}: {token!r} is not a foreground class of this run ({known}; or 'all')")
        chosen.append(idx)
    return tuple(dict.fromkeys(chosen))
