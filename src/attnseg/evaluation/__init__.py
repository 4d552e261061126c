"""Evaluation: metrics (pure numpy/scipy), named protocols, and folder/array evaluation to summary.json.

Protocols: ``strict`` (default; mm, explicit empty-mask rules), ``transunet`` (TransUNet/medpy convention, voxel
units), ``isic`` (one pixel-pooled confusion matrix) and ``nnunet`` (nnU-Net v2 summary). See
:mod:`attnseg.metrics` for the definitions and :mod:`attnseg.evaluation.evaluate` for summary.json.
"""

from __future__ import annotations

from attnseg.evaluation.evaluate import (
    EvaluationError,
    evaluate_arrays,
    evaluate_folders,
    print_summary,
    save_summary,
    summary_table,
)
from attnseg.metrics import (
    PROTOCOLS,
    Protocol,
    average_symmetric_surface_distance,
    confusion_counts,
    dice_from_counts,
    get_protocol,
    hausdorff_distance,
    hd95,
    hd95_pooled,
    iou_from_counts,
    surface_distances,
)

__all__ = [
    "PROTOCOLS",
    "EvaluationError",
    "Protocol",
    "average_symmetric_surface_distance",
    "confusion_counts",
    "dice_from_counts",
    "evaluate_arrays",
    "evaluate_folders",
    "get_protocol",
    "hausdorff_distance",
    "hd95",
    "hd95_pooled",
    "iou_from_counts",
    "print_summary",
    "save_summary",
    "summary_table",
    "surface_distances",
]
