"""What the viewer page shows: slices of the image and of its label map as PNGs, and per-label volumes or areas.

Volumes are shown as axial slices in the radiological view that ``attnseg predict --overlay`` uses (reoriented to
RAS; anterior up, the patient's right on the left; :func:`attnseg.inference.overlay.save_overlay`), slice 0 the most
inferior. CT-trained runs show Hounsfield units in a soft-tissue window (W 400, L 40: -160..240 HU, the demo's
``ct_clip_hu``); other images a 0.5-99.5 percentile window. The mask is a separate RGBA PNG in the colours of the
legend, transparent where the label is background, so the page stacks two images and sets the overlay's opacity.

Sizes (the legend's numbers) are counted on the label map as predicted, on the input's own grid: a volume's voxels
times the voxel volume (the product of the voxel sizes, NIfTI ``pixdim`` / DICOM spacing), in ml; a 2D image's
pixels times the pixel area in mm^2. A PNG or JPEG has unit spacing in attnseg (as in evaluation, where its
distances are reported in "mm"), so its area in mm^2 is its pixel count.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from attnseg.data.io import ImageMeta
from attnseg.inference.overlay import PALETTE, to_ras

__all__ = ["CT_WINDOW", "Display", "LabelSize", "display_stack", "label_sizes", "mask_rgba", "png_bytes"]

CT_WINDOW = (-160.0, 240.0)  # HU: soft-tissue window, W 400 / L 40
_PERCENTILE_SAMPLES = 2_000_000  # voxels the percentile window is estimated from


@dataclass(frozen=True)
class LabelSize:
    """One legend row: a foreground label, its colour, its voxel (pixel) count and size in ``unit``."""

    value: int
    name: str
    color: str  # "#rrggbb"
    voxels: int
    size: float  # ml for volumes, mm^2 for 2D images
    unit: str  # "ml" | "mm2"


@dataclass
class Display:
    """The slices the page shows: ``image`` ``[slices, rows, cols]`` (or ``[..., 3]`` RGB) uint8, ``labels``
    ``[slices, rows, cols]`` on the same pixels; ``pixel_mm`` the (row, column) pixel size of a slice."""

    image: np.ndarray
    labels: np.ndarray
    pixel_mm: tuple[float, float]

    @property
    def slices(self) -> int:
        return int(self.labels.shape[0])

    def busiest_slice(self) -> int:
        """The slice with the most foreground pixels (the middle one when there is none)."""
        counts = (self.labels > 0).reshape(self.slices, -1).sum(1)
        return int(np.argmax(counts)) if counts.any() else self.slices // 2


def color_of(value: int) -> tuple[int, int, int]:
    """The overlay colour of label ``value`` (>= 1), as ``attnseg predict --overlay`` draws it."""
    r, g, b = (int(c) for c in PALETTE[(value - 1) % len(PALETTE)])
    return r, g, b


def label_sizes(
    labels: np.ndarray, meta: ImageMeta, names: dict[int, str], num_classes: int
) -> tuple[str, list[LabelSize]]:
    """The legend: ``(unit, rows)``, one row per foreground class of the run (absent ones with size 0)."""
    counts = np.bincount(np.asarray(labels).ravel().astype(np.int64), minlength=max(num_classes, 2))
    cell = float(np.prod(meta.spacing))  # mm^3 per voxel, or mm^2 per pixel
    volume = meta.ndim == 3
    unit = "ml" if volume else "mm2"
    rows = []
    for value in range(1, len(counts)):
        r, g, b = color_of(value)
        count = int(counts[value])
        size = count * cell / 1000.0 if volume else count * cell
        name = names.get(value, f"label {value}")
        rows.append(LabelSize(value, name, f"#{r:02x}{g:02x}{b:02x}", count, size, unit))
    return unit, rows


def _window(channel: np.ndarray, ct: bool) -> tuple[float, float]:
    flat = channel.ravel()
    if flat.size > _PERCENTILE_SAMPLES:
        flat = flat[:: flat.size // _PERCENTILE_SAMPLES + 1]
    lo, hi = (float(v) for v in np.percentile(flat, [0.5, 99.5]))
    if ct and lo < -500:  # air present: Hounsfield units, so the soft-tissue window
        return CT_WINDOW
    return lo, hi if hi > lo else lo + 1.0


def _to_uint8(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (np.asarray(array, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def display_stack(image: np.ndarray, labels: np.ndarray, meta: ImageMeta, *, ct: bool) -> Display:
    """The page's slices of ``image`` ``[C, *spatial]`` and ``labels`` ``[*spatial]`` (see the module docstring)."""
    labels = np.asarray(labels)
    if meta.ndim == 2:
        if meta.rgb and image.shape[0] == 3:
            rgb = np.moveaxis(image, 0, -1)
            shown = rgb if rgb.dtype == np.uint8 else _to_uint8(rgb, *_window(rgb, False))
        else:
            shown = _to_uint8(image[0], *_window(image[0], ct))
        spacing = (float(meta.spacing[0]), float(meta.spacing[1]))
        return Display(shown[None], labels[None], spacing)
    import nibabel as nib

    ras_image, ras_labels = to_ras([np.asarray(image[0]), labels], meta.affine)
    ornt = nib.orientations.io_orientation(meta.affine)
    ras_spacing = [1.0, 1.0, 1.0]
    for axis, (target, _) in enumerate(ornt):
        ras_spacing[int(target)] = float(meta.spacing[axis])
    lo, hi = _window(ras_image, ct)
    # [x, y, z] (R, A, S) -> [z, rows, cols]: rows anterior first, columns the patient's right first
    shown = np.stack([_to_uint8(ras_image[::-1, ::-1, z].T, lo, hi) for z in range(ras_image.shape[2])])
    view = np.ascontiguousarray(np.transpose(ras_labels[::-1, ::-1, :], (2, 1, 0)))
    return Display(shown, view, (ras_spacing[1], ras_spacing[0]))


def mask_rgba(labels: np.ndarray) -> np.ndarray:
    """``labels`` ``[rows, cols]`` as RGBA: each label in its legend colour, opaque; background transparent."""
    lut = np.zeros((max(int(labels.max(initial=0)) + 1, 2), 4), np.uint8)
    for value in range(1, len(lut)):
        lut[value] = (*color_of(value), 255)
    return lut[np.asarray(labels).astype(np.int64)]


def png_bytes(array: np.ndarray) -> bytes:
    """``array`` (``[rows, cols]`` gray, ``[..., 3]`` RGB or ``[..., 4]`` RGBA, uint8) as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
