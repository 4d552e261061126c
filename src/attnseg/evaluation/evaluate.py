"""Folder-vs-folder (or in-memory) evaluation under a named protocol, producing summary.json.

:func:`evaluate_folders` pairs ``PRED_DIR/CASE.ext`` with ``GT_DIR/CASE.ext``, reads both with
:func:`attnseg.data.io.read_label`, computes every foreground class of every case with the protocol's per-class
function (:mod:`attnseg.metrics`) in a process pool, and aggregates. :func:`evaluate_arrays` does the same
on arrays already in memory (trainer validation, the demo). The summary dict, written by :func:`save_summary`::

    {"protocol": "strict", "protocol_version": "1.0", "protocol_description": ..., "distance_unit": "mm",
     "labels": {"liver": 1, ...},
     "per_case": [{"case": "ID", "pred_file": ..., "gt_file": ..., "spacing": [...],
                   "per_class": {"liver": {"dice": .., "iou": .., "hd95": .., "assd": .., "tp": .., ...}}}],
     "per_class": {"liver": {"dice": mean, ..., "tp": sum, ...}},
     "foreground_mean": {"dice": mean of class means, ...},
     "counts": {"cases": N, "per_class": {"liver": {"gt_present": .., "gt_empty": .., "both_empty": ..,
                "missed": .., "false_positive": .., "nan": {"hd95": .., ...}}}},
     "warnings": [...]}

Means exclude NaN and ``counts`` says how many values were excluded and why (``missed``: reference present,
prediction empty; ``false_positive``: reference empty, prediction present). In the JSON file NaN is written as
``null``. Only foreground classes are evaluated (background and ``ignore`` are not); voxels whose reference is the
``ignore`` label are set to background in both masks before counting.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from attnseg.errors import AttnsegError
from attnseg.metrics import PROTOCOLS, Protocol, get_protocol

__all__ = [
    "EvaluationError",
    "LabelSpec",
    "evaluate_arrays",
    "evaluate_folders",
    "load_labels",
    "print_summary",
    "save_summary",
    "summary_table",
]


class EvaluationError(AttnsegError, ValueError):
    """Evaluation cannot proceed; the message names the case (or folder) and the problem."""


# --------------------------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSpec:
    """The classes to evaluate.

    Attributes:
        classes: foreground classes as ``(name, values)``; a class is the voxels whose label is one of ``values``
            (one value normally; several for nnU-Net region labels). Empty tuple = discover ``label_<k>`` per case.
        allowed: every label value a file may hold (background, classes, ignore); None = anything non-negative.
        ignore: the ``ignore`` label value, if any.
    """

    classes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    allowed: frozenset[int] | None = None
    ignore: int | None = None

    @property
    def inferred(self) -> bool:
        return not self.classes

    def names(self) -> dict[str, int | list[int]]:
        return {n: (v[0] if len(v) == 1 else list(v)) for n, v in self.classes}


def _values(value: Any, where: str, name: str) -> tuple[int, ...]:
    vals = value if isinstance(value, (list, tuple)) else [value]
    try:
        out = tuple(int(v) for v in vals)
    except (TypeError, ValueError):
        raise EvaluationError(
            f"{where}: label {name!r} must be an integer (or a list of integers), got {value!r}"
        ) from None
    if not out or any(v < 0 for v in out) or any(float(v) != float(x) for v, x in zip(out, vals, strict=True)):
        raise EvaluationError(f"{where}: label {name!r} must be non-negative integers, got {value!r}")
    return out


def _spec_from_mapping(labels: Mapping[str, Any], where: str) -> LabelSpec:
    classes: list[tuple[str, tuple[int, ...]]] = []
    allowed: set[int] = {0}
    ignore: int | None = None
    for name, value in labels.items():
        vals = _values(value, where, str(name))
        allowed.update(vals)
        if str(name).lower() == "ignore":
            ignore = vals[0]
        elif vals != (0,) and str(name).lower() != "background":
            classes.append((str(name), vals))
    if not classes:
        raise EvaluationError(f"{where}: no foreground label to evaluate in {dict(labels)}")
    return LabelSpec(tuple(classes), frozenset(allowed), ignore)


def load_labels(
    labels: Mapping[str, Any] | Sequence[int] | LabelSpec | None = None, dataset: str | os.PathLike | None = None
) -> tuple[LabelSpec, dict[str, Any]]:
    """Resolve the classes to evaluate.

    Args:
        labels: ``{"name": value}`` (nnU-Net style, background/ignore recognised), a list of foreground values
            (named ``label_<k>``), or None to read ``dataset`` or, failing that, discover ``label_<k>`` per case.
        dataset: a dataset folder holding ``dataset.json`` or the json file itself.

    Returns:
        ``(label_spec, dataset_json)`` (the parsed dataset.json, or ``{}``).
    """
    meta: dict[str, Any] = {}
    where = "labels"
    if dataset is not None:
        path = Path(dataset)
        path = path / "dataset.json" if path.is_dir() else path
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise EvaluationError(f"{path}: dataset.json not found") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise EvaluationError(f"{path}: cannot read dataset.json ({exc})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict):
            raise EvaluationError(f'{path}: dataset.json has no "labels" object')
        where = str(path)
    if isinstance(labels, LabelSpec):
        return labels, meta
    if labels is None:
        return (_spec_from_mapping(meta["labels"], where) if meta else LabelSpec()), meta
    if isinstance(labels, Mapping):
        return _spec_from_mapping(labels, "labels"), meta
    vals = [_values(v, "labels", str(v))[0] for v in labels]
    return _spec_from_mapping({"background": 0, **{f"label_{v}": v for v in vals if v != 0}}, "labels"), meta


# --------------------------------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------------------------------


def _as_label_map(arr: np.ndarray, case: str, kind: str, threshold: bool) -> np.ndarray:
    """Integer label map; with ``threshold`` (binary ``isic``) probability maps become masks at >= 0.5."""
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr.view(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise EvaluationError(f"case {case!r}: {kind} has unsupported dtype {arr.dtype}")
    if threshold:
        return (arr >= 0.5).view(np.uint8)  # probabilities -> mask, threshold 0.5 (MALUNet)
    rounded = np.rint(arr)
    if not np.array_equal(arr, rounded):
        raise EvaluationError(
            f"case {case!r}: {kind} holds non-integer values; pass a label map (argmax of the probabilities)"
        )
    return rounded.astype(np.int64)


def _value_boxes(
    arr: np.ndarray, case: str, kind: str, label_spec: LabelSpec, check_values: bool
) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every non-zero value present (one C pass), validating values against ``label_spec``."""
    if arr.size == 0:
        return {}
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise EvaluationError(f"case {case!r}: {kind} holds the negative label value {lo}")
    if check_values and label_spec.allowed is not None and hi > max(label_spec.allowed):
        raise EvaluationError(
            f"case {case!r}: {kind} holds label value {hi}, which is not in the dataset labels "
            f"{sorted(label_spec.allowed)}"
        )
    if hi == 0:
        return {}
    if hi > 4096:  # find_objects allocates a list of length max(value); avoid it for sparse huge ids
        return {int(v): ndimage.find_objects((arr == v).view(np.uint8))[0] for v in np.unique(arr) if v != 0}
    boxes = {i + 1: s for i, s in enumerate(ndimage.find_objects(arr)) if s is not None}
    if check_values and label_spec.allowed is not None:
        bad = sorted(set(boxes) - label_spec.allowed)
        if bad:
            raise EvaluationError(
                f"case {case!r}: {kind} holds label value(s) {bad} not in the dataset labels "
                f"{sorted(label_spec.allowed)}"
            )
    return boxes


