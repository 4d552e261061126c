"""Dataset integrity check: every problem of a dataset folder at once (``attnseg check-data``, and before training).

nnU-Net's ``--verify_dataset_integrity`` stops at the first problem; this check reports all of them, each as a
:class:`Finding` (severity, case, file relative to the dataset folder, problem), and never writes into the dataset.

Errors (``attnseg train`` refuses the dataset, :class:`DatasetCheckError`):

- ``dataset.json``: missing, invalid JSON (line and column), a required key (``channel_names``, ``labels``,
  ``file_ending``) missing, channel ids other than 0..N-1, label ids that are not integers, ``background`` not 0, two
  names sharing an id; a ``file_ending`` that matches no file;
- layout: an image without its label (training cases), a label without its image, a missing or undeclared channel
  file, a badly named image file, no training case;
- files: unreadable, truncated or not an image; a colour (RGB) label image; a label value not in ``labels``; NaN or
  Inf voxels in an image; a channel count other than ``dataset.json`` declares;
- geometry: a label or channel file whose shape, spacing, origin or direction differs from the case's first channel
  beyond the :class:`Tolerances`;
- ``splits.json``: invalid JSON, not the named-split format of :mod:`attnseg.data.layout`, unknown case ids, a case in
  both ``train`` and ``val`` of one split.

Warnings (training continues): an empty label (background only); voxel spacing or orientation varying strongly
across training cases (and which ``--geometry`` mode suits that, see :mod:`attnseg.data.preprocess`); a ``CT``
channel whose intensities are not Hounsfield units, or another channel whose are; ``numTraining`` disagreeing with
``imagesTr``.

Speed: shape, spacing, origin and direction come from the headers (nibabel's header, SimpleITK's
``ReadImageInformation``, PIL's lazy open); voxels are read only for what needs them (label values, NaN/Inf,
intensity ranges, truncated data), file by file in a thread pool (zlib, nibabel's array copies and numpy's
reductions release the GIL). Each file's summary is cached outside the dataset (:func:`cache_path`), keyed by the
file's size and modification time and :data:`CHECKER_VERSION`. The tolerances are applied to the summaries, not
stored in them, so a check with other tolerances reuses the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from attnseg.data.io import (
    ITK_SUFFIXES,
    NATURAL_2D_SUFFIXES,
    NIFTI_SUFFIXES,
    ImageMeta,
    ImageReadError,
    image_suffix,
    read_image,
    read_label,
)
from attnseg.data.layout import MAX_LABEL_ID, DatasetError, DatasetInfo, label_id_too_large, split_shape_problem

__all__ = [
    "CHECKER_VERSION",
    "CheckReport",
    "DatasetCheckError",
    "Finding",
    "Tolerances",
    "cache_path",
    "check_dataset",
    "compare_geometry",
    "default_workers",
    "geometry_summary",
    "verify_dataset",
]

# Bump when a file summary changes meaning or format: every cached summary is then read again.
CHECKER_VERSION = 1

Severity = Literal["error", "warning"]

# Air is -1000 HU and fat about -100 HU, so a CT scan holds negative values; bone and contrast exceed 100 HU.
_CT_MIN_MAX = 100.0
# A non-CT channel (MRI, ultrasound, PET, z-scored data) practically never goes below -500; CT air does.
_HU_AIR = -500.0
# Spacing of one axis varying more than this factor across training cases is worth a warning.
_SPACING_RATIO = 2.0
_AXES = ("x (R-L)", "y (A-P)", "z (S-I)")


@dataclass(frozen=True)
class Tolerances:
    """How far a label or channel file's geometry may differ from the case's first channel.

    Attributes:
        spacing: relative, per axis: ``|a - b| <= spacing * max(|a|, |b|)``. The default 1e-3 is the tolerance
            :func:`attnseg.data.preprocess.load_case` applies; it absorbs spacings written with three decimals.
        origin: absolute, in mm: the distance between the two origins (world coordinates of the first voxel). The
            default 1e-3 mm is far above float32 rounding of origins (about 6e-5 mm at 1 m) and far below any real
            shift (a fraction of a voxel is 0.1 mm or more).
        direction: the largest absolute difference between the direction-cosine matrices. The default 1e-5 accepts
            float noise (1e-8 from conversions between qform, sform and ITK's double matrices, which nnU-Net's
            exact comparison rejects) and rejects any real rotation (1 degree changes a cosine by 1.7e-2).
    """

    spacing: float = 1e-3
    origin: float = 1e-3
    direction: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("spacing", "origin", "direction"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise DatasetError(f"{name} tolerance must be a finite number >= 0, got {value}")


@dataclass(frozen=True)
class Finding:
    """One problem: ``case`` is None for a dataset-wide one; ``file`` is relative to the dataset folder."""

    severity: Severity
    case: str | None
    file: str
    problem: str

    def line(self, root: str | os.PathLike | None = None) -> str:
        """``FILE (case CASE): PROBLEM``, the file under ``root`` when given."""
        where = str(Path(root) / self.file) if root is not None else self.file
        where = f"{where} (case {self.case})" if self.case else where
        return f"{where}: {self.problem}"


@dataclass
class CheckReport:
    """The findings of one check, errors first."""

    root: Path
    findings: list[Finding]
    num_cases: int
    tolerances: Tolerances = field(default_factory=Tolerances)
    files_read: int = 0  # files summarised in this check (not served by the cache)
    files_cached: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        return f"{len(self.errors)} error(s), {len(self.warnings)} warning(s) in {self.num_cases} cases"

    def raise_for_errors(self) -> None:
        if self.errors:
            raise DatasetCheckError(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": str(self.root),
            "checker_version": CHECKER_VERSION,
            "tolerances": asdict(self.tolerances),
            "cases": self.num_cases,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "files_read": self.files_read,
            "files_cached": self.files_cached,
            "seconds": round(self.seconds, 3),
            "findings": [asdict(f) for f in self.findings],
        }


class DatasetCheckError(DatasetError):
    """The dataset has errors; the message names the first culprit and the count, ``report`` holds them all."""

    def __init__(self, report: CheckReport) -> None:
        self.report = report
        first, n = report.errors[0], len(report.errors)
        where = report.root / first.file if first.file else report.root
        case = f"case {first.case}; " if first.case else ""
        super().__init__(
            f"{where}: {first.problem} ({case}{n} error(s) in {report.num_cases} cases; "
            f"`attnseg check-data {report.root}` lists every problem)"
        )


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


# ------------------------------------------------------------------------------------------------------------ cache
def cache_dir() -> Path:
    """``$ATTNSEG_CACHE_DIR/check-data``, else ``$XDG_CACHE_HOME/attnseg/check-data`` (default ``~/.cache``)."""
    own = os.environ.get("ATTNSEG_CACHE_DIR")
    if own:
        return Path(own) / "check-data"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"  # the XDG spec: absolute only
    return base / "attnseg" / "check-data"


def cache_path(root: str | os.PathLike) -> Path:
    """The cache of one dataset folder: kept outside the folder, which may be read-only or shared, and which
    ``attnseg check-data`` never writes into; named by a hash of the folder's absolute path."""
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:24]
    return cache_dir() / f"{key}.json"


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("checker") != CHECKER_VERSION or not isinstance(doc.get("files"), dict):
        return {}
    return doc["files"]


