"""Deterministic preprocessing: orientation, spacing, intensity normalisation, and its exact inverse for outputs.

Two in-plane geometry modes (chosen per recipe):

- ``spacing`` (nnU-Net's): volumes are reoriented to RAS, resampled in-plane to ``target_spacing`` (image linear,
  label nearest), then cropped/padded (training) or tiled with a sliding window (inference). Right when the field of
  view or spacing varies between scans: an organ keeps its size in pixels.
- ``resize`` (the papers' protocol): each slice / 2D image is resized to the network input size (image bilinear,
  label nearest); predictions are resized back.

Normalisation per channel type (from ``dataset.json`` channel names): ``CT`` clips to the foreground intensity
percentiles of the training set and z-scores with the foreground mean/std (nnU-Net's CT scheme); ``RGB`` scales to
[0, 1]; anything else is z-scored per image.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from attnseg.data.io import ImageMeta, read_image, read_label
from attnseg.data.layout import Case, DatasetError, DatasetInfo

__all__ = ["Plan", "Geometry", "PreprocessedCase", "make_plan", "preprocess_case", "load_case", "restore_geometry"]


@dataclass
class Plan:
    """How cases are turned into network inputs; saved as ``plan.json`` in the run directory."""

    geometry: str  # "spacing" | "resize"
    input_size: list[int]  # network input (2D: H W; 3D: D H W)
    spatial_dims: int  # of the model: 2 (slice-wise) or 3
    channel_kinds: list[str]  # per channel: "ct" | "rgb" | "zscore"
    target_spacing: list[float] | None = None  # mm per array axis after reorientation (None: keep)
    ct_stats: list[dict[str, float] | None] = field(default_factory=list)  # per channel: lo, hi, mean, std
    data_is_3d: bool = True
    num_classes: int = 2
    labels: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls(**json.loads(text))


@dataclass
class Geometry:
    """What preprocessing did to one case, to map predictions back onto the original grid."""

    original_shape: tuple[int, ...]  # spatial shape as read
    ornt_transform: np.ndarray | None  # nibabel orientation transform applied (None: unchanged)
    inverse_ornt: np.ndarray | None  # transform from RAS back to the file's axes
    reoriented_shape: tuple[int, ...]
    resampled_shape: tuple[int, ...]


@dataclass
class PreprocessedCase:
    case_id: str
    image: np.ndarray  # float32 [C, *spatial]
    label: np.ndarray | None  # uint8/int16 [*spatial]
    meta: ImageMeta
    geometry: Geometry


_RAS = ("R", "A", "S")


def _reorient_transform(meta: ImageMeta, inverse: bool = False) -> np.ndarray | None:
    """nibabel orientation transform from the file's axes to RAS (or back, with ``inverse``)."""
    import nibabel as nib

    if meta.ndim != 3:
        return None
    current = nib.orientations.io_orientation(meta.affine)
    target = nib.orientations.axcodes2ornt(_RAS)
    transform = (
        nib.orientations.ornt_transform(target, current)
        if inverse
        else nib.orientations.ornt_transform(current, target)
    )
    identity = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    return None if np.array_equal(transform, identity) else transform


def _apply_ornt(array: np.ndarray, transform: np.ndarray | None, channel_first: bool) -> np.ndarray:
    import nibabel as nib

    if transform is None:
        return array
    if channel_first:
        return np.stack([nib.orientations.apply_orientation(a, transform) for a in array])
    return nib.orientations.apply_orientation(array, transform)


def _reoriented_spacing(meta: ImageMeta, transform: np.ndarray | None) -> list[float]:
    spacing = list(meta.spacing)
    if transform is None:
        return spacing
    out = [0.0] * len(spacing)
    for src_axis, (dst_axis, _) in enumerate(transform):
        out[int(dst_axis)] = spacing[src_axis]
    return out


def _resize(array: np.ndarray, size: tuple[int, ...], *, label: bool) -> np.ndarray:
    """Resize the trailing ``len(size)`` axes: linear for images, nearest for labels. Leading axes are batched."""
    import torch
    import torch.nn.functional as F

    lead = array.shape[: array.ndim - len(size)]
    if tuple(array.shape[-len(size) :]) == tuple(size):
        return array
    t = torch.from_numpy(np.ascontiguousarray(array)).reshape(-1, 1, *array.shape[-len(size) :])
    if label:
        out = F.interpolate(t.float(), size=size, mode="nearest-exact").to(t.dtype)
    else:
        mode = "bilinear" if len(size) == 2 else "trilinear"
        out = F.interpolate(t.float(), size=size, mode=mode, align_corners=False)
    return out.reshape(*lead, *size).numpy()


