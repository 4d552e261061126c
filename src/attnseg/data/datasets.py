"""Training samples drawn from preprocessed cases.

Every training sample ``i`` is a pure function of ``(seed, i)``: which case, which slice, where to crop and which
augmentation. Data therefore do not depend on the number of workers, and a resumed run sees exactly the samples an
uninterrupted run would have seen.

2D models on 3D volumes train slice by slice (the Synapse/ACDC protocol); a share ``foreground_prob`` of samples is
centred on a voxel of a randomly chosen foreground class present in the case (nnU-Net's class-aware oversampling), the
rest are uniform. Models that read a slab of K adjacent slices (SALSTM/LSTMSA) get ``[C, K, H, W]`` inputs with edge
slices replicated and the centre slice's label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from attnseg.config import AugmentConfig
from attnseg.data.preprocess import Plan, PreprocessedCase, _resize

__all__ = ["CaseCache", "SliceSampler", "build_augmentation", "crop_or_pad", "shift_label_intensities", "slab_indices"]


class CaseCache:
    """Preprocessed cases held in memory, with per-class foreground voxel indices for oversampling."""

    def __init__(
        self, cases: Sequence[PreprocessedCase], spatial_dims: int, max_fg_per_class: int = 20_000, seed: int = 0
    ) -> None:
        self.cases = list(cases)
        self.spatial_dims = spatial_dims
        rng = np.random.default_rng(seed)
        self.fg: list[dict[int, np.ndarray]] = []
        for c in self.cases:
            per_class: dict[int, np.ndarray] = {}
            if c.label is not None:
                for value in np.unique(c.label):
                    if value == 0:
                        continue
                    idx = np.argwhere(c.label == value)
                    if len(idx) > max_fg_per_class:
                        idx = idx[rng.choice(len(idx), max_fg_per_class, replace=False)]
                    per_class[int(value)] = idx.astype(np.int32)
            self.fg.append(per_class)
        # 2D models on volumes: sample cases in proportion to their slice count
        if spatial_dims == 2:
            counts = np.array([c.image.shape[-1] if c.image.ndim == 4 else 1 for c in self.cases], dtype=float)
        else:
            counts = np.ones(len(self.cases))
        self.case_weights = counts / counts.sum()

    @property
    def num_slices(self) -> int:
        return int(sum(c.image.shape[-1] if c.image.ndim == 4 else 1 for c in self.cases))


def slab_indices(center: int, depth: int, slab: int) -> np.ndarray:
    """Indices of ``slab`` adjacent slices around ``center``, replicating edge slices."""
    half = slab // 2
    return np.clip(np.arange(center - half, center + half + 1), 0, depth - 1)


def crop_or_pad(
    arrays: list[np.ndarray], center: Sequence[int], size: Sequence[int], pad_values: Sequence[float]
) -> list[np.ndarray]:
    """Crop the trailing ``len(size)`` axes of each array to ``size`` around ``center``, padding outside."""
    out = []
    spatial = [a.shape[-len(size) :] for a in arrays][0]
    starts = [int(c) - s // 2 for c, s in zip(center, size)]
    starts = [
        min(max(st, min(0, n - s)), max(n - s, 0)) if n >= s else (n - s) // 2
        for st, n, s in zip(starts, spatial, size)
    ]
    for a, pad_value in zip(arrays, pad_values):
        lead = a.shape[: a.ndim - len(size)]
        result = np.full((*lead, *size), pad_value, dtype=a.dtype)
        src, dst = [], []
        for st, n, s in zip(starts, spatial, size):
            lo, hi = max(st, 0), min(st + s, n)
            src.append(slice(lo, hi))
            dst.append(slice(lo - st, lo - st + (hi - lo)))
        result[(..., *dst)] = a[(..., *src)]
        out.append(result)
    return out


def shift_label_intensities(
    image: np.ndarray, label: np.ndarray, offsets: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """``image`` ``[C, *spatial]`` plus one offset drawn from ``U(*offsets)`` per foreground value of ``label``
    (``[*spatial]``, the image's trailing axes), the same in every channel; background is unchanged."""
    out = image.astype(np.float32, copy=True)
    for value in np.unique(label):
        if value != 0:
            out[..., label == value] += rng.uniform(*offsets)
    return out


def build_augmentation(cfg: AugmentConfig, spatial_dims: int):
    """MONAI dictionary transforms on ``{"image": [C, *spatial], "label": [1, *spatial]}``."""
    from monai import transforms as T

    keys = ["image", "label"]
    axes = list(range(spatial_dims))
    ops = []
    if cfg.flip > 0:
        ops += [T.RandFlipd(keys, prob=cfg.flip, spatial_axis=a) for a in axes[-2:]]
    if cfg.rot90 > 0:
        ops.append(T.RandRotate90d(keys, prob=cfg.rot90, spatial_axes=(axes[-2], axes[-1])))
    if cfg.rotate > 0:
        rad = float(np.deg2rad(cfg.rotate_degrees))
        # in-plane rotation: MONAI's range_x for 2D; for volumes, range_z turns within the plane of axes 0-1
        # (the axial plane after RAS reorientation), the slice axis staying put
        plane = {"range_x": rad} if spatial_dims == 2 else {"range_x": 0.0, "range_z": rad}
        ops.append(
            T.RandRotated(
                keys, **plane, prob=cfg.rotate, mode=("bilinear", "nearest"), padding_mode="zeros", keep_size=True
            )
        )
    if cfg.scale > 0:
        ops.append(
            T.RandZoomd(
                keys,
                prob=cfg.scale,
                min_zoom=cfg.scale_range[0],
                max_zoom=cfg.scale_range[1],
                mode=("bilinear", "nearest-exact"),
                keep_size=True,
            )
        )
    if cfg.intensity > 0:
        ops.append(T.RandScaleIntensityd("image", factors=cfg.intensity_scale, prob=cfg.intensity))
        ops.append(T.RandShiftIntensityd("image", offsets=cfg.intensity_shift, prob=cfg.intensity))
    if cfg.noise > 0:
        ops.append(T.RandGaussianNoised("image", prob=cfg.noise, std=0.1))
    return T.Compose(ops) if ops else None


def share_random_state(transform) -> np.random.RandomState:
    """Point every random transform in ``transform`` (nested ones included) at one new ``RandomState``; return it.

    ``Compose.set_random_state(seed)`` builds a new ``RandomState`` for each random transform, every call: about
    0.3 ms each (numpy gathers OS entropy before seeding), 2-5 ms per sample for a typical pipeline. Re-seeding the
    one shared state in place (``state.seed(s)``) costs microseconds; the transforms draw from it in the order
    ``Compose`` applies them, so a sample stays a pure function of the seed."""
    from monai.transforms import Randomizable

    state = np.random.RandomState(0)
    seen: set[int] = set()

    def visit(obj) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            obj.set_random_state(state=state)
        children = getattr(obj, "transforms", None) or ()
        for value in [*children, *vars(obj).values()]:
            for item in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(item, Randomizable) or hasattr(item, "transforms"):
                    visit(item)

    visit(transform)
    return state


class SliceSampler(Dataset):
    """``len`` = samples in the run; item ``i`` = (image ``[C, *input]`` or ``[C, K, H, W]``, label ``[*input]``)."""

    def __init__(
        self,
        cache: CaseCache,
        plan: Plan,
        num_samples: int,
        seed: int,
        *,
        foreground_prob: float = 0.33,
        augment: AugmentConfig | None = None,
        slab_size: int = 1,
    ) -> None:
        self.cache = cache
        self.plan = plan
        self.num_samples = num_samples
        self.seed = seed
        self.foreground_prob = foreground_prob
        self.slab = slab_size
        self.size = tuple(plan.input_size)
        self.aug_cfg = augment
        self._aug = None  # built lazily per worker (MONAI transforms hold their own RNG)
        self._aug_state: np.random.RandomState | None = None  # the one RNG all of them draw from

    def __len__(self) -> int:
        return self.num_samples

    def _augment(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        if self.aug_cfg is None or self._aug is False:
            return image, label
        if self._aug is None:
            self._aug = build_augmentation(self.aug_cfg, len(self.size)) or False  # False: nothing to apply
            if self._aug is False:
                return image, label
            self._aug_state = share_random_state(self._aug)
        from monai.data import get_track_meta, set_track_meta

        self._aug_state.seed(int(rng.integers(2**31 - 1)))
        tracking = get_track_meta()
        set_track_meta(False)  # plain tensors: a third less time per sample than MetaTensors, the same values
        try:
            out = self._aug({"image": torch.from_numpy(image), "label": torch.from_numpy(label[None])})
        finally:
            set_track_meta(tracking)
        return np.asarray(out["image"]), np.asarray(out["label"])[0]

    def _pick_center(self, case_index: int, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
        fg = self.cache.fg[case_index]
        if fg and rng.random() < self.foreground_prob:
            cls = list(fg)[int(rng.integers(len(fg)))]
            idx = fg[cls]
            return idx[int(rng.integers(len(idx)))]
        return np.array([int(rng.integers(n)) for n in shape])

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, i))
        ci = int(rng.choice(len(self.cache.cases), p=self.cache.case_weights))
        case = self.cache.cases[ci]
        image, label = case.image, case.label
        volume_2d = self.plan.spatial_dims == 2 and image.ndim == 4
        center = self._pick_center(ci, label.shape, rng)
        if volume_2d:  # one slice (or slab) along the last axis
            z = int(center[-1])
            zs = slab_indices(z, image.shape[-1], self.slab)
            image = image[..., zs]  # [C, X, Y, K]
            image = np.moveaxis(image, -1, 1) if self.slab > 1 else image[..., 0]  # [C, K, X, Y] or [C, X, Y]
            label = label[..., zs]  # [X, Y, K]: each slice's own mask for the per-structure intensity shift
            label = np.moveaxis(label, -1, 0) if self.slab > 1 else label[..., 0]
            center = center[:-1]
        if self.plan.geometry == "resize":
            image = _resize(image.astype(np.float32), self.size, label=False)
            label = _resize(label, self.size, label=True)
        else:
            image, label = crop_or_pad([image, label], center, self.size, [float(image.min()), 0])
        aug = self.aug_cfg
        if aug is not None and aug.label_shift > 0 and rng.random() < aug.label_shift:
            image = shift_label_intensities(image, label, aug.label_shift_range, rng)
        if label.ndim > len(self.size):  # a slab's masks: the model learns the centre slice
            label = label[label.shape[0] // 2]
        if self.slab > 1:  # augment the slab as channels so all slices get the same transform
            c, k = image.shape[:2]
            img2, label = self._augment(image.reshape(c * k, *image.shape[2:]), label, rng)
            image = img2.reshape(c, k, *img2.shape[1:])
        else:
            image, label = self._augment(image, label, rng)
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label).astype(np.int64)

    def __getitem__(self, i: int):
        image, label = self.sample(i)
        return torch.from_numpy(image), torch.from_numpy(label)