def _save_cache(path: Path, root: Path, entries: dict[str, Any]) -> None:
    from attnseg.io import write_json

    try:
        write_json(path, {"checker": CHECKER_VERSION, "dataset": str(root.resolve()), "files": entries}, indent=None)
    except OSError:
        pass  # a read-only home: the check still works, it just is not remembered


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


# ----------------------------------------------------------------------------------------------- file summaries
def _geometry_from_affine(affine: np.ndarray, ndim: int) -> tuple[list[float], list[list[float]]]:
    m = np.asarray(affine, dtype=float)[:ndim, :ndim]
    norms = np.linalg.norm(m, axis=0)
    direction = m / np.where(norms == 0, 1, norms)[None, :]
    return np.asarray(affine, dtype=float)[:ndim, 3].tolist(), direction.tolist()


def _colour_mode(mode: str, label: bool) -> int:
    """Channels :func:`attnseg.data.io.read_image` gives a PIL image of ``mode`` (palette labels keep indices)."""
    if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return 3
    if mode in ("P", "PA"):
        return 1 if label else 3
    return 1


def _read_header(path: Path, label: bool) -> dict[str, Any]:
    """Shape, channels and geometry (RAS world coordinates, as :mod:`attnseg.data.io`) without reading voxels.

    Raises:
        ImageReadError: the header cannot be read.
    """
    suffix = image_suffix(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib

            img = nib.load(str(path))  # header only; voxels stay on disk
            shape = tuple(int(n) for n in img.shape)
            if len(shape) == 4:
                spatial, components = shape[:3], shape[3]
            elif len(shape) in (2, 3):
                spatial, components = shape, 1
            else:
                raise ImageReadError(path, f"unsupported NIfTI dimensionality {len(shape)}")
            origin, direction = _geometry_from_affine(img.affine, len(spatial))
            zooms = [float(z) for z in img.header.get_zooms()[: len(spatial)]]
            return dict(shape=list(spatial), components=components, spacing=zooms, origin=origin, direction=direction)
        if suffix in ITK_SUFFIXES:
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            dim = reader.GetDimension()
            origin = np.asarray(reader.GetOrigin(), dtype=float)
            direction = np.asarray(reader.GetDirection(), dtype=float).reshape(dim, dim)
            if dim == 3:  # ITK world coordinates are LPS; attnseg's affines are RAS
                flip = np.array([-1.0, -1.0, 1.0])
                origin, direction = origin * flip, direction * flip[:, None]
            return dict(
                shape=[int(n) for n in reader.GetSize()],
                components=int(reader.GetNumberOfComponents()),
                spacing=[float(s) for s in reader.GetSpacing()],
                origin=origin.tolist(),
                direction=direction.tolist(),
            )
        if suffix in NATURAL_2D_SUFFIXES:
            from PIL import Image

            with Image.open(path) as im:  # lazy: decodes nothing
                width, height, mode = im.size[0], im.size[1], im.mode
            components = _colour_mode(mode, label)
            # 2D images have unit spacing and no world position (attnseg.data.io)
            return dict(shape=[height, width], components=components, spacing=[1.0, 1.0], origin=None, direction=None)
    except ImageReadError:
        raise
    except Exception as exc:  # nibabel/SimpleITK/PIL raise many types for files that are not images
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageReadError(
            path, f"cannot read the header ({type(exc).__name__}: {reason[:200]}); is it an image file?"
        ) from None
    return {}  # DICOM folders and the rest: geometry from the voxel read


def _read_voxels(path: Path, label: bool) -> tuple[np.ndarray, ImageMeta]:
    """The voxels as training reads them (:func:`~attnseg.data.io.read_label` / :func:`~attnseg.data.io.read_image`);
    the one place the check reads voxels."""
    if label:
        return read_label(path)
    return read_image(path)


def _image_stats(array: np.ndarray) -> dict[str, Any]:
    """Per channel: the count of NaN and of infinite voxels, and the range of the finite ones."""
    nan = inf = 0
    lo: list[float | None] = []
    hi: list[float | None] = []
    for x in array:
        if np.issubdtype(x.dtype, np.floating):
            finite = np.isfinite(x)
            n_bad = x.size - int(np.count_nonzero(finite))
            if n_bad:
                n_nan = int(np.count_nonzero(np.isnan(x)))
                nan, inf = nan + n_nan, inf + n_bad - n_nan
                x = x[finite]
        lo.append(float(x.min()) if x.size else None)
        hi.append(float(x.max()) if x.size else None)
    return dict(nan=nan, inf=inf, min=lo, max=hi)


def _label_values(array: np.ndarray) -> list[int]:
    if array.dtype == np.uint8:  # the usual case: a bincount is several times faster than np.unique
        return np.flatnonzero(np.bincount(array.ravel(), minlength=1)).tolist()
    return np.unique(array).astype(int).tolist()


def summarise_file(path: Path, role: str, *, voxels: bool = True) -> dict[str, Any]:
    """What the check needs to know about one file (JSON-serialisable; cached). ``error`` is set when the file
    cannot be read; the header's fields are kept when only the voxels fail (a truncated ``.nii.gz``)."""
    label = role == "label"
    summary: dict[str, Any] = {"role": role, "voxels": voxels, "error": None}
    try:
        summary.update(_read_header(path, label))
    except ImageReadError as exc:
        summary["error"] = exc.problem
        return summary
    if label and summary.get("components", 1) > 1:
        return summary  # a colour or multi-channel label: reported as such; its values mean nothing
    if not voxels:
        return summary
    try:
        array, meta = _read_voxels(path, label)
    except ImageReadError as exc:
        summary["error"] = exc.problem
        return summary
    if "shape" not in summary:  # no header reader for this format: the geometry of the full read
        spatial = list(array.shape if label else array.shape[1:])
        origin, direction = (None, None)
        if meta.source_format != "natural2d":
            origin, direction = _geometry_from_affine(meta.affine, len(spatial))
        summary.update(
            shape=spatial,
            components=1 if label else int(array.shape[0]),
            spacing=[float(s) for s in meta.spacing],
            origin=origin,
            direction=direction,
        )
    if label:
        summary["values"] = _label_values(array)
    else:
        summary.update(_image_stats(array))
    return summary


# -------------------------------------------------------------------------------------------------- dataset.json
def _fmt(values: Iterable[float], sep: str = "x") -> str:
    return sep.join(f"{float(v):.6g}" for v in values)


def _int_id(value: Any) -> int | None:
    """An integer label or channel id: an int, an integral float or a string of digits (as ``int()`` accepts)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


@dataclass
class _Declared:
    """What ``dataset.json`` declares, as far as it could be parsed (None: unusable)."""

    raw: dict[str, Any]
    file_ending: str | None = None
    channel_names: dict[int, str] | None = None
    labels: dict[str, int] | None = None

    def info(self, root: Path) -> DatasetInfo | None:
        if self.channel_names is None:
            return None
        labels = self.labels or {"background": 0}
        return DatasetInfo(root, root.name, self.channel_names, labels, self.file_ending or "", raw=self.raw)


def _parse_dataset_json(root: Path, add: Callable[..., None]) -> _Declared | None:
    path = root / "dataset.json"
    if path.is_dir():
        add("error", None, "dataset.json", "is a folder; dataset.json must be a file (nnU-Net v2 raw layout)")
        return None
    if not path.is_file():
        add("error", None, "dataset.json", "missing; a dataset folder needs dataset.json (nnU-Net v2 raw layout)")
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        add("error", None, "dataset.json", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        add("error", None, "dataset.json", f"cannot be read ({type(exc).__name__}: {exc})")
        return None
    if not isinstance(raw, dict):
        add("error", None, "dataset.json", f"must be a JSON object, found a {type(raw).__name__}")
        return None
    declared = _Declared(raw)
    for key in ("channel_names", "labels", "file_ending"):
        if key not in raw:
            add("error", None, "dataset.json", f"missing required key {key!r}")

    ending = raw.get("file_ending")
    if "file_ending" in raw:
        if not isinstance(ending, str) or not ending.startswith(".") or len(ending) < 2:
            add("error", None, "dataset.json", f"file_ending must be an extension such as '.nii.gz', got {ending!r}")
        else:
            declared.file_ending = ending

    names = raw.get("channel_names")
    if "channel_names" in raw:
        ids = {k: _int_id(k) for k in names} if isinstance(names, dict) else {}
        if not isinstance(names, dict) or not names:
            add("error", None, "dataset.json", 'channel_names must be a non-empty object such as {"0": "CT"}')
        elif any(v is None for v in ids.values()) or sorted(ids.values()) != list(range(len(names))):
            add("error", None, "dataset.json", f"channel_names keys must be 0..N-1, got {sorted(names, key=str)}")
        else:
            declared.channel_names = {ids[k]: str(v) for k, v in names.items()}

    labels = raw.get("labels")
    if "labels" in raw:
        if not isinstance(labels, dict) or not labels:
            add("error", None, "dataset.json", 'labels must be an object of name -> integer id, e.g. {"background": 0}')
        else:
            parsed: dict[str, int] = {}
            for name, value in labels.items():
                ident = _int_id(value)
                if ident is None:
                    hint = " (region-based labels are not supported)" if isinstance(value, list) else ""
                    add("error", None, "dataset.json", f"label {name!r}: id {value!r} is not an integer{hint}")
                elif ident < 0:
                    add("error", None, "dataset.json", f"label {name!r}: id {ident} is negative")
                elif ident > MAX_LABEL_ID:
                    add("error", None, "dataset.json", label_id_too_large(str(name), ident))
                else:
                    parsed[str(name)] = ident
            if parsed.get("background") != 0:
                found = labels.get("background", "no background entry")
                add("error", None, "dataset.json", f'labels must map "background" to 0 (found {found!r})')
            shared = [v for v, n in Counter(parsed.values()).items() if n > 1]
            for value in shared:
                names_ = sorted(k for k, v in parsed.items() if v == value)
                add("error", None, "dataset.json", f"labels {names_} share the id {value}")
            if len(parsed) == len(labels) and parsed.get("background") == 0 and not shared:
                declared.labels = parsed
    return declared


# ------------------------------------------------------------------------------------------------------- layout
@dataclass
class _Case:
    case_id: str
    subset: str  # "Tr" | "Ts"
    images: dict[int, Path] = field(default_factory=dict)
    label: Path | None = None


def _index(root: Path, declared: _Declared, n_files: int | None, add: Callable[..., None]) -> dict[str, _Case]:
    """The cases of ``imagesTr``/``imagesTs`` with their labels, reporting naming, pairing and channel problems."""
    ending = declared.file_ending
    assert ending is not None
    cases: dict[str, _Case] = {}
    unmatched: dict[str, list[Path]] = {}  # folder -> its files, when file_ending matches none of them
    for subset in ("Tr", "Ts"):
        img_dir, lbl_dir = root / f"images{subset}", root / f"labels{subset}"
        blocked = [d for d in (img_dir, lbl_dir) if d.exists() and not d.is_dir()]
        for d in blocked:  # one cause, one error (not a "missing label" per case)
            add("error", None, d.name, f"{_rel(root, d)} is a file; it must be a folder")
        if lbl_dir in blocked:
            lbl_dir = None
        found: dict[str, _Case] = {}
        other: list[Path] = []
        for f in sorted(img_dir.iterdir()) if img_dir.is_dir() else []:
            if f.name.startswith("."):
                continue
            if not f.name.endswith(ending):
                other.append(f)
                continue
            case_id, sep, channel = f.name[: -len(ending)].rpartition("_")
            if not sep or not case_id or len(channel) != 4 or not channel.isdigit():
                add("error", None, _rel(root, f), f"image files must be named CASE_XXXX{ending} (e.g. _0000)")
                continue
            found.setdefault(case_id, _Case(case_id, subset)).images[int(channel)] = f
        if other and not found:
            unmatched[img_dir.name] = other
        labels: dict[str, Path] = {}
        other_labels: list[Path] = []
        for f in sorted(lbl_dir.iterdir()) if lbl_dir is not None and lbl_dir.is_dir() else []:
            if f.name.startswith("."):
                continue
            if f.name.endswith(ending):
                labels[f.name[: -len(ending)]] = f
            else:
                other_labels.append(f)
        if other_labels and not labels:
            unmatched[lbl_dir.name] = other_labels
        for case_id, path in labels.items():
            if case_id in found:
                found[case_id].label = path
            else:
                expected = img_dir / f"{case_id}_0000{ending}"
                add("error", case_id, _rel(root, path), f"label without image: {_rel(root, expected)} is missing")
        for case_id, case in sorted(found.items()):
            if case_id in cases:
                add(
                    "error", case_id, _rel(root, case.images[min(case.images)]), "case id used in imagesTr and imagesTs"
                )
                continue
            cases[case_id] = case
            if subset == "Tr" and case.label is None and lbl_dir is not None:
                expected = lbl_dir / f"{case_id}{ending}"
                add("error", case_id, _rel(root, expected), "missing: a training case needs its label")
            if n_files is None:
                continue
            for ch in range(n_files):
                if ch not in case.images:
                    expected = img_dir / f"{case_id}_{ch:04d}{ending}"
                    names = ", ".join(f"{k}: {v}" for k, v in sorted(declared.channel_names.items()))
                    add("error", case_id, _rel(root, expected), f"missing channel file (dataset.json declares {names})")
            for ch in sorted(set(case.images) - set(range(n_files))):
                add(
                    "error",
                    case_id,
                    _rel(root, case.images[ch]),
                    f"channel {ch} is not declared in dataset.json channel_names ({n_files} file(s) per case)",
                )
    if unmatched:  # one cause, one error
        add("error", None, "dataset.json", _ending_problem(ending, unmatched))
    if not any(c.subset == "Tr" for c in cases.values()) and "imagesTr" not in unmatched:
        tr = root / "imagesTr"
        state = "is missing" if not tr.is_dir() else f"holds no file ending in {ending!r}"
        add("error", None, "imagesTr", f"no training cases: {_rel(root, tr)} {state}")
    return cases


def _ending_problem(ending: str, unmatched: dict[str, list[Path]]) -> str:
    files = [p for found in unmatched.values() for p in found]
    seen = sorted(Counter(image_suffix(p) or p.suffix or p.name for p in files).items(), key=lambda kv: -kv[1])
    listed = ", ".join(f"{n} x {s!r}" for s, n in seen[:4])
    return f"file_ending {ending!r} matches none of the {len(files)} file(s) in {', '.join(unmatched)} ({listed})"


def _rel(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# -------------------------------------------------------------------------------------------- per-case checks
def _what(role: str, channel: int, declared: _Declared) -> str:
    if role == "label":
        return "label"
    name = (declared.channel_names or {}).get(channel)
    return f"channel {channel} ({name})" if name else f"channel {channel}"


def geometry_summary(shape: Sequence[int], affine: Any, spacing: Sequence[float]) -> dict[str, Any]:
    """The ``shape``, ``spacing``, ``origin`` and ``direction`` (RAS world coordinates) :func:`compare_geometry`
    takes, from an image's spatial shape, 4x4 voxel -> RAS affine and spacing (:class:`~attnseg.data.io.ImageMeta`)."""
    origin, direction = _geometry_from_affine(affine, len(shape))
    return dict(shape=[int(n) for n in shape], spacing=[float(v) for v in spacing], origin=origin, direction=direction)


def compare_geometry(ref: dict, other: dict, ref_what: str, other_what: str, tol: Tolerances) -> list[str]:
    """Shape, spacing, origin and direction of ``other`` against ``ref``; one problem per disagreement."""
    problems = []
    if ref["shape"] != other["shape"]:
        problems.append(f"{other_what} shape {_fmt(other['shape'])} differs from {ref_what} shape {_fmt(ref['shape'])}")
        if len(ref["shape"]) != len(other["shape"]):
            return problems
    a, b = np.asarray(ref["spacing"], float), np.asarray(other["spacing"], float)
    rel = np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-12)
    if a.shape == b.shape and float(rel.max(initial=0)) > tol.spacing:
        problems.append(
            f"{other_what} spacing {_fmt(b)} mm differs from {ref_what} spacing {_fmt(a)} mm "
            f"(relative difference {float(rel.max()):.3g}; tolerance {tol.spacing:g})"
        )
    if ref.get("origin") is not None and other.get("origin") is not None:
        o1, o2 = np.asarray(ref["origin"], float), np.asarray(other["origin"], float)
        dist = float(np.linalg.norm(o1 - o2))
        if o1.shape == o2.shape and dist > tol.origin:
            problems.append(
                f"{other_what} origin ({_fmt(o2, ', ')}) mm lies {dist:.4g} mm from {ref_what} origin "
                f"({_fmt(o1, ', ')}) mm (RAS world coordinates; tolerance {tol.origin:g} mm)"
            )
    if ref.get("direction") is not None and other.get("direction") is not None:
        d1, d2 = np.asarray(ref["direction"], float), np.asarray(other["direction"], float)
        if d1.shape == d2.shape:
            diff = float(np.abs(d1 - d2).max(initial=0))
            if diff > tol.direction:
                c1, c2 = _axcodes(d1), _axcodes(d2)
                axes = (f" {c2}", f" {c1}") if c1 != c2 else ("", "")
                problems.append(
                    f"{other_what} direction{axes[0]} differs from {ref_what} direction{axes[1]} by up to {diff:.3g} "
                    f"(tolerance {tol.direction:g})"
                )
    return problems