def _normalise(image: np.ndarray, plan: Plan) -> np.ndarray:
    out = np.empty(image.shape, dtype=np.float32)
    for c, kind in enumerate(plan.channel_kinds):
        x = image[c].astype(np.float32)
        if kind == "rgb":
            out[c] = x / 255.0
        elif kind == "ct":
            stats = plan.ct_stats[c] if c < len(plan.ct_stats) else None
            if stats is None:
                lo, hi = np.percentile(x, [0.5, 99.5])
                mean, std = float(x.mean()), float(x.std())
            else:
                lo, hi, mean, std = stats["lo"], stats["hi"], stats["mean"], stats["std"]
            out[c] = (np.clip(x, lo, hi) - mean) / max(std, 1e-8)
        else:
            out[c] = (x - x.mean()) / max(float(x.std()), 1e-8)
    return out


def load_case(case: Case, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray | None, ImageMeta]:
    """Read a case's channels and label, checking shapes, geometry and label values against ``dataset.json``."""
    channels, meta = [], None
    for path in case.images:
        arr, m = read_image(path)
        if meta is not None and arr.shape[1:] != channels[0].shape[1:]:
            raise DatasetError(f"{path}: channel shape {arr.shape[1:]} differs from {case.images[0].name}")
        channels.append(arr)
        meta = meta or m
    image = np.concatenate(channels, axis=0)
    if info.is_rgb and image.shape[0] != 3:
        raise DatasetError(f"{case.images[0]}: dataset.json declares RGB but the image has {image.shape[0]} channel(s)")
    if not info.is_rgb and image.shape[0] != info.num_channels:
        raise DatasetError(f"{case.images[0]}: expected {info.num_channels} channel(s), found {image.shape[0]}")
    label = None
    if case.label is not None:
        label, lmeta = read_label(case.label)
        if label.shape != image.shape[1:]:
            raise DatasetError(f"{case.label}: label shape {label.shape} differs from image shape {image.shape[1:]}")
        if meta.ndim == 3 and not np.allclose(lmeta.spacing, meta.spacing, rtol=1e-3, atol=1e-4):
            raise DatasetError(
                f"{case.label}: label spacing {tuple(round(s, 4) for s in lmeta.spacing)} differs from image spacing "
                f"{tuple(round(s, 4) for s in meta.spacing)}"
            )
        present = np.unique(label)
        unknown = sorted(set(present.tolist()) - set(info.label_values))
        if unknown:
            raise DatasetError(f"{case.label}: label values {unknown} are not in dataset.json labels {info.labels}")
    return image, label, meta


def make_plan(
    info: DatasetInfo,
    train_ids: list[str],
    *,
    geometry: str,
    input_size: list[int],
    spatial_dims: int,
    target_spacing: list[float] | None = None,
    ct_window: tuple[float, float] = (0.5, 99.5),
    ct_clip_hu: tuple[float, float] | None = None,
    max_samples_per_case: int = 100_000,
    seed: int = 0,
) -> Plan:
    """Fingerprint the training cases (spacing, CT foreground intensities) into a :class:`Plan`.

    CT channels are clipped to the ``ct_window`` percentiles of the training foreground (nnU-Net), or to the fixed
    ``ct_clip_hu`` window when given (robust when test scans differ in contrast phase), then z-scored with the
    clipped foreground's mean and std.
    """
    kinds = [info.channel_kind(c) for c in range(info.num_channels)]
    if info.is_rgb:
        kinds = ["rgb"] * 3
    rng = np.random.default_rng(seed)
    spacings, fg_values = [], [[] for _ in kinds]
    data_is_3d = True
    for cid in train_ids:
        image, label, meta = load_case(info.cases[cid], info)
        data_is_3d = meta.ndim == 3
        spacings.append(_reoriented_spacing(meta, _reorient_transform(meta)))
        if "ct" in kinds and label is not None:
            mask = label > 0
            for c, kind in enumerate(kinds):
                if kind == "ct":
                    vals = image[c][mask] if mask.any() else image[c].ravel()
                    if vals.size > max_samples_per_case:
                        vals = rng.choice(vals, max_samples_per_case, replace=False)
                    fg_values[c].append(vals.astype(np.float32))
    ct_stats: list[dict[str, float] | None] = []
    for c, kind in enumerate(kinds):
        if kind == "ct" and fg_values[c]:
            v = np.concatenate(fg_values[c])
            lo, hi = ct_clip_hu if ct_clip_hu is not None else np.percentile(v, ct_window)
            clipped = np.clip(v, lo, hi)
            ct_stats.append(
                {"lo": float(lo), "hi": float(hi), "mean": float(clipped.mean()), "std": float(clipped.std())}
            )
        else:
            ct_stats.append(None)
    spacing = None
    if geometry == "spacing" and data_is_3d:
        median = np.median(np.asarray(spacings), axis=0).tolist()
        if target_spacing is not None:
            ts = list(target_spacing)
            median[: len(ts)] = ts  # in-plane (and through-plane if 3 values given)
        if spatial_dims == 2:
            spacing = [median[0], median[1], -1.0]  # -1: keep the slice spacing
        else:
            spacing = median
    return Plan(
        geometry=geometry,
        input_size=list(input_size),
        spatial_dims=spatial_dims,
        channel_kinds=kinds,
        target_spacing=spacing,
        ct_stats=ct_stats,
        data_is_3d=data_is_3d,
        num_classes=info.num_classes,
        labels=dict(info.labels),
    )


