"""Overlay PNGs: image | ground truth | prediction, side by side, for one representative slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnseg.io import atomic_write

__all__ = ["PALETTE", "blend", "save_overlay", "to_gray_uint8", "to_ras"]

# Distinct colours for labels 1..; label 0 is transparent.
PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [170, 110, 40],
    ],
    dtype=np.float32,
)


def to_gray_uint8(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [1, 99])
    return (np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def blend(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    out = rgb.astype(np.float32).copy()
    for value in np.unique(labels):
        if value == 0:
            continue
        mask = labels == value
        out[mask] = (1 - alpha) * out[mask] + alpha * PALETTE[(int(value) - 1) % len(PALETTE)]
    return out.astype(np.uint8)


def to_ras(arrays: list[np.ndarray | None], affine: np.ndarray) -> list[np.ndarray | None]:
    import nibabel as nib

    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(("R", "A", "S"))
    )
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
        elif a.ndim == 4:
            out.append(np.stack([nib.orientations.apply_orientation(c, ornt) for c in a]))
        else:
            out.append(nib.orientations.apply_orientation(a, ornt))
    return out


def save_overlay(
    path: str | Path,
    image: np.ndarray,
    prediction: np.ndarray,
    ground_truth: np.ndarray | None = None,
    *,
    rgb: bool = False,
    affine: np.ndarray | None = None,
) -> Path:
    """Write ``image | [ground truth |] prediction`` as a PNG.

    ``image`` is ``[C, *spatial]``; volumes show the axial slice with the most labelled voxels, in the radiological
    view (anterior up, patient's right on the left) when ``affine`` is given.
    """
    from PIL import Image

    img = np.asarray(image)
    pred = np.asarray(prediction)
    gt = None if ground_truth is None else np.asarray(ground_truth)
    if pred.ndim == 3:  # volume: pick the most informative axial slice
        if affine is not None:
            img, pred, gt = to_ras([img, pred, gt], affine)
        ref = gt if gt is not None and gt.any() else pred
        z = int(np.argmax((ref > 0).reshape(-1, ref.shape[-1]).sum(0)))

        def view(a: np.ndarray) -> np.ndarray:  # RAS (x, y) -> rows anterior first, columns patient right first
            return np.swapaxes(a[..., z], -2, -1)[..., ::-1, ::-1]

        img, pred = view(img), view(pred)
        gt = None if gt is None else view(gt)
    if rgb and img.shape[0] == 3:
        base = np.moveaxis(img, 0, -1)
        base = base if base.dtype == np.uint8 else to_gray_uint8(base)
    else:
        base = np.repeat(to_gray_uint8(img[0])[..., None], 3, axis=-1)
    panels = [base] + ([blend(base, gt)] if gt is not None else []) + [blend(base, pred)]
    gap = np.full((base.shape[0], 4, 3), 255, np.uint8)
    canvas = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    return atomic_write(path, lambda tmp: Image.fromarray(np.ascontiguousarray(canvas)).save(tmp, format="PNG"))