def _axcodes(direction: Any) -> str:
    """Anatomical axis codes (``RAS``, ``LPS`` ...) of a RAS direction-cosine matrix: each voxel axis points to."""
    d = np.asarray(direction, dtype=float)
    if d.shape != (3, 3):
        return ""
    out = []
    for j in range(3):
        i = int(np.argmax(np.abs(d[:, j])))
        out.append(("R", "A", "S")[i] if d[i, j] > 0 else ("L", "P", "I")[i])
    return "".join(out)


def _case_findings(
    root: Path,
    case: _Case,
    summaries: dict[Path, dict],
    declared: _Declared,
    info: DatasetInfo | None,
    tol: Tolerances,
    add: Callable[..., None],
) -> None:
    cid = case.case_id
    files = [(p, "image", ch) for ch, p in sorted(case.images.items())]
    if case.label is not None:
        files.append((case.label, "label", 0))
    readable = []
    for path, role, ch in files:
        s = summaries[path]
        if s.get("error"):
            add("error", cid, _rel(root, path), s["error"])
        if "shape" in s:
            readable.append((path, role, ch, s))
    # channels: what each file holds against what dataset.json declares
    for path, role, _ch, s in readable:
        comps = int(s.get("components", 1))
        if role == "label":
            if comps > 1:
                problem = (
                    "colour (RGB) label image; a label map is one channel of class ids (save it as a greyscale or "
                    "palette PNG)"
                    if image_suffix(path) in NATURAL_2D_SUFFIXES
                    else f"label has {comps} channels; a label map has one channel of class ids"
                )
                add("error", cid, _rel(root, path), problem)
        elif info is not None and info.is_rgb and comps != 3:
            add("error", cid, _rel(root, path), f"dataset.json declares RGB, but the image has {comps} channel(s)")
        elif info is not None and not info.is_rgb and comps != 1:
            add(
                "error",
                cid,
                _rel(root, path),
                f"image has {comps} channels in one file; dataset.json declares one file per channel "
                f"({info.num_channels}: {', '.join(info.channel_names.values())})",
            )
    # geometry: every file against the first readable channel
    images = [r for r in readable if r[1] == "image"]
    if images:
        ref_path, _, ref_ch, ref = images[0]
        ref_what = "image" if len(case.images) == 1 else _what("image", ref_ch, declared)
        for path, role, ch, s in readable:
            if path == ref_path:
                continue
            for problem in compare_geometry(ref, s, ref_what, _what(role, ch, declared), tol):
                add("error", cid, _rel(root, path), problem)
    # voxels
    for path, role, _ch, s in readable:
        rel = _rel(root, path)
        if role == "image" and (s.get("nan") or s.get("inf")):
            add("error", cid, rel, f"image holds {s['nan']} NaN and {s['inf']} infinite voxel(s)")
        if role == "label" and "values" in s:
            values = s["values"]
            if declared.labels is not None:
                unknown = sorted(set(values) - set(declared.labels.values()))
                if unknown:
                    add(
                        "error",
                        cid,
                        rel,
                        f"label values {unknown} are not in dataset.json labels "
                        f"({', '.join(f'{k}: {v}' for k, v in sorted(declared.labels.items(), key=lambda kv: kv[1]))})",
                    )
            if values and set(values) <= {0}:
                add("warning", cid, rel, "empty label: every voxel is background (0)")


