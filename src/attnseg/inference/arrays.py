"""Arrays in memory as prediction inputs: the array conventions of the Python API (README, "Python API").

An array becomes the ``[C, *spatial]`` image and the :class:`~attnseg.data.io.ImageMeta` that
:func:`~attnseg.data.io.read_image` gives for the file it came from, so ``Predictor.predict(array)`` runs the code
``attnseg predict FILE`` runs, on the same numbers, and returns the same label map bit for bit.

The accepted forms depend on the run's plan, which removes the ambiguities:

- a run trained on 2D images (``data_is_3d`` false) takes ``(H, W)``, ``(H, W, 3)`` RGB as PIL and imageio return
  it (``(H, W, 4)`` RGBA: the alpha channel is dropped, as the PNG reader does), or ``(C, H, W)`` with ``C`` the
  run's channel count. An RGB run reads an array whose last axis is 3 as ``(H, W, 3)``; a gray run averages an RGB
  array to gray, as it does for an RGB file;
- a run trained on volumes takes ``(X, Y, Z)`` (one channel) or ``(C, X, Y, Z)`` in the voxel order nibabel returns
  (``np.asarray(nib.load(f).dataobj)``), so ``(X, Y, 3)`` is a volume of three slices there. ``affine=`` (4x4
  voxel -> RAS+ mm, nibabel's ``img.affine``) or ``spacing=`` (mm per array axis) describes its grid; with neither,
  the identity affine (unit spacing, axes taken as R, A, S).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnseg.data.io import ImageMeta, meta_for_array
from attnseg.data.preprocess import Plan

__all__ = ["accepted_forms", "image_from_array", "nonfinite_problem", "ARRAY_CONVENTIONS"]

ARRAY_CONVENTIONS = {
    "image_2d": "(H, W) gray, (H, W, 3) RGB as PIL/imageio return it, or (C, H, W) channels first",
    "volume_3d": "(X, Y, Z) or (C, X, Y, Z) in nibabel's voxel order (np.asarray(img.dataobj)); its grid given by "
    "the 4x4 voxel -> RAS+ mm affine (img.affine) or the spacing per array axis",
    "network_input": "[C, *spatial] channels first after 'preprocessing': volumes reoriented to RAS and resampled "
    "to target_spacing, then tiled by input.size",
    "label_map": "argmax of the class probabilities [classes, *spatial], mapped back to the input's grid; "
    "uint8 (int16 above 255 classes), the input's spatial shape",
}


def accepted_forms(plan: Plan) -> list[str]:
    """The array shapes a run with ``plan`` predicts on, as the error messages and the ONNX sidecar name them."""
    n = len(plan.channel_kinds)
    if plan.data_is_3d:
        volume = "in nibabel's voxel order, with affine= or spacing="
        return [f"(X, Y, Z) {volume}", f"(1, X, Y, Z) {volume}"] if n == 1 else [f"({n}, X, Y, Z) {volume}"]
    if "rgb" in plan.channel_kinds:
        return ["(H, W, 3) RGB as PIL/imageio return it (alpha of (H, W, 4) dropped)", "(3, H, W)"]
    if n == 1:
        return ["(H, W)", "(1, H, W)", "(H, W, 1)", "(H, W, 3) RGB, averaged to gray as an RGB file is"]
    return [f"({n}, H, W)"]


def image_from_array(
    array: Any, plan: Plan, *, affine: Any = None, spacing: Any = None
) -> tuple[np.ndarray, ImageMeta]:
    """``array`` as the image ``[C, *spatial]`` and geometry that reading its file gives (module docstring).

    The image keeps the array's values and dtype (channels may be a view); channel matching against the model
    (an RGB image for a gray model) is left to ``Predictor``, as for files.

    Raises:
        ValueError: naming the shape received and the forms this run accepts, or the problem with ``affine`` /
            ``spacing`` (both given, not 4x4, a singular voxel axis, the wrong length).
    """
    a = np.asarray(array)
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"image of dtype {a.dtype}: expected a real numeric array")
    if a.dtype == bool:
        a = a.astype(np.uint8)
    n = len(plan.channel_kinds)
    rgb_run = "rgb" in plan.channel_kinds
    trained_on = "3D volumes" if plan.data_is_3d else "2D images"

    def bad(problem: str) -> ValueError:
        forms = "; ".join(accepted_forms(plan))
        return ValueError(f"image of shape {a.shape}: {problem}. This run (trained on {trained_on}) accepts {forms}")

    rgb = False
    if plan.data_is_3d:
        if a.ndim == 3:
            if n != 1:
                raise bad(f"a volume (X, Y, Z) has one channel but the model takes {n}; pass ({n}, X, Y, Z)")
            image = a[None]
        elif a.ndim == 4:
            if a.shape[0] != n:
                hint = ""
                if a.shape[-1] == n:
                    hint = " (a 4D NIfTI's array is (X, Y, Z, C): pass np.moveaxis(array, -1, 0))"
                raise bad(f"{a.shape[0]} channel(s) on the first axis but the model takes {n}{hint}")
            image = a
        elif a.ndim == 2:
            raise bad("a 2D image, but the run was trained on 3D volumes")
        else:
            raise bad(f"{a.ndim} dimensions")
    else:
        colour = a.ndim == 3 and a.shape[-1] in (3, 4) and (rgb_run or n == 1)
        if a.ndim == 2:
            if n != 1:
                raise bad(f"a gray image (H, W) has one channel but the model takes {n}")
            image = a[None]
        elif a.ndim == 3 and colour and not (n == 1 and a.shape[0] == 1):
            image, rgb = np.moveaxis(a[..., :3], -1, 0), True  # as the PNG reader: (H, W, 3) -> (3, H, W)
        elif a.ndim == 3 and a.shape[0] == n:
            image, rgb = a, rgb_run
        elif a.ndim == 3 and n == 1 and a.shape[-1] == 1:  # (H, W, 1), as some readers return a gray image
            image = np.moveaxis(a, -1, 0)
        elif a.ndim == 3:
            raise bad(f"neither (C, H, W) with the model's {n} channel(s) nor an RGB (H, W, 3)")
        elif a.ndim == 4:
            raise bad("a volume, but the run was trained on 2D images")
        else:
            raise bad(f"{a.ndim} dimensions")
    if image.shape[1:] and min(image.shape[1:]) == 0:
        raise bad("an empty spatial axis")
    problem = nonfinite_problem(image)
    if problem:
        raise ValueError(f"image of shape {a.shape} {problem}")
    return image, _meta(image.shape[1:], affine, spacing, rgb)


def nonfinite_problem(image: np.ndarray) -> str | None:
    """``None`` when every voxel of ``image`` is finite, else the problem, to follow the file or array's name.

    NaN spreads through every convolution window it touches (one NaN voxel changed ~1000 labels of a test volume)
    and the argmax of NaN probabilities is background, so such an input would be segmented silently wrong.
    """
    if not np.issubdtype(image.dtype, np.floating):
        return None
    finite = np.isfinite(image)
    if finite.all():
        return None
    nan = int(np.count_nonzero(np.isnan(image)))
    inf = int(finite.size - np.count_nonzero(finite)) - nan
    return (
        f"holds {nan} NaN and {inf} infinite voxel(s); a model cannot segment undefined intensities "
        "(replace them first, e.g. with the background value)"
    )


def _meta(shape: tuple[int, ...], affine: Any, spacing: Any, rgb: bool) -> ImageMeta:
    if affine is not None and spacing is not None:
        raise ValueError("give affine= or spacing=, not both (the affine already holds the voxel size)")
    if affine is not None:
        matrix = np.asarray(affine, dtype=float)
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
            raise ValueError(
                "affine must be a finite 4x4 voxel -> RAS matrix (nibabel's img.affine), got "
                + (f"shape {matrix.shape}" if matrix.shape != (4, 4) else "NaN or infinite entries")
            )
        ndim = len(shape)
        if np.linalg.matrix_rank(matrix[:3, :ndim]) < ndim:
            raise ValueError(f"affine {matrix[:3, :ndim].tolist()}: its voxel axes are degenerate (singular)")
    if spacing is not None and np.ndim(spacing) != 1:
        raise ValueError(f"spacing must be a sequence of voxel sizes (one per spatial axis), got {spacing!r}")
    return meta_for_array(shape, affine=affine, spacing=spacing, rgb=rgb)
