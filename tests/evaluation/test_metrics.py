"""Metric functions and protocols against oracles: medpy (transunet), MONAI (strict), and hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from attnseg.metrics import (
    average_symmetric_surface_distance,
    confusion_counts,
    get_protocol,
    hausdorff_distance,
    hd95,
    hd95_pooled,
    isic_class_metrics,
    mask_surface,
    nnunet_class_metrics,
    strict_class_metrics,
    surface_distances,
    transunet_class_metrics,
)

medpy_binary = pytest.importorskip("medpy.metric.binary")  # GPL-3.0: test-time oracle only
monai_metrics = pytest.importorskip("monai.metrics")


def _blob(shape: tuple[int, ...], seed: int, density: float = 0.004, iterations: int = 2) -> np.ndarray:
    """A random non-empty blob mask (dilated random seeds); may touch the image border."""
    rng = np.random.default_rng(seed)
    seeds = rng.random(shape) < density
    seeds[tuple(rng.integers(0, s) for s in shape)] = True
    return ndimage.binary_dilation(seeds, iterations=iterations)


def _monai(fn, pred: np.ndarray, gt: np.ndarray, spacing, **kwargs) -> float:
    p = torch.from_numpy(pred.astype(np.float32))[None, None]
    g = torch.from_numpy(gt.astype(np.float32))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(p, g, include_background=True, spacing=spacing, **kwargs).item())


BLOB_CASES = [
    ((40, 36), None, 0),
    ((40, 36), (0.5, 1.7), 1),
    ((24, 28, 20), None, 2),
    ((24, 28, 20), (0.8, 0.8, 3.0), 3),  # anisotropic CT-like
    ((20, 22, 18), (2.0, 0.6, 1.1), 4),
    ((30, 30, 12), (1.0, 1.0, 5.0), 5),
]


@pytest.mark.parametrize("shape,spacing,seed", BLOB_CASES)
def test_pooled_hd95_and_dice_match_medpy(shape, spacing, seed):
    pred, gt = _blob(shape, seed), _blob(shape, seed + 100)
    assert hd95_pooled(pred, gt) == pytest.approx(medpy_binary.hd95(pred, gt), abs=1e-12)
    assert hd95_pooled(pred, gt, spacing) == pytest.approx(medpy_binary.hd95(pred, gt, voxelspacing=spacing), abs=1e-12)
    c = confusion_counts(pred, gt)
    out = transunet_class_metrics(pred, gt, spacing)
    assert out["dice"] == pytest.approx(medpy_binary.dc(pred, gt), abs=1e-12)
    assert out["hd95"] == pytest.approx(medpy_binary.hd95(pred, gt), abs=1e-12)  # voxel units: spacing ignored
    assert c["tp"] == np.count_nonzero(pred & gt) and c["tn"] == np.count_nonzero(~pred & ~gt)


@pytest.mark.parametrize("shape,spacing,seed", BLOB_CASES)
def test_strict_distances_match_monai(shape, spacing, seed):
    pred, gt = _blob(shape, seed), _blob(shape, seed + 100)
    ref_hd = _monai(monai_metrics.compute_hausdorff_distance, pred, gt, spacing, percentile=95)
    ref_assd = _monai(monai_metrics.compute_average_surface_distance, pred, gt, spacing, symmetric=True)
    ref_hd_max = _monai(monai_metrics.compute_hausdorff_distance, pred, gt, spacing)
    # MONAI works in float32: agree to float32 precision.
    assert hd95(pred, gt, spacing) == pytest.approx(ref_hd, rel=1e-5)
    assert average_symmetric_surface_distance(pred, gt, spacing) == pytest.approx(ref_assd, rel=1e-5)
    assert hausdorff_distance(pred, gt, spacing, percentile=None) == pytest.approx(ref_hd_max, rel=1e-5)
    out = strict_class_metrics(pred, gt, spacing)
    assert out["hd95"] == pytest.approx(ref_hd, rel=1e-5) and out["assd"] == pytest.approx(ref_assd, rel=1e-5)
    # The strict (max of directed) HD95 is never below medpy's pooled one.
    assert out["hd95"] >= hd95_pooled(pred, gt, spacing) - 1e-12


@pytest.mark.parametrize("shape,spacing,seed", BLOB_CASES[::2])
def test_overlap_metrics_match_monai_confusion(shape, spacing, seed):
    pred, gt = _blob(shape, seed), _blob(shape, seed + 7)
    out = strict_class_metrics(pred, gt, spacing)
    p = torch.from_numpy(pred)[None, None].float()
    g = torch.from_numpy(gt)[None, None].float()
    cm = monai_metrics.get_confusion_matrix(p, g, include_background=True)
    for name, key in (("precision", "precision"), ("sensitivity", "recall"), ("specificity", "specificity")):
        assert out[key] == pytest.approx(float(monai_metrics.compute_confusion_matrix_metric(name, cm)), rel=1e-6)
    assert out["dice"] == pytest.approx(float(monai_metrics.compute_dice(p, g, include_background=True)), rel=1e-6)
    assert out["iou"] == pytest.approx(float(monai_metrics.compute_iou(p, g, include_background=True)), rel=1e-6)


def test_bounding_box_crop_is_exact():
    # Masks touching the image border and far apart: the crop must give bit-identical distances.
    pred = np.zeros((30, 25, 20), bool)
    gt = np.zeros_like(pred)
    pred[0:6, 3:9, 0:4] = True
    pred[20:30, 20:25, 15:20] = True
    gt[2:9, 4:12, 1:6] = True
    gt[12, 12, 12] = True
    spacing = (0.7, 1.3, 2.9)
    full = surface_distances(pred, gt, spacing, crop=False)
    crop = surface_distances(pred, gt, spacing, crop=True)
    for a, b in zip(full, crop, strict=True):
        np.testing.assert_array_equal(a, b)
    assert hd95(pred, gt, spacing) == pytest.approx(
        _monai(monai_metrics.compute_hausdorff_distance, pred, gt, spacing, percentile=95), rel=1e-5
    )


def test_surface_definition_connectivity_one():
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    expected = mask.copy()
    expected[2, 2] = False  # the only voxel whose 4 face neighbours are all foreground
    np.testing.assert_array_equal(mask_surface(mask), expected)
    full = np.ones((3, 3), bool)  # foreground on the image border is surface
    np.testing.assert_array_equal(mask_surface(full), ~np.pad(np.ones((1, 1), bool), 1, constant_values=False))


def test_single_pixel_objects_hand_computed():
    pred = np.zeros((10, 12), bool)
    gt = np.zeros_like(pred)
    pred[5, 8], gt[5, 5] = True, True
    spacing = (2.0, 0.5)  # the offset is along axis 1: 3 voxels * 0.5 mm
    out = strict_class_metrics(pred, gt, spacing)
    assert out["dice"] == 0.0 and out["iou"] == 0.0
    assert out["hd95"] == pytest.approx(1.5) and out["assd"] == pytest.approx(1.5)
    assert transunet_class_metrics(pred, gt)["hd95"] == pytest.approx(3.0)  # voxels
    same = strict_class_metrics(gt, gt, spacing)
    assert same["dice"] == 1.0 and same["hd95"] == 0.0 and same["assd"] == 0.0


def test_single_pixel_inside_square_hand_computed():
    gt = np.zeros((7, 7), bool)
    gt[2:5, 2:5] = True  # 3x3 square: 8 surface voxels (4 edges at 1, 4 corners at sqrt 2 from the centre)
    pred = np.zeros_like(gt)
    pred[3, 3] = True
    r2 = math.sqrt(2)
    out = strict_class_metrics(pred, gt)
    assert out["dice"] == pytest.approx(2 * 1 / (1 + 9))
    assert out["iou"] == pytest.approx(1 / 9)
    assert out["precision"] == 1.0 and out["recall"] == pytest.approx(1 / 9)
    assert out["hd95"] == pytest.approx(r2)  # directed: pred->gt [1] -> 1; gt->pred 95th pct of [1]*4+[r2]*4 -> r2
    assert out["assd"] == pytest.approx((1 + 4 * 1 + 4 * r2) / 9)
    assert hd95_pooled(pred, gt) == pytest.approx(r2)  # pooled [1]*5+[r2]*4: 95th pct -> r2
    assert hausdorff_distance(pred, gt, percentile=0) == pytest.approx(1.0)
    assert medpy_binary.hd95(pred, gt) == pytest.approx(r2)


def test_strict_empty_mask_rules():
    z = np.zeros((6, 6, 4), bool)
    m = z.copy()
    m[1:3, 1:4, 1:3] = True
    both = strict_class_metrics(z, z, (1.0, 1.0, 2.0))
    assert both["dice"] == 1.0 and both["iou"] == 1.0 and both["precision"] == 1.0 and both["recall"] == 1.0
    assert both["hd95"] == 0.0 and both["assd"] == 0.0 and both["specificity"] == 1.0
    assert both["tn"] == z.size
    missed = strict_class_metrics(z, m, (1.0, 1.0, 2.0))
    assert missed["dice"] == 0.0 and missed["recall"] == 0.0 and missed["precision"] == 0.0
    assert math.isnan(missed["hd95"]) and math.isnan(missed["assd"]) and missed["specificity"] == 1.0
    false_pos = strict_class_metrics(m, z, (1.0, 1.0, 2.0))
    assert false_pos["dice"] == 0.0 and false_pos["precision"] == 0.0 and false_pos["recall"] == 0.0
    assert math.isnan(false_pos["hd95"]) and math.isnan(false_pos["assd"])
    assert false_pos["specificity"] == pytest.approx(1 - m.sum() / z.size)
    assert hd95(z, z) == 0.0 and math.isnan(hd95(m, z)) and math.isnan(hd95_pooled(z, m))
    with pytest.raises(ValueError, match="empty"):
        surface_distances(m, z)


def test_transunet_degenerate_rules():
    z = np.zeros((8, 8), bool)
    m = z.copy()
    m[2:5, 2:6] = True
    assert (transunet_class_metrics(m, z)["dice"], transunet_class_metrics(m, z)["hd95"]) == (1.0, 0.0)
    assert (transunet_class_metrics(z, m)["dice"], transunet_class_metrics(z, m)["hd95"]) == (0.0, 0.0)
    assert (transunet_class_metrics(z, z)["dice"], transunet_class_metrics(z, z)["hd95"]) == (0.0, 0.0)


def test_nnunet_rules():
    z = np.zeros((8, 8), bool)
    m = z.copy()
    m[2:5, 2:6] = True
    assert math.isnan(nnunet_class_metrics(z, z)["dice"]) and math.isnan(nnunet_class_metrics(z, z)["iou"])
    assert nnunet_class_metrics(z, m)["dice"] == 0.0
    proto = get_protocol("nnunet")
    agg = proto.aggregate([nnunet_class_metrics(m, m), nnunet_class_metrics(z, z), nnunet_class_metrics(z, m)])
    assert agg["dice"] == pytest.approx(0.5)  # nanmean of [1, nan, 0]
    assert agg["tp"] == 12 and agg["fn"] == 12


def test_isic_pooled_hand_computed():
    # image 1: gt 4 px, pred 4 px, overlap 2. image 2: gt empty, pred 1 px. 16 px per image.
    g1 = np.zeros((4, 4), bool)
    g1[0, 0:4] = True
    p1 = np.zeros((4, 4), bool)
    p1[0, 2:4] = p1[1, 2:4] = True
    g2, p2 = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    p2[3, 3] = True
    per_case = [isic_class_metrics(p1, g1), isic_class_metrics(p2, g2)]
    tp, fp, fn, tn = 2, 3, 2, 32 - 7
    agg = get_protocol("isic").aggregate(per_case)
    assert agg["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert agg["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert agg["accuracy"] == pytest.approx((tp + tn) / 32)
    assert agg["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert agg["specificity"] == pytest.approx(tn / (tn + fp))
    assert (agg["tp"], agg["fp"], agg["fn"], agg["tn"]) == (tp, fp, fn, tn)
    assert agg["image_mean_iou"] == pytest.approx((2 / 6 + 0.0) / 2)
    # MALUNet: zero denominators give 0.
    empty = get_protocol("isic").aggregate([isic_class_metrics(g2, g2)])
    assert empty["dice"] == 0.0 and empty["sensitivity"] == 0.0 and empty["specificity"] == 1.0


def test_invalid_arguments():
    m = np.ones((4, 4), bool)
    with pytest.raises(ValueError, match="same shape"):
        strict_class_metrics(m, np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="spacing"):
        hd95(m, m, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hd95(m, m, (1.0, -1.0))
    with pytest.raises(ValueError, match="percentile"):
        hausdorff_distance(m, m, percentile=101)
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("medpy")