# ------------------------------------------------------------------------------------------ dataset-wide checks
def _intensity_findings(
    root: Path, cases: list[_Case], summaries: dict[Path, dict], info: DatasetInfo, add: Callable[..., None]
) -> None:
    """A channel named CT without Hounsfield units, or another channel with them (a mislabelled channel name)."""
    if info.is_rgb:
        return
    for ch in range(info.num_channels):
        kind, name = info.channel_kind(ch), info.channel_names[ch]
        odd: list[tuple[_Case, Path, float, float]] = []
        seen = 0
        for case in cases:
            path = case.images.get(ch)
            s = summaries.get(path) if path is not None else None
            if not s or s.get("error") or not s.get("min") or s["min"][0] is None:
                continue
            seen += 1
            lo, hi = s["min"][0], s["max"][0]
            if kind == "ct" and (hi < _CT_MIN_MAX or lo >= 0):
                odd.append((case, path, lo, hi))
            elif kind == "zscore" and lo <= _HU_AIR and hi >= _CT_MIN_MAX:
                odd.append((case, path, lo, hi))
        if not odd:
            continue
        hu = "air is -1000 HU, fat about -100 HU, bone above 300 HU"
        if kind == "ct":
            looks = "do not look like Hounsfield units"
            fix = (
                "a CT stored without its rescale intercept, or a channel that is not CT? 'CT' channels are normalised "
                "with the training set's HU percentiles (nnU-Net's CT scheme), other channels per image"
            )
        else:
            looks = "look like CT Hounsfield units"
            fix = "name it 'CT' in dataset.json channel_names to get nnU-Net's CT normalisation"
        if len(odd) == seen:  # every case: the channel name is the suspect
            case, path, lo, hi = odd[0]
            problem = (
                f"channel {ch} is named {name!r} but its intensities {looks} in all {seen} cases "
                f"(e.g. {_fmt((lo, hi), '..')} in {case.case_id}; {hu}); {fix}"
            )
            add("warning", None, "dataset.json", problem)
        else:
            for case, path, lo, hi in odd:
                problem = f"channel {ch} ({name}) intensities {_fmt((lo, hi), '..')} {looks} ({hu}); {fix}"
                add("warning", case.case_id, _rel(root, path), problem)