MAX_UPSAMPLING = 16  # per axis, from the image's spacing to the plan's: above it the header is wrong, not the data


def preprocess_case(
    case_id: str, image: np.ndarray, label: np.ndarray | None, meta: ImageMeta, plan: Plan
) -> PreprocessedCase:
    """Reorient (3D), resample (``spacing`` geometry) and normalise one case."""
    shape = tuple(image.shape[1:])
    transform = _reorient_transform(meta) if meta.ndim == 3 else None
    image = _apply_ornt(image, transform, channel_first=True)
    if label is not None:
        label = _apply_ornt(label, transform, channel_first=False)
    reoriented = tuple(image.shape[1:])
    new_shape = reoriented
    if plan.geometry == "resize" and meta.ndim == 2:  # 2D images: resize once here, not per sample
        new_shape = tuple(plan.input_size)
        image = _resize(image.astype(np.float32), new_shape, label=False)
        if label is not None:
            label = _resize(label, new_shape, label=True)
    elif plan.geometry == "spacing" and plan.target_spacing is not None and meta.ndim == 3:
        spacing = _reoriented_spacing(meta, transform)
        new_shape = tuple(
            n if t <= 0 else max(1, int(round(n * s / t))) for n, s, t in zip(reoriented, spacing, plan.target_spacing)
        )
        factors = [m / n for m, n in zip(new_shape, reoriented, strict=True)]
        axis = int(np.argmax(factors))
        if factors[axis] > MAX_UPSAMPLING:  # a wrong header (pixdim in cm, 50 mm pixels): hours of resampling else
            raise DatasetError(
                f"{meta.path or f'case {case_id!r}'}: voxel spacing {tuple(round(float(v), 4) for v in spacing)} mm; "
                f"resampling to the model's {plan.target_spacing[axis]:g} mm would enlarge axis {axis} "
                f"{factors[axis]:.0f}x (to {new_shape} voxels, limit {MAX_UPSAMPLING}x); check the spacing in the "
                "file's header"
            )
        if new_shape != reoriented:
            image = _resample(image, new_shape, label=False)
            if label is not None:
                label = _resample(label[None], new_shape, label=True)[0]
    image = _normalise(image, plan)
    geometry = Geometry(
        original_shape=shape,
        ornt_transform=transform,
        inverse_ornt=_reorient_transform(meta, inverse=True) if meta.ndim == 3 else None,
        reoriented_shape=reoriented,
        resampled_shape=new_shape,
    )
    return PreprocessedCase(case_id, np.ascontiguousarray(image, dtype=np.float32), label, meta, geometry)


def _resample(array: np.ndarray, shape: tuple[int, ...], *, label: bool) -> np.ndarray:
    """Resample ``[C, X, Y, Z]`` to ``shape``; only axes whose size changes are interpolated."""
    same_z = len(shape) == 3 and array.shape[-1] == shape[-1]
    if same_z:  # in-plane only: treat Z as batch, so slices never mix
        moved = np.moveaxis(array, -1, 1)  # [C, Z, X, Y]
        out = _resize(moved, shape[:2], label=label)
        return np.moveaxis(out, 1, -1)
    return _resize(array, shape, label=label)


def restore_geometry(prediction: np.ndarray, geometry: Geometry, *, is_label: bool) -> np.ndarray:
    """Map a prediction on the preprocessed grid (``[*spatial]`` labels or ``[C, *spatial]`` scores) back."""
    lead = prediction.ndim - len(geometry.resampled_shape)
    arr = prediction if lead else prediction[None]
    if tuple(arr.shape[1:]) != tuple(geometry.reoriented_shape):
        arr = _resample(arr, geometry.reoriented_shape, label=is_label)
    if geometry.inverse_ornt is not None:
        arr = _apply_ornt(arr, geometry.inverse_ornt, channel_first=True)
    arr = np.ascontiguousarray(arr)
    return arr if lead else arr[0]
