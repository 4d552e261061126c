"""Segmentation metrics and the named evaluation protocols, as pure numpy/scipy functions.

Building blocks (binary masks in, numbers out):

- overlap from confusion counts: :func:`confusion_counts`, :func:`dice_from_counts`, :func:`iou_from_counts`,
  :func:`precision_from_counts`, :func:`recall_from_counts`, :func:`specificity_from_counts`;
- surfaces and distances: :func:`mask_surface` (mask XOR its erosion by the connectivity-1 structuring element, the
  definition medpy and MONAI use), :func:`surface_distances` (directed distances between the two surfaces from
  scipy's exact Euclidean distance transform, in mm when ``spacing`` is given), and from them
  :func:`hausdorff_distance` (HD95 = the larger of the two directed 95th percentiles, MONAI's
  ``compute_hausdorff_distance(percentile=95)``), :func:`hd95_pooled` (95th percentile of both directions pooled
  together, medpy's ``hd95``) and :func:`average_symmetric_surface_distance` (ASSD: mean over both surfaces
  pooled, MONAI's ``compute_average_surface_distance(symmetric=True)``).

Distance transforms run on the bounding box of ``pred | gt`` only. That crop gives exactly the full-volume result:
every surface voxel lies inside it, the nearest surface voxel of the other mask too, and the erosion treats
outside-the-crop voxels as background, which they are (the box is tight around both masks).

Protocols (:data:`PROTOCOLS`, chosen by name; each is versioned and its rules are in its docstring):
``strict`` (default), ``transunet``, ``isic`` and ``nnunet``; see :func:`strict_class_metrics`,
:func:`transunet_class_metrics`, :func:`isic_class_metrics` and :func:`nnunet_class_metrics`. A protocol turns one
class of one case (binary prediction and reference masks) into a dict of numbers, and aggregates those dicts over
cases (:meth:`Protocol.aggregate`). Reading files, pairing cases and summary.json live in
:mod:`attnseg.evaluation.evaluate`.

medpy (GPL-3.0) is a test-time oracle only; nothing here is derived from its code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from attnseg.errors import AttnsegError

__all__ = [
    "COUNT_KEYS",
    "UnknownProtocolError",
    "PROTOCOLS",
    "Protocol",
    "average_symmetric_surface_distance",
    "bounding_box",
    "confusion_counts",
    "dice_from_counts",
    "get_protocol",
    "hausdorff_distance",
    "hd95",
    "hd95_pooled",
    "iou_from_counts",
    "isic_class_metrics",
    "mask_surface",
    "nanmean",
    "nnunet_class_metrics",
    "precision_from_counts",
    "recall_from_counts",
    "specificity_from_counts",
    "strict_class_metrics",
    "surface_distances",
    "transunet_class_metrics",
]

# Per-case integer counts: summed (not averaged) when aggregating over cases.
COUNT_KEYS = ("tp", "fp", "fn", "tn", "n_pred", "n_ref")


class UnknownProtocolError(AttnsegError, ValueError):
    """No evaluation protocol has that name."""


# --------------------------------------------------------------------------------------------------------------------
# Overlap metrics from confusion counts
# --------------------------------------------------------------------------------------------------------------------


def confusion_counts(pred: np.ndarray, gt: np.ndarray, n_total: int | None = None) -> dict[str, int]:
    """Confusion counts of two binary masks.

    Args:
        pred: predicted mask (any shape; non-zero = foreground).
        gt: reference mask, same shape.
        n_total: number of voxels of the full image when ``pred``/``gt`` are crops that hold all the foreground
            (``tn`` is then ``n_total - tp - fp - fn``). Defaults to ``pred.size``.

    Returns:
        ``{"tp", "fp", "fn", "tn", "n_pred", "n_ref"}`` as Python ints.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(gt))
    tp = int(np.count_nonzero(pred & gt)) if n_pred and n_ref else 0
    total = pred.size if n_total is None else int(n_total)
    fp, fn = n_pred - tp, n_ref - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": total - tp - fp - fn, "n_pred": n_pred, "n_ref": n_ref}