def _geometry_findings(cases: list[_Case], summaries: dict[Path, dict], add: Callable[..., None]) -> None:
    """Spacing or orientation varying strongly across training cases, and which ``--geometry`` mode suits it."""
    per_case = []
    for case in cases:
        path = case.images.get(0)
        s = summaries.get(path) if path is not None else None
        if not s or "shape" not in s or len(s["shape"]) != 3 or s.get("direction") is None:
            continue
        codes = _axcodes(s["direction"])
        ras_spacing = [0.0, 0.0, 0.0]
        d = np.abs(np.asarray(s["direction"], float))
        for j in range(3):
            ras_spacing[int(np.argmax(d[:, j]))] = float(s["spacing"][j])
        per_case.append((case.case_id, codes, ras_spacing))
    if len(per_case) < 2:
        return
    groups = Counter(codes for _, codes, _ in per_case)
    if len(groups) > 1:
        usual = groups.most_common(1)[0][0]
        odd = [f"{cid} is {codes}" for cid, codes, _ in per_case if codes != usual]
        listed = ", ".join(f"{codes}: {n}" for codes, n in groups.most_common())
        add(
            "warning",
            None,
            "imagesTr",
            f"orientation varies across training cases ({listed}; e.g. {', '.join(odd[:3])}); "
            "volumes are reoriented to RAS before training, and --geometry spacing (the default) also resamples them "
            "to one spacing, which suits mixed acquisitions; check that these headers are right",
        )
    spacing = np.asarray([sp for _, _, sp in per_case])
    ratios = spacing.max(0) / np.maximum(spacing.min(0), 1e-12)
    axis = int(np.argmax(ratios))
    if ratios[axis] > _SPACING_RATIO:
        lo, hi = int(np.argmin(spacing[:, axis])), int(np.argmax(spacing[:, axis]))
        add(
            "warning",
            None,
            "imagesTr",
            f"voxel spacing varies {ratios[axis]:.3g}x across training cases along {_AXES[axis]}: "
            f"{spacing[lo, axis]:.4g} mm ({per_case[lo][0]}) to {spacing[hi, axis]:.4g} mm ({per_case[hi][0]}); "
            "use --geometry spacing (the default, nnU-Net's), which resamples every case to the median spacing; "
            "--geometry resize would give the same anatomy different sizes in pixels",
        )


