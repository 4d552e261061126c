"""Preprocessing geometry and the deterministic, foreground-aware slice sampler."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from attnseg.config import AugmentConfig
from attnseg.data.datasets import (
    CaseCache,
    SliceSampler,
    build_augmentation,
    crop_or_pad,
    share_random_state,
    slab_indices,
)
from attnseg.data.io import read_image
from attnseg.data.layout import load_dataset
from attnseg.data.preprocess import Plan, load_case, make_plan, preprocess_case, restore_geometry


def _plan(**kw) -> Plan:
    base = dict(geometry="spacing", input_size=[32, 32], spatial_dims=2, channel_kinds=["zscore"])
    base.update(kw)
    return Plan(**base)


def test_reorientation_and_resampling_invert_exactly(tmp_path):
    # LPI-like oblique-free affine with anisotropic spacing: reorient to RAS, resample, then map back
    affine = np.array([[0, 0, -2.0, 10], [-0.7, 0, 0, 5], [0, 0.9, 0, 3], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    label = np.zeros((30, 40, 12), np.uint8)
    label[5:20, 10:30, 3:9] = 1
    nib.save(nib.Nifti1Image(rng.normal(size=label.shape).astype(np.float32), affine), tmp_path / "a.nii.gz")
    image, meta = read_image(tmp_path / "a.nii.gz")
    case = preprocess_case("a", image, label, meta, _plan(target_spacing=None))
    assert case.image.shape[1:] == (12, 30, 40)  # RAS axes: x (2 mm), y (0.7 mm), z (0.9 mm)
    assert np.array_equal(restore_geometry(case.label, case.geometry, is_label=True), label)
    case = preprocess_case("a", image, label, meta, _plan(target_spacing=[1.4, 1.4, -1]))
    assert case.image.shape[1:] == (17, 15, 40)  # 12*2/1.4, 30*0.7/1.4; slices kept
    back = restore_geometry(case.label, case.geometry, is_label=True)
    assert back.shape == label.shape and (back == label).mean() > 0.95
    np.testing.assert_allclose(case.image.mean(), 0, atol=0.05)  # z-scored


def test_ct_normalisation_uses_training_foreground_statistics(ct_dataset):
    info = load_dataset(ct_dataset)
    plan = make_plan(info, info.training_cases(), geometry="spacing", input_size=[32, 32], spatial_dims=2)
    stats = plan.ct_stats[0]
    assert plan.channel_kinds == ["ct"] and stats["lo"] < 60 < stats["hi"] and 40 < stats["mean"] < 200
    image, label, meta = load_case(info.cases["train000"], info)
    case = preprocess_case("train000", image, label, meta, plan)
    expected = (np.clip(image[0].astype(np.float32), stats["lo"], stats["hi"]) - stats["mean"]) / stats["std"]
    assert np.allclose(case.image[0], expected, atol=1e-5)  # same grid: 1.5 mm spacing is the median already


def test_crop_or_pad_and_slab_edges():
    a = np.arange(25).reshape(5, 5)
    (c,) = crop_or_pad([a], center=(0, 0), size=(3, 3), pad_values=[-1])
    assert np.array_equal(c, a[:3, :3])  # shifted inside rather than padded when the image is big enough
    (c,) = crop_or_pad([a], center=(2, 2), size=(7, 7), pad_values=[-1])
    assert c.shape == (7, 7) and np.array_equal(c[1:6, 1:6], a) and c[0, 0] == -1
    assert slab_indices(0, 10, 3).tolist() == [0, 0, 1] and slab_indices(9, 10, 5).tolist() == [7, 8, 9, 9, 9]


@pytest.fixture(scope="module")
def cache_and_plan(ct_dataset):
    info = load_dataset(ct_dataset)
    ids = info.training_cases()
    plan = make_plan(info, ids, geometry="spacing", input_size=[32, 32], spatial_dims=2)
    cases = [preprocess_case(c, *load_case(info.cases[c], info), plan) for c in ids]
    return CaseCache(cases, 2), plan


def test_samples_are_a_pure_function_of_seed_and_index(cache_and_plan):
    cache, plan = cache_and_plan
    a = SliceSampler(cache, plan, 50, seed=3, augment=AugmentConfig())
    b = SliceSampler(cache, plan, 50, seed=3, augment=AugmentConfig())
    for i in (0, 7, 49):
        x1, y1 = a.sample(i)
        x2, y2 = b.sample(i)
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert x1.shape == (1, 32, 32) and y1.shape == (32, 32) and y1.dtype == np.int64
    assert not np.array_equal(a.sample(1)[0], a.sample(2)[0])


def test_foreground_oversampling_rate(cache_and_plan):
    cache, plan = cache_and_plan
    fg_rate = {}
    for p in (0.0, 1.0):
        s = SliceSampler(cache, plan, 200, seed=0, foreground_prob=p, augment=None)
        # the label voxel at the crop centre is foreground whenever the centre was drawn from the foreground list
        fg_rate[p] = np.mean([s.sample(i)[1][16, 16] > 0 for i in range(200)])
    assert fg_rate[1.0] == 1.0 and fg_rate[0.0] < 0.5


def test_slab_samples_stack_adjacent_slices(cache_and_plan):
    cache, plan = cache_and_plan
    s = SliceSampler(cache, plan, 10, seed=0, augment=None, slab_size=3, foreground_prob=1.0)
    x, y = s.sample(0)
    assert x.shape == (1, 3, 32, 32) and y.shape == (32, 32)
    single = SliceSampler(cache, plan, 10, seed=0, augment=None, slab_size=1, foreground_prob=1.0)
    xs, ys = single.sample(0)
    assert np.array_equal(x[:, 1], xs) and np.array_equal(y, ys)  # centre slice = the single-slice sample


def _offsets(diff: np.ndarray, label: np.ndarray) -> dict[int, float]:
    """The one offset ``diff`` adds on each value of ``label`` (asserting it is one value per structure)."""
    found = {}
    for value in np.unique(label):
        values = diff[label == value]
        assert np.ptp(values) < 1e-5, f"structure {value}: offsets {values.min()}..{values.max()}"
        found[int(value)] = float(values[0])
    return found


@pytest.mark.parametrize("slab", [1, 3])
def test_label_shift_moves_each_structure_by_its_own_offset(cache_and_plan, slab):
    """``label_shift``: background untouched, every structure shifted by one offset in its range, drawn anew per
    structure and per sample; a slab's neighbour slices are shifted on their own masks."""
    cache, plan = cache_and_plan
    off = AugmentConfig(flip=0, rotate=0, scale=0, intensity=0, noise=0)
    on = AugmentConfig(flip=0, rotate=0, scale=0, intensity=0, noise=0, label_shift=1.0, label_shift_range=(2, 3))
    plain = SliceSampler(cache, plan, 40, seed=5, foreground_prob=1.0, augment=off, slab_size=slab)
    shifted = SliceSampler(cache, plan, 40, seed=5, foreground_prob=1.0, augment=on, slab_size=slab)
    seen = []
    for i in range(12):
        (x0, y0), (x1, y1) = plain.sample(i), shifted.sample(i)
        assert np.array_equal(y0, y1)
        centre = (x1 - x0)[:, slab // 2] if slab > 1 else x1 - x0
        offsets = _offsets(centre[0], y1)
        assert offsets.pop(0) == 0.0 and all(2 <= v <= 3 for v in offsets.values()), offsets
        seen += offsets.values()
        if slab > 1:  # neighbour slices: one offset per structure of the slab (2 here), background untouched
            slab_offsets = set(np.unique(np.round(x1 - x0, 3)).tolist()) - {0.0}
            assert len(slab_offsets) <= 2 and all(2 <= v <= 3 for v in slab_offsets), slab_offsets
            assert set(np.round(np.float32(list(offsets.values())), 3).tolist()) <= slab_offsets
    assert len(seen) >= 12 and len(set(np.round(seen, 6))) == len(seen)  # a new draw per structure and sample
    # the draw is part of the sample: same seed and index, same image
    assert np.array_equal(
        shifted.sample(3)[0],
        SliceSampler(cache, plan, 40, seed=5, foreground_prob=1.0, augment=on, slab_size=slab).sample(3)[0],
    )


def test_3d_rotation_stays_in_the_axial_plane():
    import torch

    aug = build_augmentation(AugmentConfig(flip=0, rotate=1.0, rotate_degrees=90, scale=0, intensity=0, noise=0), 3)
    image = np.zeros((1, 15, 15, 5), np.float32)
    image[0, 2:13, 7, :] = 1  # a sheet along axes 0 and 2
    rotated_any = False
    for seed in range(5):
        aug.set_random_state(seed=seed)
        out = aug({"image": torch.from_numpy(image), "label": torch.from_numpy(image.astype(np.int64))})
        rot = np.asarray(out["image"])[0]
        assert np.allclose(rot.sum((0, 1)), rot.sum((0, 1))[0], atol=1e-3)  # every slice gets the same turn
        rotated_any |= not np.allclose(rot, image[0], atol=1e-3)
    assert rotated_any


def _random_transforms(obj, found=None):
    """Every MONAI Randomizable reachable from ``obj`` through attributes and lists (the test's own walk)."""
    from monai.transforms import Randomizable

    found = {} if found is None else found
    if id(obj) in found or not hasattr(obj, "__dict__"):
        return found
    if isinstance(obj, Randomizable):
        found[id(obj)] = obj
    for value in vars(obj).values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if hasattr(item, "__dict__") and type(item).__module__.startswith("monai"):
                _random_transforms(item, found)
    return found


@pytest.mark.parametrize("dims", [2, 3])
def test_one_shared_random_state_reseeded_in_place(dims):
    import torch

    cfg = AugmentConfig(flip=0.5, rot90=0.5, rotate=0.5, scale=0.5, intensity=0.5, noise=0.5)
    aug = build_augmentation(cfg, dims)
    state = share_random_state(aug)
    transforms = _random_transforms(aug).values()
    assert len(transforms) > len(aug.transforms) + 1  # Compose, its transforms and the array transforms they wrap
    assert all(t.R is state for t in transforms)
    shape = (1, 12, 10) if dims == 2 else (1, 12, 10, 6)
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)

    def run(seed):
        state.seed(seed)
        out = aug({"image": torch.from_numpy(image.copy()), "label": torch.from_numpy((image > 0).astype(np.int64))})
        return np.asarray(out["image"])

    first = [run(s) for s in (1, 2, 3)]
    again = [run(s) for s in (3, 2, 1)][::-1]  # order of calls does not matter, only the seed
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], first[1])