def _ratio(num: Any, den: Any, empty: float) -> Any:
    """``num / den`` elementwise, ``empty`` where ``den == 0``; floats for scalars, arrays for arrays."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.divide(num, den, out=np.full(np.broadcast(num, den).shape, float(empty)), where=den != 0)
    return float(out) if out.ndim == 0 else out


def dice_from_counts(tp: Any, fp: Any, fn: Any, *, empty: float = 1.0) -> Any:
    """Dice = 2TP / (2TP + FP + FN); ``empty`` when both masks are empty (scalars or arrays)."""
    return _ratio(2 * np.asarray(tp), 2 * np.asarray(tp) + np.asarray(fp) + np.asarray(fn), empty)


def iou_from_counts(tp: Any, fp: Any, fn: Any, *, empty: float = 1.0) -> Any:
    """IoU (Jaccard) = TP / (TP + FP + FN); ``empty`` when both masks are empty."""
    return _ratio(tp, np.asarray(tp) + np.asarray(fp) + np.asarray(fn), empty)


def precision_from_counts(tp: Any, fp: Any, *, empty: float = 0.0) -> Any:
    """Precision (PPV) = TP / (TP + FP); ``empty`` when nothing is predicted."""
    return _ratio(tp, np.asarray(tp) + np.asarray(fp), empty)


def recall_from_counts(tp: Any, fn: Any, *, empty: float = 0.0) -> Any:
    """Recall = sensitivity = TP / (TP + FN); ``empty`` when the reference is empty."""
    return _ratio(tp, np.asarray(tp) + np.asarray(fn), empty)


def specificity_from_counts(tn: Any, fp: Any, *, empty: float = 1.0) -> Any:
    """Specificity = TN / (TN + FP); ``empty`` when the reference covers the whole image."""
    return _ratio(tn, np.asarray(tn) + np.asarray(fp), empty)


# --------------------------------------------------------------------------------------------------------------------
# Surfaces and surface distances
# --------------------------------------------------------------------------------------------------------------------


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight bounding box of the non-zero voxels as slices, or ``None`` for an empty mask (one pass, C speed)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.size == 0:
        return None
    return ndimage.find_objects(mask.view(np.uint8))[0] if mask.any() else None


def mask_surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: ``mask`` XOR its binary erosion by the connectivity-1 (face-neighbour) structuring element.

    Voxels outside the array count as background, so foreground on the image border is surface.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros_like(mask)
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~eroded


def _check_spacing(spacing: Sequence[float] | float | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        spacing = (float(spacing),) * ndim  # type: ignore[arg-type]
    sp = tuple(float(s) for s in spacing)  # type: ignore[union-attr]
    if len(sp) != ndim:
        raise ValueError(f"spacing must have one value per spatial axis ({ndim}), got {sp}")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing values must be finite and > 0, got {sp}")
    return sp


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | float | None = None, *, crop: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances between two non-empty binary masks.

    Args:
        pred: predicted mask.
        gt: reference mask, same shape.
        spacing: voxel size per axis (distances in mm), a scalar for isotropic voxels, or ``None`` for voxel units.
        crop: compute on the bounding box of ``pred | gt`` (identical results, much faster on large volumes).
            Defaults to True.

    Returns:
        ``(d_pred_to_gt, d_gt_to_pred)``: for every surface voxel of ``pred``, the distance to the nearest surface
        voxel of ``gt`` (float64, in C order of the voxels), and the reverse.

    Raises:
        ValueError: shapes differ, bad spacing, or either mask is empty (distances are undefined; the protocols
            decide what an empty mask scores).
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    sp = _check_spacing(spacing, pred.ndim)
    if not pred.any() or not gt.any():
        raise ValueError("surface distances are undefined when a mask is empty")
    if crop:
        box = bounding_box(pred | gt)
        pred, gt = pred[box], gt[box]
    pred_surface, gt_surface = mask_surface(pred), mask_surface(gt)
    # Exact EDT: distance of every voxel to the nearest surface voxel (the zeros of ~surface).
    d_pred_to_gt = ndimage.distance_transform_edt(~gt_surface, sampling=sp)[pred_surface]
    d_gt_to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sp)[gt_surface]
    return d_pred_to_gt, d_gt_to_pred


def _empty_distance(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """Distance rule for empty masks: 0 when both are empty, NaN when exactly one is, None when neither is."""
    has_pred, has_gt = bool(np.any(pred)), bool(np.any(gt))
    if has_pred and has_gt:
        return None
    return 0.0 if not has_pred and not has_gt else float("nan")


def hausdorff_distance(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | float | None = None, percentile: float | None = 95.0
) -> float:
    """Symmetric (percentile) Hausdorff distance: the larger of the two directed percentiles (MONAI's definition).

    Args:
        pred: predicted mask.
        gt: reference mask.
        spacing: voxel size per axis (mm) or ``None`` for voxel units.
        percentile: 95 gives HD95; ``None`` gives the classic (maximum) Hausdorff distance. Defaults to 95.

    Returns:
        The distance; 0 when both masks are empty, NaN when exactly one is.
    """
    if percentile is not None and not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100] or None, got {percentile}")
    rule = _empty_distance(pred, gt)
    if rule is not None:
        return rule
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    return _directed_max(d_pg, d_gp, percentile)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | float | None = None) -> float:
    """HD95 = max(95th percentile of d(pred->gt), 95th percentile of d(gt->pred)); see :func:`hausdorff_distance`."""
    return hausdorff_distance(pred, gt, spacing, 95.0)


def hd95_pooled(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | float | None = None) -> float:
    """medpy-compatible HD95: the 95th percentile of both directed distance sets pooled together.

    This is what ``medpy.metric.binary.hd95`` returns (and hence the TransUNet lineage of papers). It is never larger
    than :func:`hd95`. Voxel units unless ``spacing`` is given. Returns 0 when both masks are empty and NaN when
    exactly one is (medpy raises instead).
    """
    rule = _empty_distance(pred, gt)
    if rule is not None:
        return rule
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    return float(np.percentile(np.concatenate([d_pg, d_gp]), 95))


def average_symmetric_surface_distance(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | float | None = None
) -> float:
    """ASSD: mean of all surface distances of both surfaces pooled, ``(sum d(P->G) + sum d(G->P)) / (|S_P| + |S_G|)``.

    Same as MONAI's ``compute_average_surface_distance(symmetric=True)``. (medpy's ``assd`` instead averages the two
    directed means, which weights the smaller surface more.) Returns 0 when both masks are empty, NaN when one is.
    """
    rule = _empty_distance(pred, gt)
    if rule is not None:
        return rule
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    return float((d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size))


def _directed_max(d_pg: np.ndarray, d_gp: np.ndarray, percentile: float | None) -> float:
    if percentile is None:
        return float(max(d_pg.max(), d_gp.max()))
    return float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))


def nanmean(values: Sequence[float] | np.ndarray) -> float:
    """Mean ignoring NaN; NaN (without a warning) when there is no finite value."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0 or np.all(np.isnan(arr)):
        return float("nan")
    return float(np.nanmean(arr))