def _union_box(boxes: Iterable[tuple[slice, ...] | None]) -> tuple[slice, ...] | None:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return tuple(slice(min(b[d].start for b in boxes), max(b[d].stop for b in boxes)) for d in range(len(boxes[0])))


def _class_mask(crop: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    return crop == values[0] if len(values) == 1 else np.isin(crop, values)


def _evaluate_case(
    case: str,
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None,
    label_spec: LabelSpec,
    protocol: Protocol,
) -> dict[str, Any]:
    """All foreground classes of one case -> ``{"case", "spacing", "n_voxels", "per_class"}``."""
    # With one foreground class, isic means "label > 0"; other protocols check values against dataset.json.
    binary = protocol.binarize_foreground and len(label_spec.classes) <= 1
    pred = _as_label_map(pred, case, "prediction", binary)
    gt = _as_label_map(gt, case, "ground truth", binary)
    if pred.shape != gt.shape:
        raise EvaluationError(
            f"case {case!r}: prediction shape {tuple(pred.shape)} does not match ground-truth shape {tuple(gt.shape)}"
        )
    if spacing is None:
        spacing = (1.0,) * gt.ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != gt.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise EvaluationError(f"case {case!r}: spacing {spacing} does not fit a {gt.ndim}D image")
    n_total = gt.size
    if label_spec.ignore is not None:
        keep = gt != label_spec.ignore
        if not keep.all():
            n_total = int(np.count_nonzero(keep))
            pred, gt = np.where(keep, pred, 0), np.where(keep, gt, 0)

    pred_boxes = _value_boxes(pred, case, "prediction", label_spec, check_values=not binary)
    gt_boxes = _value_boxes(gt, case, "ground truth", label_spec, check_values=not binary)
    if binary:
        present = tuple(sorted(set(pred_boxes) | set(gt_boxes)))
        name = label_spec.classes[0][0] if label_spec.classes else "label_1"
        classes: Sequence[tuple[str, tuple[int, ...]]] = [(name, present)]
    elif label_spec.inferred:
        classes = [(f"label_{v}", (v,)) for v in sorted(set(pred_boxes) | set(gt_boxes))]
    else:
        classes = label_spec.classes

    per_class: dict[str, dict[str, float | int]] = {}
    empty = np.zeros((0,) * gt.ndim, dtype=bool)
    for name, values in classes:
        box = _union_box([pred_boxes.get(v) for v in values] + [gt_boxes.get(v) for v in values])
        if box is None:  # class absent from both masks: only the counts (and the empty rules) matter
            p = g = empty
        elif binary:
            p, g = pred[box] > 0, gt[box] > 0
        else:
            p, g = _class_mask(pred[box], values), _class_mask(gt[box], values)
        per_class[name] = protocol.class_metrics(p, g, spacing, n_total)
    return {"case": case, "spacing": list(spacing), "n_voxels": int(n_total), "per_class": per_class}


def _evaluate_file_pair(
    case: str, pred_path: str, gt_path: str, label_spec: LabelSpec, protocol: str | Protocol
) -> tuple[dict[str, Any], list[str]]:
    """Worker: read one pair of label files and evaluate them (in a subprocess, the protocol travels by name)."""
    from attnseg.data.check import Tolerances, compare_geometry, geometry_summary
    from attnseg.data.io import read_label

    protocol = get_protocol(protocol)
    arrays = []
    for kind, path in (("prediction", pred_path), ("ground truth", gt_path)):
        try:
            arrays.append(read_label(path))
        except Exception as exc:  # corrupt, truncated, unsupported: one clear line naming the case
            raise EvaluationError(f"case {case!r}: cannot read {kind} file {path}: {exc}") from None
    (pred, pred_meta), (gt, gt_meta) = arrays
    warnings: list[str] = []
    if pred.shape == gt.shape:  # (a shape mismatch is an error, below)
        ref, other = (geometry_summary(a.shape, m.affine, m.spacing) for a, m in ((gt, gt_meta), (pred, pred_meta)))
        warnings += [
            f"case {case!r}: {problem}; the voxel arrays are compared as they are, with the ground truth's spacing"
            for problem in compare_geometry(ref, other, "ground truth", "prediction", Tolerances())
        ]
    result = _evaluate_case(case, pred, gt, gt_meta.spacing, label_spec, protocol)
    result["pred_file"], result["gt_file"] = str(pred_path), str(gt_path)
    return result, warnings


# --------------------------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------------------------


def _fill_absent_classes(results: list[dict[str, Any]], protocol: Protocol) -> list[str]:
    """With discovered labels, give every case every class seen anywhere (absent = both masks empty)."""
    names = sorted({n for r in results for n in r["per_class"]}, key=lambda n: int(n.split("_")[-1]))
    empty_cache: dict[tuple[int, int], dict[str, float | int]] = {}
    for r in results:
        for n in names:
            if n not in r["per_class"]:
                key = (len(r["spacing"]), r["n_voxels"])
                if key not in empty_cache:
                    e = np.zeros((0,) * key[0], dtype=bool)
                    empty_cache[key] = protocol.class_metrics(e, e, tuple(r["spacing"]), r["n_voxels"])
                r["per_class"][n] = dict(empty_cache[key])
        r["per_class"] = {n: r["per_class"][n] for n in names}
    return names


def _counts(results: list[dict[str, Any]], names: Sequence[str], protocol: Protocol) -> dict[str, Any]:
    per_class: dict[str, Any] = {}
    for n in names:
        vals = [r["per_class"][n] for r in results]
        has_ref = [v["n_ref"] > 0 for v in vals]
        has_pred = [v["n_pred"] > 0 for v in vals]
        per_class[n] = {
            "gt_present": sum(has_ref),
            "gt_empty": len(vals) - sum(has_ref),
            "both_empty": sum(not a and not b for a, b in zip(has_ref, has_pred, strict=True)),
            "missed": sum(a and not b for a, b in zip(has_ref, has_pred, strict=True)),
            "false_positive": sum(b and not a for a, b in zip(has_ref, has_pred, strict=True)),
            "nan": {
                k: int(sum(1 for v in vals if isinstance(v[k], float) and math.isnan(v[k])))
                for k in protocol.metric_keys
            },
        }
    return {"cases": len(results), "per_class": per_class}


def _build_summary(
    results: list[dict[str, Any]], label_spec: LabelSpec, protocol: Protocol, warnings: list[str]
) -> dict[str, Any]:
    results = sorted(results, key=lambda r: r["case"])
    if label_spec.inferred:
        names = _fill_absent_classes(results, protocol)
        label_map: dict[str, Any] = {n: int(n.split("_")[-1]) for n in names}
    else:
        names = [n for n, _ in label_spec.classes]
        label_map = label_spec.names()
    per_class = {n: protocol.aggregate([r["per_class"][n] for r in results]) for n in names}
    per_case = []
    for r in results:
        entry = {"case": r["case"]}
        for k in ("pred_file", "gt_file"):
            if k in r:
                entry[k] = r[k]
        entry["spacing"] = r["spacing"]
        entry["per_class"] = r["per_class"]
        per_case.append(entry)
    return {
        "protocol": protocol.name,
        "protocol_version": protocol.version,
        "protocol_description": protocol.description,
        "distance_unit": protocol.distance_unit,
        "labels": label_map,
        "per_case": per_case,
        "per_class": per_class,
        "foreground_mean": protocol.foreground_mean(per_class) if per_class else {},
        "counts": _counts(results, names, protocol),
        "warnings": warnings,
    }


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def evaluate_arrays(
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray, Sequence[float] | None]],
    labels: Mapping[str, Any] | Sequence[int] | LabelSpec | None = None,
    protocol: str | Protocol = "strict",
) -> dict[str, Any]:
    """Evaluate in-memory label maps (trainer validation, demo) and return the summary dict.

    Args:
        pairs: ``(case_id, pred, gt, spacing)`` tuples; ``pred``/``gt`` are integer label maps ``[*spatial]`` (for
            ``isic``, ``pred`` may be a probability map, thresholded at >= 0.5); ``spacing`` in mm per axis or None.
        labels: ``{"name": value}`` (background/ignore recognised), a list of foreground values, or None to discover
            ``label_<k>`` from the data.
        protocol: ``strict`` (default), ``transunet``, ``isic`` or ``nnunet``.

    Returns:
        The summary dict described in the module docstring.

    Raises:
        EvaluationError: shape mismatch, label value outside ``labels``, duplicate case id, no cases.
    """
    proto = get_protocol(protocol)
    label_spec, _ = load_labels(labels)
    results, seen = [], set()
    for case, pred, gt, spacing in pairs:
        case = str(case)
        if case in seen:
            raise EvaluationError(f"case {case!r} appears twice")
        seen.add(case)
        results.append(_evaluate_case(case, pred, gt, spacing, label_spec, proto))
    if not results:
        raise EvaluationError("no cases to evaluate")
    return _build_summary(results, label_spec, proto, [])


