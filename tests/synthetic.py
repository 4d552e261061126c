"""Small synthetic datasets in the canonical layout, written by tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from attnseg.data.layout import write_dataset_json


def _blob_volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume (HU) with two ellipsoid 'organs' (labels 1, 2) at random positions."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float32)
    ct = rng.normal(-100, 20, size=shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    for value, hu, radius in ((1, 60.0, 0.28), (2, 200.0, 0.16)):
        centre = np.array([rng.uniform(0.35, 0.65) * n for n in shape])
        r = np.array([radius * n for n in shape])
        inside = (((grid - centre) / r) ** 2).sum(-1) <= 1
        label[inside] = value
        ct[inside] = rng.normal(hu, 15, size=int(inside.sum()))
    return np.rint(ct).astype(np.int16), label


def make_ct_dataset(
    root: Path, num_train: int = 3, num_test: int = 1, shape=(48, 40, 12), seed: int = 0, spacing=(1.5, 1.5, 3.0)
) -> Path:
    """3D NIfTI dataset: channel CT, labels background/organ_a/organ_b."""
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    for sub, n, prefix in (("Tr", num_train, "train"), ("Ts", num_test, "test")):
        (root / f"images{sub}").mkdir(parents=True, exist_ok=True)
        (root / f"labels{sub}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            ct, label = _blob_volume(rng, shape)
            nib.save(nib.Nifti1Image(ct, affine), root / f"images{sub}" / f"{prefix}{i:03d}_0000.nii.gz")
            nib.save(nib.Nifti1Image(label, affine), root / f"labels{sub}" / f"{prefix}{i:03d}.nii.gz")
    write_dataset_json(
        root,
        channel_names={0: "CT"},
        labels={"background": 0, "organ_a": 1, "organ_b": 2},
        file_ending=".nii.gz",
        num_training=num_train,
        num_test=num_test,
    )
    return root


def make_rgb_dataset(root: Path, num_train: int = 6, size=(40, 48), seed: int = 0) -> Path:
    """2D RGB PNG dataset with one bright disc 'lesion' per image (binary)."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[: size[0], : size[1]]
    for i in range(num_train):
        cy, cx = rng.uniform(0.3, 0.7) * size[0], rng.uniform(0.3, 0.7) * size[1]
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) <= (0.2 * min(size)) ** 2
        img = rng.integers(60, 120, size=(*size, 3)).astype(np.uint8)
        img[mask] = rng.integers(170, 230, size=(int(mask.sum()), 3))
        Image.fromarray(img).save(root / "imagesTr" / f"img{i:03d}_0000.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "labelsTr" / f"img{i:03d}.png")
    write_dataset_json(
        root,
        channel_names={0: "R", 1: "G", 2: "B"},
        labels={"background": 0, "lesion": 1},
        file_ending=".png",
        num_training=num_train,
    )
    return root


def train_tiny(data: Path, out: Path, **changes) -> Path:
    """A 4-iteration U-Net (width 4) run on ``data`` into ``out``, no augmentation; ``changes`` override."""
    from attnseg.config import AugmentConfig, TrainConfig
    from attnseg.training.trainer import train

    base = dict(model="unet", model_kwargs={"width": 4}, iterations=4, batch_size=2, input_size=[32, 32])
    base.update(num_workers=0, val_every=2, augment=AugmentConfig(0, 0, 0))
    train(TrainConfig(data=str(data), out=str(out), **{**base, **changes}), progress=False)
    return out


def write_dicom_series(
    folder: Path,
    hu: np.ndarray,
    *,
    origin,
    row_direction,
    column_direction,
    spacing=(1.5, 1.5, 3.0),
    reverse_files: bool = False,
    uids: dict | None = None,
) -> Path:
    """A single-frame CT series of ``hu`` ``[slices, rows, columns]`` (int16 HU) into ``folder``: slice ``s``, pixel
    ``(r, c)`` lies at ``origin + c * spacing[1] * row_direction + r * spacing[0] * column_direction + s *
    spacing[2] * normal`` (LPS mm, PS3.3 C.7.6.2.1.1; ``spacing`` is row spacing, column spacing, slice spacing;
    normal = row x column direction). ``reverse_files`` writes the last slice as file 0 (file order is no
    geometry). ``uids`` (study, series, frame_of_reference) are shared with another series when given."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    row, column = np.asarray(row_direction, float), np.asarray(column_direction, float)
    normal = np.cross(row, column)
    uids = uids or {}
    study, series = uids.get("study", generate_uid()), uids.get("series", generate_uid())
    frame_of_reference = uids.get("frame_of_reference", generate_uid())
    n = hu.shape[0]
    for s in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Synthetic^Series", "attnseg-test"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.SeriesNumber = "20240101", "000000", "1", 1
        ds.InstanceNumber = s + 1
        ds.ImagePositionPatient = [round(float(v), 4) for v in np.asarray(origin, float) + s * spacing[2] * normal]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row, *column)]
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (hu[s].astype(np.int32) + 1024).clip(0, 65535).astype(np.uint16).tobytes()
        name = n - 1 - s if reverse_files else s
        ds.save_as(folder / f"img{name:03d}.dcm", enforce_file_format=True)
    return folder