# --------------------------------------------------------------------------------------------------------------------
# Protocols: one class of one case -> dict of numbers; aggregation over cases
# --------------------------------------------------------------------------------------------------------------------


def strict_class_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None, n_total: int | None = None
) -> dict[str, float | int]:
    """Protocol ``strict`` v1.0 for one class of one case: spacing-aware, explicit empty-mask rules.

    Metrics: Dice, IoU, precision, recall (= sensitivity), specificity, HD95 (mm; the larger of the two directed 95th
    percentiles, as MONAI's ``compute_hausdorff_distance(percentile=95, spacing=...)``) and ASSD (mm; both surfaces
    pooled, as MONAI's ``compute_average_surface_distance(symmetric=True, spacing=...)``), plus confusion counts.

    Empty-mask rules:
      - both masks empty: Dice = IoU = precision = recall = 1, HD95 = ASSD = 0;
      - exactly one empty: Dice = IoU = precision = recall = 0, HD95 = ASSD = NaN. The aggregate means exclude
        those NaNs and ``counts`` in summary.json reports how many there are, so a missed structure is never
        silently dropped;
      - specificity = 1 when the reference covers the whole image (no negatives).

    Args:
        pred: predicted mask (may be a crop holding all the foreground of both masks).
        gt: reference mask, same shape.
        spacing: voxel size per axis in mm; ``None`` means 1 (voxel units).
        n_total: voxel count of the full image (for ``tn``); defaults to ``pred.size``.
    """
    c = confusion_counts(pred, gt, n_total)
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    both_empty = c["n_pred"] == 0 and c["n_ref"] == 0
    out: dict[str, float | int] = {
        "dice": dice_from_counts(tp, fp, fn, empty=1.0),
        "iou": iou_from_counts(tp, fp, fn, empty=1.0),
        "precision": precision_from_counts(tp, fp, empty=1.0 if both_empty else 0.0),
        "recall": recall_from_counts(tp, fn, empty=1.0 if both_empty else 0.0),
        "specificity": specificity_from_counts(tn, fp, empty=1.0),
    }
    if c["n_pred"] and c["n_ref"]:
        d_pg, d_gp = surface_distances(pred, gt, spacing)
        out["hd95"] = _directed_max(d_pg, d_gp, 95.0)
        out["assd"] = float((d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size))
    else:
        out["hd95"] = out["assd"] = 0.0 if both_empty else float("nan")
    out.update(c)
    return out