def _files_by_case(folder: Path, file_ending: str) -> dict[str, Path]:
    return {
        p.name[: -len(file_ending)]: p
        for p in sorted(folder.iterdir())
        if p.name.endswith(file_ending) and not p.name.startswith(".") and p.name != "dataset.json"
    }


def _guess_file_ending(folder: Path) -> str:
    from attnseg.data.io import SUPPORTED_SUFFIXES, image_suffix

    endings = {image_suffix(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    endings &= set(SUPPORTED_SUFFIXES)
    if len(endings) != 1:
        found = ", ".join(sorted(endings)) or "none"
        raise EvaluationError(
            f"{folder}: cannot tell the label file ending (image endings found: {found}); pass --dataset or file_ending"
        )
    return endings.pop()


def _preview(items: Sequence[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items)} in total)" if len(items) > n else "")


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    dataset_dir: str | os.PathLike | None = None,
    protocol: str | Protocol = "strict",
    labels: Mapping[str, Any] | Sequence[int] | None = None,
    file_ending: str | None = None,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Evaluate the predictions in ``pred_dir`` against the references in ``gt_dir``.

    Files pair by case id: ``pred_dir/CASE.ext`` with ``gt_dir/CASE.ext``. Every reference needs a prediction and
    every prediction a reference (other files, such as json or npz, are ignored).

    Args:
        pred_dir: folder of predicted label maps.
        gt_dir: folder of reference label maps (e.g. ``DATASET/labelsTs``).
        dataset_dir: dataset folder (or its dataset.json) giving label names and the file ending.
        protocol: ``strict`` (default), ``transunet``, ``isic`` or ``nnunet``; see :mod:`attnseg.metrics`.
        labels: overrides dataset.json's labels (``{"name": value}`` or a list of values); None = dataset.json, or
            ``label_<k>`` for every value found when there is no dataset.json.
        file_ending: e.g. ``.nii.gz``; default from dataset.json, else the single image ending found in ``gt_dir``.
        num_workers: processes; default ``min(4, CPUs, cases)``; 0 or 1 runs in this process. Workers are
            spawned, so a script calling this with workers needs the usual ``if __name__ == "__main__":`` guard.

    Returns:
        The summary dict described in the module docstring.

    Raises:
        EvaluationError: missing folder, missing/extra case, shape mismatch, label outside dataset.json, unreadable
            file; the message names the case.
    """
    proto = get_protocol(protocol)
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for name, folder in (("prediction", pred_dir), ("ground-truth", gt_dir)):
        if not folder.is_dir():
            problem = "is a file, not a folder" if folder.exists() else "folder not found"
            raise EvaluationError(f"{folder}: {name} {problem}")
    label_spec, meta = load_labels(labels, dataset_dir)
    ending = file_ending or meta.get("file_ending") or _guess_file_ending(gt_dir)
    gts, preds = _files_by_case(gt_dir, ending), _files_by_case(pred_dir, ending)
    if not gts:
        raise EvaluationError(f"{gt_dir}: no ground-truth files ending in {ending!r}")
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise EvaluationError(
            f"missing prediction for case(s) {_preview(missing)} (expected CASE{ending} files in {pred_dir})"
        )
    extra = sorted(set(preds) - set(gts))
    if extra:
        raise EvaluationError(
            f"no ground truth for predicted case(s) {_preview(extra)} (expected CASE{ending} files in {gt_dir})"
        )

    jobs = [(c, str(preds[c]), str(gts[c]), label_spec) for c in sorted(gts)]
    if PROTOCOLS.get(proto.name) is not proto:
        num_workers = 1  # workers look the protocol up by name; a custom Protocol object stays in this process
    workers = min(4, os.cpu_count() or 1, len(jobs)) if num_workers is None else min(int(num_workers), len(jobs))
    if workers <= 1:
        outputs = [_evaluate_file_pair(*job, proto) for job in jobs]
    else:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_evaluate_file_pair, *job, proto.name) for job in jobs]
            try:
                outputs = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    results = [r for r, _ in outputs]
    warnings = [w for _, ws in outputs for w in ws]
    return _build_summary(results, label_spec, proto, warnings)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None  # strict JSON: NaN/inf -> null
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


def save_summary(summary: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``summary`` as strict JSON (NaN -> null), atomically (temporary file, then ``os.replace``)."""
    from attnseg.io import write_json

    return write_json(path, _jsonable(summary), allow_nan=False)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}"  # fits an 80-column terminal


