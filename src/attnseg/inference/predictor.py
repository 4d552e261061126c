"""Prediction on real files from a trained run directory.

``Predictor.from_run(RUN)`` rebuilds the model through the registry (``model.json``), loads ``best`` or ``last``
weights and the preprocessing plan (``plan.json``). ``Ensemble.from_runs([R1, R2, ...])`` averages the probabilities
of several runs (nnU-Net's fold ensemble), each run with its own preprocessing, on the input's grid.

``predict_case`` maps an image in its original geometry to a label map on exactly the same grid: preprocessing
(reorientation, resampling, normalisation) runs forward, the probabilities run backward through the inverse, and the
mask is written with the input's affine / spacing / origin / direction. A DICOM series folder is written as NIfTI,
or (``formats``) as a DICOM SEG / RT Structure Set referencing the series (:mod:`attnseg.data.dicom_out`).

The Python API (``attnseg.load_run``, README "Python API") is this module: :func:`load_run` is the loader the CLI
uses, ``Predictor.predict`` takes arrays in memory (their conventions in :mod:`attnseg.inference.arrays`) and
``Predictor.predict_files`` files; both run ``predict_case`` as ``attnseg predict`` does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnseg.config import ConfigError
from attnseg.data.dicom_out import Algorithm, write_dicom_seg, write_rtstruct
from attnseg.data.io import (
    SUPPORTED_SUFFIXES,
    ImageMeta,
    ImageReadError,
    image_suffix,
    is_dicom_dir,
    read_image,
    strip_suffix,
    write_image,
)
from attnseg.data.preprocess import Plan, preprocess_case, restore_geometry
from attnseg.errors import AttnsegError
from attnseg.inference.arrays import image_from_array, nonfinite_problem
from attnseg.inference.overlay import save_overlay
from attnseg.inference.postprocess import keep_largest_component
from attnseg.inference.sliding_window import predict_probabilities
from attnseg.io import atomic_write
from attnseg.models.registry import create_model
from attnseg.runs import RunDir, RunError

__all__ = [
    "FORMATS",
    "Ensemble",
    "Predictor",
    "PredictionInput",
    "RunError",
    "find_inputs",
    "labels_from_probabilities",
    "load_run",
]


FORMATS = ("nifti", "dicom-seg", "rtstruct", "png")  # the mask formats predict_inputs writes
_FORMAT_FILES = {"nifti": ".nii.gz", "png": ".png", "dicom-seg": "_seg.dcm", "rtstruct": "_rtstruct.dcm"}


@dataclass
class PredictionInput:
    """One case to predict: its channel files (or a DICOM folder) and the output stem."""

    case_id: str
    paths: list[Path]
    is_dicom: bool = False


def find_inputs(path: Path, files_per_case: int) -> list[PredictionInput]:
    """Cases under ``path``: a file, a DICOM series folder, or a folder of both.

    With several channel files per case, files are grouped by the nnU-Net channel suffix (``CASE_0000``,
    ``CASE_0001``, ...); otherwise every file is a case (a ``_0000`` suffix is dropped from the output name).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "input not found")
    if path.is_file() or is_dicom_dir(path):
        return [PredictionInput(_case_name(path), [path], is_dicom=path.is_dir())]
    items: list[PredictionInput] = []
    groups: dict[str, dict[int, Path]] = {}
    for p in sorted(path.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if is_dicom_dir(p):
                items.append(PredictionInput(p.name, [p], is_dicom=True))
            continue
        if image_suffix(p) not in SUPPORTED_SUFFIXES:
            items.append(PredictionInput(p.name, [p]))  # reported as unreadable, not silently skipped
            continue
        stem = strip_suffix(p)
        m = re.fullmatch(r"(.+)_(\d{4})", stem)
        if files_per_case > 1 and m:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = p
        else:
            items.append(PredictionInput(_case_name(p), [p]))
    for case, channels in groups.items():
        items.append(PredictionInput(case, [channels[c] for c in sorted(channels)]))
    return sorted(items, key=lambda i: i.case_id)


def labels_from_probabilities(probs: np.ndarray) -> np.ndarray:
    """The label map of class probabilities ``[classes, *spatial]`` (argmax; uint8 below 256 classes)."""
    return probs.argmax(0).astype(np.uint8 if probs.shape[0] < 256 else np.int16)


def _case_name(path: Path) -> str:
    stem = strip_suffix(path) if path.is_file() else path.name
    return re.sub(r"_0000$", "", stem)


@dataclass
class Predictor:
    """A trained model plus the preprocessing it was trained with."""

    model: nn.Module
    plan: Plan
    spatial_dims: int
    slab: int = 1
    label_names: dict[int, str] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 8
    num_classes: int = 2  # output logits (1 for a binary sigmoid model)
    autocast: bool = False  # bf16 autocast (CUDA or CPU); the probabilities are float32 either way
    keep_largest: tuple[int, ...] = ()  # classes reduced to their largest connected component (--keep-largest)
    model_name: str = ""  # the registry name (model.json), named in DICOM outputs
    run_name: str = ""  # the run directory's name, named in DICOM outputs

    @classmethod
    def from_run(
        cls, run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu", autocast: bool = False
    ) -> Predictor:
        run = RunDir(run_dir)
        build = run.read_model()
        plan = run.read_plan()
        run.require_checkpoint(checkpoint)
        try:
            model = create_model(build["name"], build["in_channels"], build["num_classes"], **build.get("kwargs", {}))
        except (AttnsegError, ValueError) as exc:  # an edited or foreign model.json (its kinds: RunDir.read_model)
            raise RunError(f"{run.path / 'model.json'}: {exc}") from None
        run.load_weights(model, checkpoint)
        device = torch.device(device)
        model.to(device).eval()
        names = {int(k): v for k, v in build.get("label_names", {}).items()}
        return cls(
            model=model,
            plan=plan,
            spatial_dims=int(build.get("spatial_dims", plan.spatial_dims)),
            slab=int(build.get("slab_size", 1)),
            label_names=names,
            device=device,
            num_classes=int(build["num_classes"]),
            autocast=autocast,
            model_name=str(build["name"]),
            run_name=Path(run_dir).resolve().name,
        )

    @property
    def files_per_case(self) -> int:
        """Channel files per case: one per channel, except RGB images (three colours in one file)."""
        return 1 if "rgb" in self.plan.channel_kinds else len(self.plan.channel_kinds)

    def read(self, item: PredictionInput) -> tuple[np.ndarray, ImageMeta]:
        arrays, meta = [], None
        for p in item.paths:
            arr, m = read_image(p)
            if arrays and arr.shape[1:] != arrays[0].shape[1:]:
                raise ImageReadError(p, f"channel shape {arr.shape[1:]} differs from {item.paths[0].name}")
            arrays.append(arr)
            meta = meta or m
        if meta.rgb and "ct" in self.plan.channel_kinds:
            raise ImageReadError(
                item.paths[0], "is a colour image; the model was trained on CT (Hounsfield units), which no photo holds"
            )
        image = self._model_channels(np.concatenate(arrays, 0), meta)
        expected = len(self.plan.channel_kinds)
        if image.shape[0] != expected:
            raise ImageReadError(item.paths[0], f"has {image.shape[0]} channel(s); the model was trained on {expected}")
        if meta.ndim == 3 and not self.plan.data_is_3d:
            raise ImageReadError(item.paths[0], "is a volume but the model was trained on 2D images")
        if meta.ndim == 2 and self.spatial_dims == 3:
            raise ImageReadError(item.paths[0], "is a 2D image but the model is a 3D network trained on volumes")
        for path, arr in zip(item.paths, arrays, strict=True):
            problem = nonfinite_problem(arr)
            if problem:
                raise ImageReadError(path, problem)
        return image, meta

    def _model_channels(self, image: np.ndarray, meta: ImageMeta) -> np.ndarray:
        """``image`` ``[C, *spatial]`` for the model: a colour image is averaged to gray for a gray model."""
        if len(self.plan.channel_kinds) == 1 and image.shape[0] == 3 and meta.rgb:
            return image.mean(0, keepdims=True)
        return image

    def predict(
        self,
        image: Any,
        *,
        affine: Any = None,
        spacing: Any = None,
        return_probabilities: bool = False,
        tta: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Segment an array in memory; equal, voxel for voxel, to ``attnseg predict`` on the file it came from.

        Accepted arrays (checked against this run's plan; README "Python API"):

        - a run trained on 2D images: ``(H, W)``; ``(H, W, 3)`` RGB as PIL and imageio return it (``(H, W, 4)``:
          alpha dropped); or ``(C, H, W)`` with ``C`` the model's channels. An RGB run reads a last axis of 3 as
          RGB; a gray run averages RGB to gray, as it does for an RGB file;
        - a run trained on volumes: ``(X, Y, Z)`` or ``(C, X, Y, Z)`` in nibabel's voxel order
          (``np.asarray(nib.load(f).dataobj)``), so ``(X, Y, 3)`` is a volume of three slices.

        Args:
            affine: 4x4 voxel -> RAS+ mm matrix of the array (nibabel's ``img.affine``); volumes are reoriented and
                resampled by it, as files are.
            spacing: voxel size per array axis (mm), instead of ``affine``: the axes are then taken as R, A, S.
                Neither: the identity affine (unit spacing, R, A, S axes).
            return_probabilities: also return the class probabilities.
            tta: average over in-plane flips (``--tta``).

        Returns:
            The label map, the input's spatial shape (``(H, W)`` for ``(H, W, 3)``), uint8 (int16 above 255
            classes); with ``return_probabilities``, ``(labels, probabilities)``, the latter float32
            ``[classes, *spatial]``.

        Raises:
            ValueError: the array's shape (named, with the forms this run accepts), dtype, ``affine`` or
                ``spacing`` do not fit (both given, not 4x4, wrong length), or it holds NaN or infinite values.
        """
        array, meta = image_from_array(image, self.plan, affine=affine, spacing=spacing)
        probs = self.predict_case(self._model_channels(array, meta), meta, tta=tta)
        labels = self.labels(probs)
        return (labels, probs.astype(np.float32, copy=False)) if return_probabilities else labels

    def predict_files(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike | Sequence[str | os.PathLike]],
        *,
        return_probabilities: bool = False,
        tta: bool = False,
    ) -> dict[str, Any]:
        """Segment files as ``attnseg predict`` does, returning the label maps instead of writing them.

        Each entry of ``paths`` is what ``--input`` takes (an image file, a DICOM series folder, or a folder of them,
        multi-channel cases grouped by their ``_0000``, ``_0001`` suffixes) or a list of one case's channel files.

        Returns:
            ``{case: label map}`` in input order, ``case`` being the name ``attnseg predict`` gives the mask file
            (``CASE_0000.nii.gz`` -> ``CASE``); with ``return_probabilities``, ``{case: (labels, probabilities)}``.
            Label maps are on the file's grid in its voxel order, as :meth:`predict` returns them.

        Raises:
            ImageReadError: a file that cannot be read or does not fit the model (the first one stops the call), an
                input without images, or two inputs with the same case name.
        """
        items: list[PredictionInput] = []
        for entry in [paths] if isinstance(paths, str | os.PathLike) else paths:
            if isinstance(entry, str | os.PathLike):
                found = find_inputs(Path(entry), self.files_per_case)
                if not found:
                    raise ImageReadError(entry, "no images found")
                items.extend(found)
            else:
                files = [Path(p) for p in entry]
                if not files:
                    raise ImageReadError("[]", "an empty list of channel files")
                items.append(PredictionInput(_case_name(files[0]), files))
        seen: set[str] = set()
        for item in items:
            if item.case_id in seen:
                raise ImageReadError(item.paths[0], f"two inputs give the case name {item.case_id!r}")
            seen.add(item.case_id)
        results: dict[str, Any] = {}
        for item in items:
            _, _, probs, labels = self.predict_item(item, tta=tta)
            results[item.case_id] = (labels, probs.astype(np.float32, copy=False)) if return_probabilities else labels
        return results

    def predict_item(
        self, item: PredictionInput, *, tta: bool = False
    ) -> tuple[np.ndarray, ImageMeta, np.ndarray, np.ndarray]:
        """Read one input and predict it: ``(image, meta, probabilities, labels)``, the path of ``attnseg predict``."""
        image, meta = self.read(item)
        probs = self.predict_case(image, meta, tta=tta)
        return image, meta, probs, self.labels(probs)

    def labels(self, probs: np.ndarray) -> np.ndarray:
        """The label map of probabilities ``[classes, *spatial]``: argmax, then ``keep_largest``'s components."""
        labels = labels_from_probabilities(probs)
        return keep_largest_component(labels, self.keep_largest) if self.keep_largest else labels

    def predict_case(self, image: np.ndarray, meta: ImageMeta, *, tta: bool = False) -> np.ndarray:
        """Class probabilities ``[classes, *spatial]`` on the original grid of ``image`` ``[C, *spatial]``."""
        case = preprocess_case("case", image, None, meta, self.plan)
        probs = predict_probabilities(
            self.model,
            case.image,
            spatial_dims=self.spatial_dims,
            input_size=self.plan.input_size,
            geometry=self.plan.geometry,
            slab=self.slab,
            batch_size=self.batch_size,
            tta=tta,
            device=self.device,
            autocast=self.autocast,
        )
        return restore_geometry(probs, case.geometry, is_label=False)

    @staticmethod
    def output_paths(
        item: PredictionInput,
        output_dir: str | Path,
        *,
        overlay: bool = False,
        probabilities: bool = False,
        formats: Sequence[str] = (),
    ) -> dict[str, Path]:
        """The files :meth:`predict_inputs` writes for ``item``: ``mask`` (the input's own format; without
        ``formats``) or one per format of ``formats`` (keyed by it: ``CASE.nii.gz``, ``CASE.png``, ``CASE_seg.dcm``,
        ``CASE_rtstruct.dcm``) and, when asked, ``probabilities`` and ``overlay``. Each is written atomically, so a
        case whose files all exist is complete (``--continue``)."""
        out = Path(output_dir)
        suffix = ".nii.gz" if item.is_dicom else image_suffix(item.paths[0])
        if suffix in (".jpg", ".jpeg"):
            suffix = ".png"  # masks must be lossless
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"unknown output format {unknown[0]!r}; formats: {', '.join(FORMATS)}")
        paths = {f: out / f"{item.case_id}{_FORMAT_FILES[f]}" for f in formats}
        if not formats:
            paths["mask"] = out / f"{item.case_id}{suffix}"
        if probabilities:
            paths["probabilities"] = out / f"{item.case_id}_probabilities.npz"
        if overlay:  # in a subfolder, so a PNG dataset's prediction folder holds only masks (evaluate reads it)
            paths["overlay"] = out / "overlays" / f"{item.case_id}.png"
        return paths

    def algorithm(self) -> Algorithm:
        """The segmentation algorithm as DICOM outputs name it: model, run and attnseg version."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            attnseg_version = version("attnseg")
        except PackageNotFoundError:  # a source tree on sys.path, not installed
            attnseg_version = "unknown"
        return Algorithm(model=self.model_name or "unknown", run=self.run_name or "unknown", version=attnseg_version)

    def write_masks(self, item: PredictionInput, labels: np.ndarray, meta: ImageMeta, paths: dict[str, Path]) -> None:
        """Write ``labels`` to the mask files of ``paths`` (keys ``mask`` and :data:`FORMATS`); the case's input
        is checked against every format before the first file is written."""
        if "png" in paths and meta.ndim != 2:
            raise ImageReadError(item.paths[0], "is a volume; png masks are 2D only (write nifti)")
        for fmt in ("dicom-seg", "rtstruct"):
            if fmt in paths and not item.is_dicom:
                raise ImageReadError(item.paths[0], f"is not a DICOM series; {fmt} references a series' instances")
        for key in ("mask", "nifti", "png"):
            if key in paths:
                write_image(labels, meta, paths[key])
        if "dicom-seg" in paths:
            names = self.label_names
            write_dicom_seg(labels, meta.affine, item.paths[0], paths["dicom-seg"], names, self.algorithm())
        if "rtstruct" in paths:
            write_rtstruct(labels, meta.affine, item.paths[0], paths["rtstruct"], self.label_names)

    def predict_inputs(
        self,
        items: Sequence[PredictionInput],
        output_dir: str | Path,
        *,
        tta: bool = False,
        overlay: bool = False,
        probabilities: bool = False,
        formats: Sequence[str] = (),
        on_done: Callable[[PredictionInput, Exception | None], None] | None = None,
    ) -> dict[str, str]:
        """Predict each input into ``output_dir``; returns ``{case: error message}`` for inputs that failed.

        ``formats``: the mask files to write (:data:`FORMATS`; see :meth:`output_paths`); none: the input's own
        format (NIfTI for a DICOM series). ``dicom-seg`` and ``rtstruct`` need DICOM series inputs, ``png`` 2D ones.

        Raises:
            ConfigError: before anything is written, when a mask would overwrite one of the inputs or ``output_dir``
                cannot be created (an output folder created here is removed again if every case fails).
        """
        planned = [
            self.output_paths(item, output_dir, overlay=overlay, probabilities=probabilities, formats=formats)
            for item in items
        ]
        inputs = {p.resolve() for item in items for p in item.paths}
        owners: dict[Path, PredictionInput] = {}
        for item, paths in zip(items, planned, strict=True):  # both refused before anything is written
            for path in paths.values():
                resolved = path.resolve()
                if resolved in inputs:
                    raise ConfigError(
                        f"output folder {output_dir}: the mask {path.name} would overwrite the input image {path}; "
                        "choose another output folder"
                    )
                first = owners.setdefault(resolved, item)
                if first is not item:  # a_0000.nii.gz and a.nii.gz are both case "a"
                    raise ConfigError(
                        f"{first.paths[0]} and {item.paths[0]} are both case {item.case_id!r} and would write the same "
                        f"file {path.name}; rename one of them"
                    )
        folder = Path(output_dir)
        created = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, a read-only or special file system, no permission
            raise ConfigError(f"output folder {output_dir}: cannot be created ({exc.strerror or exc})") from None
        failures: dict[str, str] = {}
        for item, paths in zip(items, planned, strict=True):
            error: Exception | None = None
            existed = {path for path in paths.values() if path.exists()}
            try:
                image, meta, probs, labels = self.predict_item(item, tta=tta)
                self.write_masks(item, labels, meta, paths)
                if probabilities:
                    half = probs.astype(np.float16)
                    atomic_write(
                        paths["probabilities"], lambda tmp, half=half: np.savez_compressed(tmp, probabilities=half)
                    )
                if overlay:
                    save_overlay(paths["overlay"], image, labels, rgb=meta.rgb, affine=meta.affine)
            except (AttnsegError, OSError) as exc:  # the case's own problem; anything else is a bug
                error = exc
                failures[item.case_id] = str(exc)
                for path in set(paths.values()) - existed:  # a failed case leaves no part of itself (NIfTI, no SEG)
                    path.unlink(missing_ok=True)
            if on_done is not None:
                on_done(item, error)
        if created and not any(folder.iterdir()):  # every case failed: leave no empty folder behind
            folder.rmdir()
        return failures


@dataclass
class Ensemble(Predictor):
    """Several runs predicting together: the mean of their class probabilities on the input's grid.

    As nnU-Net's fold ensemble (Isensee et al., Nature Methods 2021), the members are typically the runs of the
    cross-validation folds. Each member keeps its own preprocessing plan and sliding window, so runs trained at
    different input sizes or spacings can join; they must agree on the input channels and the classes. Reading
    and writing use the first member's plan.
    """

    members: list[Predictor] = field(default_factory=list)

    @classmethod
    def from_runs(
        cls,
        run_dirs: Sequence[str | Path],
        checkpoint: str = "best",
        device: str | torch.device = "cpu",
        autocast: bool = False,
    ) -> Ensemble:
        """Load every run; raises :class:`RunError` naming the run that does not match the first."""
        if not run_dirs:
            raise RunError("an ensemble needs at least one run directory")
        members = [Predictor.from_run(r, checkpoint=checkpoint, device=device, autocast=autocast) for r in run_dirs]
        first = members[0]
        for run_dir, member in zip(run_dirs[1:], members[1:], strict=True):
            for what, mine, theirs in (
                ("input channels", member.plan.channel_kinds, first.plan.channel_kinds),
                ("2D/3D data", member.plan.data_is_3d, first.plan.data_is_3d),
                ("classes", _classes(member), _classes(first)),
            ):
                if mine != theirs:
                    raise RunError(f"{run_dir}: {what} {mine} differ from {run_dirs[0]}'s {theirs}; cannot ensemble")
        names = {"model_name": "+".join(dict.fromkeys(m.model_name for m in members))}
        names["run_name"] = "+".join(Path(r).resolve().name for r in run_dirs)
        return cls(**{f: getattr(first, f) for f in _PREDICTOR_FIELDS}, **names, members=members)

    def predict_case(self, image: np.ndarray, meta: ImageMeta, *, tta: bool = False) -> np.ndarray:
        total = self.members[0].predict_case(image, meta, tta=tta)
        for member in self.members[1:]:
            total += member.predict_case(image, meta, tta=tta)
        return total / len(self.members)


def load_run(
    run_dir: str | os.PathLike | Sequence[str | os.PathLike],
    checkpoint: str = "best",
    device: str | torch.device = "auto",
    amp: str = "none",
) -> Predictor:
    """Load a run directory for prediction, once: the loader of ``attnseg predict`` and of ``attnseg.load_run``.

    Args:
        run_dir: a run directory written by ``attnseg train`` -> :class:`Predictor`; a list of them -> an
            :class:`Ensemble` averaging their probabilities (always an ``Ensemble``, even of one run).
        checkpoint: ``best`` or ``last``.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``.
        amp: ``none`` or ``bf16`` (autocast on CUDA and CPU; see ``docs/mixed_precision.md`` for its agreement).

    Raises:
        RunError: not a run directory, a missing checkpoint, the same run twice, runs that cannot ensemble.
        ConfigError: a device this machine does not have.
    """
    from attnseg.config import resolve_device

    runs = [run_dir] if isinstance(run_dir, (str, os.PathLike)) else run_dir
    if not isinstance(runs, Sequence) or not runs or not all(isinstance(r, (str, os.PathLike)) for r in runs):
        raise TypeError(f"run_dir must be a run directory path or a list of them, got {run_dir!r}")
    if checkpoint not in ("best", "last"):
        raise RunError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    if amp not in ("none", "bf16"):
        raise ConfigError(f"must be none or bf16, got {amp!r}", option="amp")
    resolved, autocast = resolve_device(str(device)), amp == "bf16"
    if isinstance(run_dir, str | os.PathLike):
        return Predictor.from_run(run_dir, checkpoint=checkpoint, device=resolved, autocast=autocast)
    runs = list(run_dir)
    seen: set[Path] = set()
    for run in runs:
        if Path(run).resolve() in seen:
            raise RunError(f"{run}: the same run directory is given twice")
        seen.add(Path(run).resolve())
    return Ensemble.from_runs(runs, checkpoint=checkpoint, device=resolved, autocast=autocast)


_PREDICTOR_FIELDS = (
    "model",
    "plan",
    "spatial_dims",
    "slab",
    "label_names",
    "device",
    "batch_size",
    "num_classes",
    "autocast",
    "keep_largest",
)


def _classes(predictor: Predictor) -> tuple[int, dict[int, str]]:
    """Output classes as probabilities count them (a sigmoid model's one logit gives two) and their names."""
    return max(predictor.num_classes, 2), predictor.label_names