def transunet_class_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None, n_total: int | None = None
) -> dict[str, float | int]:
    """Protocol ``transunet`` v1.0: TransUNet's ``calculate_metric_percase``, used by MSA2Net, SALSTM, MT-UNet...

    Per volume and class: if ``pred`` and ``gt`` are both non-empty, Dice and medpy's pooled HD95
    (:func:`hd95_pooled`) in **voxel units** (``spacing`` is ignored, as the official code passes none); if only
    ``pred`` is non-empty: (Dice 1, HD95 0); otherwise, including a missed organ and both masks empty: (0, 0). These
    degenerate rules are the lineage's, kept on purpose so numbers compare with its papers (a missed organ scores
    HD95 0, criticised in Beckschen/TransUNet#39). Aggregates are plain means over volumes.

    Args:
        pred: predicted mask.
        gt: reference mask.
        spacing: ignored (voxel units by definition).
        n_total: voxel count of the full image (for ``tn``).
    """
    c = confusion_counts(pred, gt, n_total)
    if c["n_pred"] > 0 and c["n_ref"] > 0:
        dice = dice_from_counts(c["tp"], c["fp"], c["fn"])
        d_pg, d_gp = surface_distances(pred, gt, None)
        hd = float(np.percentile(np.concatenate([d_pg, d_gp]), 95))
    elif c["n_pred"] > 0:
        dice, hd = 1.0, 0.0
    else:
        dice, hd = 0.0, 0.0
    return {"dice": dice, "hd95": hd, **c}


def isic_class_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None, n_total: int | None = None
) -> dict[str, float | int]:
    """Protocol ``isic`` v1.0, per image: confusion counts plus the per-image Dice and IoU (1 when both empty).

    The reported set-level numbers come from :meth:`Protocol.aggregate`, which pools the counts of all images into
    one confusion matrix (MALUNet's and most skin-lesion papers' convention): IoU = TP/(TP+FP+FN) (called "mIoU" in
    those papers; foreground only), DSC = 2TP/(2TP+FP+FN), accuracy = (TP+TN)/all, sensitivity = TP/(TP+FN),
    specificity = TN/(TN+FP), each 0 when its denominator is 0 (as in MALUNet's engine). Probability maps are
    thresholded at >= 0.5 and masks at > 0 before this function is called. ``image_mean_dice``/``image_mean_iou`` give
    the per-image means alongside.
    """
    c = confusion_counts(pred, gt, n_total)
    return {"dice": dice_from_counts(c["tp"], c["fp"], c["fn"]), "iou": iou_from_counts(c["tp"], c["fp"], c["fn"]), **c}


def nnunet_class_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None, n_total: int | None = None
) -> dict[str, float | int]:
    """Protocol ``nnunet`` v1.0: nnU-Net v2's ``compute_metrics``: Dice and IoU per case, NaN when both masks are empty.

    Aggregates are ``nanmean`` over cases (so empty-empty cases are dropped) and the foreground mean is the plain
    mean of the class means, as in nnU-Net's summary.json. No surface distances.
    """
    c = confusion_counts(pred, gt, n_total)
    return {
        "dice": dice_from_counts(c["tp"], c["fp"], c["fn"], empty=float("nan")),
        "iou": iou_from_counts(c["tp"], c["fp"], c["fn"], empty=float("nan")),
        **c,
    }


def _isic_pooled(per_case: Sequence[Mapping[str, float]]) -> dict[str, float]:
    tp, fp, fn, tn = (sum(int(m[k]) for m in per_case) for k in ("tp", "fp", "fn", "tn"))
    total = tp + fp + fn + tn
    return {
        "iou": iou_from_counts(tp, fp, fn, empty=0.0),
        "dice": dice_from_counts(tp, fp, fn, empty=0.0),
        "accuracy": _ratio(tp + tn, total, 0.0),
        "sensitivity": recall_from_counts(tp, fn, empty=0.0),
        "specificity": specificity_from_counts(tn, fp, empty=0.0),
        "image_mean_iou": nanmean([m["iou"] for m in per_case]),
        "image_mean_dice": nanmean([m["dice"] for m in per_case]),
    }