def _splits_findings(root: Path, known: set[str], add: Callable[..., None]) -> None:
    path = root / "splits.json"
    if not path.exists():
        return
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        add("error", None, "splits.json", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")
        return
    except (OSError, UnicodeDecodeError) as exc:
        add("error", None, "splits.json", f"cannot be read ({type(exc).__name__}: {exc})")
        return
    example = '{"fold0": {"train": [...], "val": [...]}, "test": [...]}'
    if not isinstance(splits, dict):
        add("error", None, "splits.json", f"must be an object of named splits such as {example}, found a list")
        return
    for name, split in splits.items():
        problem = split_shape_problem(name, split)
        if problem:
            add("error", None, "splits.json", problem)
            continue
        if re.fullmatch(r"fold\d+", name) and not isinstance(split, dict):
            add("error", None, "splits.json", f'split {name!r} is not a fold {{"train": [...], "val": [...]}}')
        parts = {"": split} if isinstance(split, list) else split
        members = {c for m in parts.values() for c in m}
        unknown = sorted(members - known)
        if unknown:
            add(
                "error",
                None,
                "splits.json",
                f"split {name!r} names {len(unknown)} case(s) not in the dataset: {', '.join(unknown[:5])}",
            )
        both = sorted(set(parts.get("train", [])) & set(parts.get("val", [])))
        if both:
            add(
                "error",
                None,
                "splits.json",
                f"split {name!r} puts {len(both)} case(s) in both train and val: {', '.join(both[:5])}",
            )


# ---------------------------------------------------------------------------------------------------- the check
def check_dataset(
    root: str | os.PathLike,
    *,
    tolerances: Tolerances | None = None,
    workers: int | None = None,
    voxels: bool = True,
    cache: bool = True,
) -> CheckReport:
    """Check a dataset folder; returns every finding (errors first). Never writes into the folder.

    Args:
        root: the dataset folder (nnU-Net v2 raw layout, :mod:`attnseg.data.layout`).
        tolerances: geometry tolerances (:class:`Tolerances`).
        workers: threads reading files (default :func:`default_workers`).
        voxels: False checks headers and layout only: no label values, NaN/Inf, intensities or truncated data.
        cache: reuse and update the per-file summaries in :func:`cache_path`.
    """
    start = time.perf_counter()
    root = Path(root)
    if root.name == "dataset.json" and root.is_file():
        root = root.parent  # as load_dataset: the dataset's own file names its folder
    tol = tolerances or Tolerances()
    findings: list[Finding] = []

    def add(severity: Severity, case: str | None, file: str, problem: str) -> None:
        findings.append(Finding(severity, case, file, problem))

    def report(num_cases: int = 0, read: int = 0, cached: int = 0) -> CheckReport:
        ordered = [f for f in findings if f.severity == "error"] + [f for f in findings if f.severity == "warning"]
        return CheckReport(root, ordered, num_cases, tol, read, cached, time.perf_counter() - start)

    if not root.is_dir():
        add(
            "error",
            None,
            ".",
            f"{root} is a file, not a dataset folder" if root.exists() else f"dataset folder {root} not found",
        )
        return report()
    declared = _parse_dataset_json(root, add)
    if declared is None or declared.file_ending is None:
        return report()
    info = declared.info(root)
    n_files = info.num_channel_files if info is not None else None
    cases = _index(root, declared, n_files, add)

    jobs = [(p, "image") for c in cases.values() for p in c.images.values()]
    jobs += [(c.label, "label") for c in cases.values() if c.label is not None]
    summaries, read, cached = _summaries(root, jobs, voxels=voxels, workers=workers, use_cache=cache)

    ordered = sorted(cases.values(), key=lambda c: (c.subset != "Tr", c.case_id))
    for case in ordered:
        _case_findings(root, case, summaries, declared, info, tol, add)
    train = [c for c in ordered if c.subset == "Tr"]
    if info is not None:
        _intensity_findings(root, ordered, summaries, info, add)
    _geometry_findings(train, summaries, add)
    num_training = declared.raw.get("numTraining")
    if num_training is not None and train and _int_id(num_training) != len(train):
        add("warning", None, "dataset.json", f"numTraining is {num_training!r}, but imagesTr holds {len(train)} cases")
    _splits_findings(root, set(cases), add)
    return report(len(cases), read, cached)


def _summaries(
    root: Path, jobs: list[tuple[Path, str]], *, voxels: bool, workers: int | None, use_cache: bool
) -> tuple[dict[Path, dict], int, int]:
    """Each file's summary, from the cache when its size and mtime are unchanged, else read (in a thread pool)."""
    where = cache_path(root) if use_cache else None
    entries = _load_cache(where) if where is not None else {}
    kept: dict[str, Any] = {}
    out: dict[Path, dict] = {}
    todo: list[tuple[Path, str, tuple[int, int] | None]] = []
    for path, role in jobs:
        rel, stamp = _rel(root, path), _stamp(path)
        hit = entries.get(rel)
        if (
            stamp is not None
            and isinstance(hit, dict)
            and isinstance(hit.get("summary"), dict)
            and hit.get("stamp") == list(stamp)
            and hit.get("role") == role
            and (hit["summary"].get("voxels") or not voxels)
        ):
            out[path] = hit["summary"]
            kept[rel] = hit
        else:
            todo.append((path, role, stamp))
    n_workers = max(1, workers or default_workers())

    def run(job: tuple[Path, str, tuple[int, int] | None]) -> dict:
        return summarise_file(job[0], job[1], voxels=voxels)

    if n_workers > 1 and len(todo) > 1:
        with ThreadPoolExecutor(max_workers=min(n_workers, len(todo))) as pool:
            results = list(pool.map(run, todo))
    else:
        results = [run(job) for job in todo]
    for (path, role, stamp), summary in zip(todo, results):
        out[path] = summary
        if stamp is not None and _stamp(path) == stamp:  # a file changing while read is not remembered
            kept[_rel(root, path)] = {"stamp": list(stamp), "role": role, "summary": summary}
    if where is not None and (todo or set(kept) != set(entries)):
        _save_cache(where, root, kept)
    return out, len(todo), len(jobs) - len(todo)


def verify_dataset(
    root: str | os.PathLike, *, print_warnings: bool = True, tolerances: Tolerances | None = None
) -> CheckReport:
    """The check ``attnseg train`` runs before writing anything: errors raise :class:`DatasetCheckError`, warnings
    are printed on stderr (one line each) and the report is returned."""
    report = check_dataset(root, tolerances=tolerances)
    report.raise_for_errors()
    if print_warnings:
        for finding in report.warnings:
            sys.stderr.write(f"warning: {finding.line(report.root)}\n")
    return report
