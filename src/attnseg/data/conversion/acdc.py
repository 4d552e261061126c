"""ACDC cine-MRI (Bernard et al., IEEE TMI 2018) -> canonical layout.

Source layout (the challenge release; ``SRC`` may be the release folder, ``database/`` or ``training/`` itself)::

    SRC/training/patient001/
        Info.cfg                      ED: 1 / ES: 12 / Group / Height / NbFrame / Weight
        patient001_4d.nii.gz          (cine sequence: ignored)
        patient001_frame01.nii.gz     patient001_frame01_gt.nii.gz     (end-diastole)
        patient001_frame12.nii.gz     patient001_frame12_gt.nii.gz     (end-systole)
    SRC/testing/patient101/ ...       (optional; only patients with ``_gt`` files are converted)

``patientNNN`` folders are found up to three levels deep; ``.nii`` works as well as ``.nii.gz``. The ED/ES frame
numbers come from ``Info.cfg``; without it, the lower annotated frame is taken as ED (true for every ACDC patient).

Output: each annotated frame is a case, ``patient001_ED`` and ``patient001_ES`` (channel ``MRI``; labels
background 0, RV 1, Myo 2, LV 3, ACDC's own values, checked). Image files are copied byte for byte, so the geometry
is exactly the release's; the two frames of a patient always stay in the same split part.

Named splits:

- ``70-10-20``: the 70/10/20 patient split of TransUNet-style work, nnFormer and UNETR++. The 20 test patients are
  the published list (nnFormer ``dataset_json/ACDC_dataset.json`` ``test``, identical to the SALSTM / MT-UNet test
  list): 002 003 008 009 012 014 017 024 042 048 049 053 055 064 067 079 081 088 092 095. Their 10 validation
  patients are not published in any source we could check, so the validation part is a **seeded** draw of 10 of the
  remaining 80 patients (``random.Random(seed)``, seed 42 by default); the other 70 train. These 20 test patients
  (40 cases) go to ``imagesTs`` and form the top-level ``test`` list.
- ``official`` (when annotated ``testing/`` patients are present): training patients except the validation ones
  for training, the same validation patients, and the challenge's test patients (101-150) as test.

With fewer patients than the release (e.g. a subset), the test part is the listed patients that are present and
validation takes one eighth of the rest (at least one when two or more remain).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from attnseg.data.conversion._common import (
    SPLIT_SEED,
    ConversionReport,
    finish_dataset,
    run_parallel,
    seeded_partition,
    staged_output,
)
from attnseg.data.io import ImageReadError, read_image, read_label, write_image
from attnseg.data.layout import DatasetError

__all__ = ["convert_acdc", "ACDC_TEST_PATIENTS", "ACDC_LABELS"]

# nnFormer dataset_json/ACDC_dataset.json "test" (= SALSTM / MT-UNet lists_ACDC/test.txt): 20 patients
ACDC_TEST_PATIENTS = tuple(
    f"patient{n:03d}" for n in (2, 3, 8, 9, 12, 14, 17, 24, 42, 48, 49, 53, 55, 64, 67, 79, 81, 88, 92, 95)
)
ACDC_LABELS = {"background": 0, "RV": 1, "Myo": 2, "LV": 3}
_REFERENCE = (
    "Bernard O. et al., Deep learning techniques for automatic MRI cardiac multi-structures segmentation "
    "and diagnosis: is the problem solved? IEEE TMI 37(11), 2018. "
    "https://www.creatis.insa-lyon.fr/Challenge/acdc/"
)
_FRAME = re.compile(r"^(patient\d{3})_frame(\d+)_gt\.nii(\.gz)?$", re.IGNORECASE)


def _patient_dirs(src: Path, max_depth: int = 3) -> list[Path]:
    found, level = [], [src]
    for _ in range(max_depth + 1):
        nxt = []
        for d in level:
            if re.fullmatch(r"patient\d{3}", d.name, re.IGNORECASE):
                found.append(d)
            else:
                nxt.extend(c for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith("."))
        level = nxt
    return sorted(found, key=lambda p: p.name.lower())


def _read_info(path: Path) -> dict[str, int]:
    phases = {}
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().upper() in ("ED", "ES"):
            try:
                phases[key.strip().upper()] = int(float(value.strip()))
            except (ValueError, OverflowError):
                raise DatasetError(
                    f"{path}: cannot read the {key.strip()} frame number from {line.strip()!r}"
                ) from None
    return phases


def _frames(patient: Path) -> dict[str, tuple[Path, Path]]:
    """{"ED": (image, gt), "ES": (image, gt)} of one patient folder ({} when it has no annotations)."""
    annotated: dict[int, Path] = {}
    for f in sorted(patient.iterdir()):
        m = _FRAME.match(f.name)
        if m:
            annotated[int(m.group(2))] = f
    if not annotated:
        return {}
    info = patient / "Info.cfg"
    phases = _read_info(info) if info.exists() else {}
    if not {"ED", "ES"} <= set(phases):
        if len(annotated) != 2:
            raise DatasetError(f"{patient}: {len(annotated)} annotated frames and no Info.cfg to tell ED from ES")
        ed, es = sorted(annotated)
        phases = {"ED": ed, "ES": es}
    out = {}
    for phase, frame in phases.items():
        gt = annotated.get(frame)
        if gt is None:
            raise DatasetError(
                f"{patient}: Info.cfg gives {phase} = frame {frame}, but "
                f"{patient.name}_frame{frame:02d}_gt.nii.gz is missing"
            )
        image = gt.with_name(gt.name.replace("_gt", ""))
        if not image.exists():
            raise DatasetError(f"{image}: image file missing for the annotation {gt.name}")
        out[phase] = (image, gt)
    return out


def _copy_case(item: tuple[str, str, Path, Path, Path]) -> None:
    part, cid, image, gt, stage = item
    try:
        img, img_meta = read_image(image)
        label, _ = read_label(gt)
    except ImageReadError as exc:
        raise DatasetError(str(exc)) from None
    if img.shape[0] != 1 or img_meta.ndim != 3:
        raise DatasetError(f"{image}: expected one 3D MRI frame, found shape {img.shape}")
    if label.shape != img.shape[1:]:
        raise DatasetError(f"{gt}: label shape {label.shape} differs from image {image.name} shape {img.shape[1:]}")
    values = set(np.unique(label).tolist())
    if not values <= {0, 1, 2, 3}:
        raise DatasetError(
            f"{gt}: label values {sorted(values - {0, 1, 2, 3})} outside ACDC's 0..3 (RV 1, Myo 2, LV 3)"
        )
    out_img = stage / f"images{part}" / f"{cid}_0000.nii.gz"
    out_lbl = stage / f"labels{part}" / f"{cid}.nii.gz"
    if image.name.lower().endswith(".nii.gz") and gt.name.lower().endswith(".nii.gz"):
        shutil.copyfile(image, out_img)  # exact bytes: geometry and intensities as released
        shutil.copyfile(gt, out_lbl)
    else:
        write_image(img, img_meta, out_img)
        write_image(label.astype(np.uint8), img_meta, out_lbl)


def convert_acdc(
    src: Path,
    dst: Path,
    *,
    seed: int = SPLIT_SEED,
    overwrite: bool = False,
    workers: int = 1,
    max_size: int | None = None,
) -> ConversionReport:
    """Convert the ACDC release (see the module docstring for layout and splits).

    Args:
        src: the release folder (``training/`` and optionally ``testing/`` below it).
        dst: the dataset folder to create.
        seed: seed of the validation draw.
        overwrite: replace an existing non-empty ``dst``.
        workers: threads for copying and checking.
        max_size: not supported for volumes (must be None).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DatasetError(f"{src}: source folder not found")
    if max_size:
        raise DatasetError("--max-size applies to 2D image datasets only; ACDC volumes are copied unchanged")
    patients = _patient_dirs(src)
    if not patients:
        raise DatasetError(f"{src}: no patientNNN folders found (expected SRC/training/patient001/...)")
    train_patients: dict[str, dict[str, tuple[Path, Path]]] = {}
    test_patients: dict[str, dict[str, tuple[Path, Path]]] = {}
    skipped = []
    for p in patients:
        frames = _frames(p)
        name = p.name.lower()
        if not frames:
            skipped.append(name)
            continue
        target = test_patients if "test" in p.parent.name.lower() else train_patients
        if name in train_patients or name in test_patients:
            raise DatasetError(f"{p}: patient {name} appears twice under {src}")
        target[name] = frames
    if not train_patients:
        raise DatasetError(f"{src}: no annotated training patients found (patientNNN_frameXX_gt.nii.gz files)")

    listed = [p for p in ACDC_TEST_PATIENTS if p in train_patients]
    rest = sorted(set(train_patients) - set(listed))
    n_val = max(1, round(len(rest) / 8)) if len(rest) >= 2 else 0
    val_p, train_p = seeded_partition(rest, (n_val / len(rest) if rest else 0, 1.0), seed) if rest else ([], [])
    val_p = sorted(val_p)

    def cases(names: list[str] | set[str], source: dict[str, dict[str, tuple[Path, Path]]]) -> list[str]:
        return sorted(f"{n}_{phase}" for n in names for phase in source[n])

    test_cases = cases(listed, train_patients)
    test_set = set(listed)
    items = []
    for name, frames in train_patients.items():
        for phase, (image, gt) in frames.items():
            items.append(("Ts" if name in test_set else "Tr", f"{name}_{phase}", image, gt))
    for name, frames in test_patients.items():
        for phase, (image, gt) in frames.items():
            items.append(("Tr", f"{name}_{phase}", image, gt))
    notes = []
    if skipped:
        notes.append(f"{len(skipped)} patient folders without annotations were skipped ({', '.join(skipped[:3])}...)")
    if len(train_patients) != 100:
        notes.append(f"found {len(train_patients)} annotated training patients; the ACDC release has 100")

    with staged_output(dst, overwrite=overwrite, src=src) as stage:
        for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if test_cases else ()):
            (stage / sub).mkdir()
        run_parallel(_copy_case, [(*it, stage) for it in items], workers)
        splits: dict[str, Any] = {
            "70-10-20": {
                "train": cases(train_p, train_patients),
                "val": cases(val_p, train_patients),
                "test": test_cases,
            },
        }
        split_notes = {
            "70-10-20": f"test: the 20 patients of nnFormer's/SALSTM's published test list; val: 10 of the "
            f"other 80 patients drawn with seed {seed} (the field's validation list is not "
            "published); train: the remaining 70. ED and ES frames of a patient stay together."
        }
        if test_patients:
            splits["official"] = {
                "train": cases([n for n in train_patients if n not in val_p], train_patients),
                "val": cases(val_p, train_patients),
                "test": cases(sorted(test_patients), test_patients),
            }
            split_notes["official"] = "ACDC training patients (minus validation) / the same validation / testing"
        if test_cases:
            splits["test"] = test_cases
        training = sorted(cid for part, cid, *_ in items if part == "Tr")
        report = finish_dataset(
            stage,
            dataset="ACDC",
            channel_names={0: "MRI"},
            labels=ACDC_LABELS,
            file_ending=".nii.gz",
            training=training,
            test=test_cases,
            splits=splits,
            split_notes=split_notes,
            description="ACDC cine MRI, end-diastolic (ED) and end-systolic (ES) frames as separate cases "
            "(patientNNN_ED / patientNNN_ES), converted by `attnseg convert-dataset acdc`.",
            reference=_REFERENCE,
            licence="see the ACDC challenge website (research use)",
            conversion={
                "source": os.fspath(src),
                "seed": seed,
                "frames": {
                    f"{n}_{ph}": int(_FRAME.match(fr[1].name).group(2))
                    for src_p in (train_patients, test_patients)
                    for n, fs in src_p.items()
                    for ph, fr in fs.items()
                },
            },
            notes=notes,
        )
    report.root = dst
    return report