@dataclass(frozen=True)
class Protocol:
    """A named, versioned evaluation protocol.

    Attributes:
        name: the name users pass (``--protocol``).
        version: bumped whenever a rule changes, and written into summary.json.
        description: one line for tables and ``--help``.
        class_metrics: ``fn(pred_mask, gt_mask, spacing, n_total) -> dict`` for one class of one case.
        metric_keys: the aggregated metrics, in display order.
        distance_unit: ``"mm"``, ``"voxel"`` or ``""`` (no distances).
        pooled: aggregate by pooling confusion counts over cases (``isic``) instead of averaging per-case values.
        foreground_nanmean: average class means with ``nanmean`` (True) or a plain mean that propagates NaN.
        binarize_foreground: a single foreground class means "label > 0" (and probabilities ">= 0.5").
    """

    name: str
    version: str
    description: str
    class_metrics: Callable[..., dict[str, float | int]]
    metric_keys: tuple[str, ...]
    distance_unit: str = ""
    pooled: bool = False
    foreground_nanmean: bool = True
    binarize_foreground: bool = False

    def aggregate(self, per_case: Sequence[Mapping[str, float]]) -> dict[str, float]:
        """Aggregate one class over cases: metric means (NaN-excluded) or pooled metrics, plus summed counts."""
        counts = {k: int(sum(int(m[k]) for m in per_case)) for k in COUNT_KEYS if per_case and k in per_case[0]}
        if self.pooled:
            return {**_isic_pooled(per_case), **counts}
        means = {k: nanmean([m[k] for m in per_case]) for k in self.metric_keys}
        return {**means, **counts}

    def foreground_mean(self, per_class: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        """Mean of the class aggregates for every metric key (nnU-Net's ``foreground_mean``)."""
        out: dict[str, float] = {}
        for key in self.aggregate_keys:
            vals = [float(v[key]) for v in per_class.values()]
            if self.foreground_nanmean:
                out[key] = nanmean(vals)
            else:
                out[key] = float(np.mean(vals)) if vals else float("nan")
        return out

    @property
    def aggregate_keys(self) -> tuple[str, ...]:
        """The keys :meth:`aggregate` reports as metrics (not counts), in display order."""
        if self.pooled:
            return ("iou", "dice", "accuracy", "sensitivity", "specificity", "image_mean_iou", "image_mean_dice")
        return self.metric_keys


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "strict",
            "1.0",
            "Dice/IoU/precision/recall/specificity, HD95 (max of directed 95th percentiles) and ASSD in mm; "
            "both empty: Dice 1, distances 0; one empty: Dice 0, distances NaN (counted)",
            strict_class_metrics,
            ("dice", "iou", "precision", "recall", "specificity", "hd95", "assd"),
            distance_unit="mm",
        ),
        Protocol(
            "transunet",
            "1.0",
            "TransUNet calculate_metric_percase: per-volume Dice and medpy pooled HD95 in voxels; "
            "pred only: (1, 0); missed or both empty: (0, 0)",
            transunet_class_metrics,
            ("dice", "hd95"),
            distance_unit="voxel",
            foreground_nanmean=False,
        ),
        Protocol(
            "isic",
            "1.0",
            "one pixel-pooled confusion matrix over the whole set (probabilities >= 0.5, masks > 0): "
            "IoU, DSC, accuracy, sensitivity, specificity",
            isic_class_metrics,
            ("dice", "iou"),
            pooled=True,
            binarize_foreground=True,
        ),
        Protocol(
            "nnunet",
            "1.0",
            "nnU-Net v2 summary: per-case Dice/IoU, NaN when both empty, nanmean over cases",
            nnunet_class_metrics,
            ("dice", "iou"),
            foreground_nanmean=False,
        ),
    )
}


def get_protocol(name: str | Protocol) -> Protocol:
    """The protocol called ``name``; ``ValueError`` listing the valid names otherwise."""
    if isinstance(name, Protocol):
        return name
    try:
        return PROTOCOLS[str(name).lower()]
    except KeyError:
        raise UnknownProtocolError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}") from None