_SHORT = {"precision": "prec", "recall": "recall", "specificity": "spec", "accuracy": "acc", "sensitivity": "sens"}


def summary_table(summary: Mapping[str, Any]) -> Any:
    """A ``rich.table.Table`` of the per-class aggregates and the foreground mean, with NaN counts for distances."""
    from rich import box
    from rich.table import Table

    protocol = get_protocol(summary["protocol"])
    keys = list(protocol.aggregate_keys)
    unit = summary.get("distance_unit", "")
    title = f"protocol {summary['protocol']} v{summary['protocol_version']}, {summary['counts']['cases']} cases"
    has_nan = any(sum(c["nan"].values()) for c in summary["counts"]["per_class"].values())
    caption = [f"distances in {unit}"] if unit else []
    if has_nan:
        caption.append("excl. = cases whose value is NaN (see the rules), left out of the mean")
    table = Table(title=title, caption="; ".join(caption) or None, box=box.SIMPLE_HEAD)  # no rules: fits 80 columns
    table.add_column("class", overflow="fold")
    for k in keys:
        table.add_column(_SHORT.get(k, k), justify="right", no_wrap=True)
    if has_nan:
        table.add_column("excl.", justify="right")
    for name, vals in summary["per_class"].items():
        row = [name] + [_fmt(vals.get(k)) for k in keys]
        if has_nan:
            row.append(str(max(summary["counts"]["per_class"][name]["nan"].values(), default=0)))
        table.add_row(*row)
    if len(summary["per_class"]) > 1 and summary["foreground_mean"]:
        row = ["foreground mean"] + [_fmt(summary["foreground_mean"].get(k)) for k in keys]
        table.add_row(*row + ([""] if has_nan else []), style="bold")
    return table


def print_summary(summary: Mapping[str, Any], console: Any = None) -> None:
    """Print :func:`summary_table` (and any warnings) to ``console`` (default: a stdout ``rich.Console``)."""
    from rich.console import Console

    console = console or Console()
    console.print(summary_table(summary))
    for w in summary.get("warnings", []):
        console.print(f"warning: {w}", style="yellow", markup=False)
