"""Reading and writing images with their geometry.

Array convention (as MONAI and nnU-Net's reader/writers): channels first, ``[C, *spatial]``, spatial axes in the
file's voxel order (NIfTI ``i, j, k``). Files read through SimpleITK (NRRD, MHA, DICOM series) are transposed to the
same ``i, j, k`` order, so one 4x4 voxel-to-RAS ``affine`` describes every 3D image. 2D images (PNG/JPEG/TIFF/BMP)
are ``[C, H, W]`` with unit spacing.

Writers reproduce the input geometry exactly: a NIfTI read with nibabel is written back with its own header and
affine (so the round trip keeps the affine bit for bit); other 3D formats keep SimpleITK's spacing, origin and
direction. Every write goes to a temporary file that is renamed into place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnseg.errors import AttnsegError
from attnseg.io import atomic_write

__all__ = [
    "ImageMeta",
    "ImageReadError",
    "meta_for_array",
    "read_image",
    "read_label",
    "write_image",
    "image_suffix",
    "strip_suffix",
    "is_dicom_dir",
    "NATURAL_2D_SUFFIXES",
    "VOLUME_SUFFIXES",
    "SUPPORTED_SUFFIXES",
]

NATURAL_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".mha", ".mhd", ".nhdr")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
SUPPORTED_SUFFIXES = VOLUME_SUFFIXES + NATURAL_2D_SUFFIXES

# SimpleITK/DICOM world coordinates are LPS; NIfTI affines are RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class ImageReadError(AttnsegError, ValueError):
    """A file cannot be read as an image; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass
class ImageMeta:
    """Geometry of an image, enough to write a result back on the same grid.

    Attributes:
        spacing: voxel size per spatial axis (mm), in array-axis order.
        affine: 4x4 voxel-index -> RAS-mm matrix (for 2D images, a diagonal of the spacing).
        path: the file (or DICOM folder) it came from.
    """

    spacing: tuple[float, ...]
    affine: np.ndarray
    path: str = ""
    source_format: str = ""  # "nifti" | "itk" | "dicom" | "natural2d"
    nifti_header: Any = field(default=None, repr=False)  # nibabel header, to write NIfTI back unchanged
    rgb: bool = False  # natural 2D image with 3 colour channels

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    @property
    def shape_hint(self) -> str:
        return "x".join(str(round(s, 3)) for s in self.spacing)


def meta_for_array(
    spatial_shape: tuple[int, ...],
    *,
    affine: np.ndarray | None = None,
    spacing: tuple[float, ...] | None = None,
    rgb: bool = False,
    **fields: Any,
) -> ImageMeta:
    """The geometry of an array ``[C, *spatial_shape]``, built as :func:`read_image` builds it for a file.

    ``affine`` is the 4x4 voxel-index -> RAS-mm matrix (as nibabel's ``img.affine``); without ``spacing`` the voxel
    size is the length of its first ``ndim`` columns. ``spacing`` alone gives the diagonal affine (as the
    SimpleITK reader does for 2D images). Neither: unit spacing and the identity affine (as for PNG files). Both:
    the affine and the voxel size the file header states (NIfTI ``pixdim``), kept as given. ``fields`` are the other
    :class:`ImageMeta` fields a reader knows (``path``, ``source_format``, ``nifti_header``).

    Raises:
        ValueError: a spatial shape other than 2D or 3D, an affine that is not a finite 4x4 matrix, a spacing of
            the wrong length or not positive.
    """
    ndim = len(spatial_shape)
    if ndim not in (2, 3):
        raise ValueError(f"spatial shape {tuple(spatial_shape)}: images are 2D or 3D")
    if affine is not None:
        affine = np.array(affine, dtype=float)
        if affine.shape != (4, 4) or not np.isfinite(affine).all():
            got = f"shape {affine.shape}" if affine.shape != (4, 4) else "NaN or infinite entries"
            raise ValueError(f"affine must be a finite 4x4 voxel -> RAS matrix, got {got}")
    if spacing is not None:
        spacing = tuple(float(s) for s in np.asarray(spacing, dtype=float).ravel())
        if len(spacing) != ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must be {ndim} positive voxel sizes (one per spatial axis), got {spacing}")
    if affine is None:
        affine = np.diag([*(spacing or (1.0,) * ndim), *(1.0,) * (4 - ndim)])
    if spacing is None:
        spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :ndim], axis=0))
    return ImageMeta(spacing=spacing, affine=affine, rgb=rgb, **{"source_format": "array", **fields})


def image_suffix(path: str | os.PathLike) -> str:
    """The (possibly double) file extension, lower-cased: ``.nii.gz``, ``.png`` ..."""
    name = Path(path).name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def strip_suffix(path: str | os.PathLike) -> str:
    """File name without its image extension (``case_0000.nii.gz`` -> ``case_0000``)."""
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: len(name) - len(suffix)] if suffix and name.lower().endswith(suffix) else name


def is_dicom_dir(path: str | os.PathLike) -> bool:
    """True for a folder holding a DICOM series (files with the DICM preamble)."""
    p = Path(path)
    if not p.is_dir():
        return False
    for f in sorted(p.iterdir())[:16]:
        if f.is_file():
            try:
                with open(f, "rb") as fh:
                    fh.seek(128)
                    if fh.read(4) == b"DICM":
                        return True
            except OSError:
                continue
    return False


def _affine_from_itk(image: Any) -> np.ndarray:
    """Voxel (i, j, k) -> RAS affine from SimpleITK's spacing, origin and direction (which are LPS)."""
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(dim, dim)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    lps = np.eye(4)
    lps[:dim, :dim] = direction * spacing[None, :]
    lps[:dim, 3] = origin
    return _LPS_TO_RAS @ lps


def _itk_geometry_from_affine(affine: np.ndarray, ndim: int) -> tuple[tuple, tuple, tuple]:
    lps = _LPS_TO_RAS @ np.asarray(affine, dtype=float)
    m = lps[:ndim, :ndim]
    spacing = np.linalg.norm(m, axis=0)
    direction = m / np.where(spacing == 0, 1, spacing)[None, :]
    return tuple(spacing.tolist()), tuple(lps[:ndim, 3].tolist()), tuple(direction.ravel().tolist())


def _read_nifti(path: Path) -> tuple[np.ndarray, ImageMeta]:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)  # forces decompression: truncated gzip files fail here
    if 0 in img.shape:
        raise ImageReadError(path, f"holds no voxels (shape {tuple(img.shape)})")
    if not (np.isfinite(img.affine).all() and np.isfinite(img.header.get_zooms()).all()):
        raise ImageReadError(path, "its header holds NaN or infinite voxel sizes or orientation (pixdim, qform, sform)")
    if data.ndim == 4:  # 4D NIfTI: last axis as channels
        data = np.moveaxis(data, -1, 0)
    elif data.ndim in (2, 3):
        data = data[None]
    else:
        raise ImageReadError(path, f"unsupported NIfTI dimensionality {data.ndim}")
    spatial = data.ndim - 1
    zooms = tuple(float(z) for z in img.header.get_zooms()[:spatial])
    meta = meta_for_array(
        data.shape[1:], affine=img.affine, spacing=zooms, path=str(path), source_format="nifti", nifti_header=img.header
    )
    return data, meta


def _from_itk_image(image: Any, path: Path, source_format: str) -> tuple[np.ndarray, ImageMeta]:
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)  # (k, j, i[, components])
    dim = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() > 1:
        arr = np.moveaxis(arr, -1, 0)
        arr = np.transpose(arr, (0, *range(dim, 0, -1)))
    else:
        arr = np.transpose(arr, tuple(range(dim - 1, -1, -1)))[None]
    affine = _affine_from_itk(image) if dim == 3 else np.diag([*image.GetSpacing(), 1.0, 1.0])
    meta = ImageMeta(
        spacing=tuple(float(s) for s in image.GetSpacing()),
        affine=affine,
        path=str(path),
        source_format=source_format,
    )
    return arr, meta


def _read_itk(path: Path) -> tuple[np.ndarray, ImageMeta]:
    import SimpleITK as sitk

    return _from_itk_image(sitk.ReadImage(str(path)), path, "itk")


def _read_dicom_series(path: Path) -> tuple[np.ndarray, ImageMeta]:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(path))
    if not series:
        raise ImageReadError(path, "no DICOM series found in this folder")
    if len(series) > 1:
        raise ImageReadError(path, f"folder holds {len(series)} DICOM series; put each series in its own folder")
    files = reader.GetGDCMSeriesFileNames(str(path), series[0])
    _check_slice_geometry(path, files)
    reader.SetFileNames(files)
    return _from_itk_image(reader.Execute(), path, "dicom")


def _check_slice_geometry(path: Path, files: tuple[str, ...]) -> None:
    """One orientation and evenly spaced positions for the slices of a series (PS3.3 C.7.6.2 Image Plane Module);
    a series whose files lack these tags (e.g. one multi-frame file) is left to SimpleITK."""
    import SimpleITK as sitk

    positions, orientations = [], []
    for name in files:
        header = sitk.ImageFileReader()
        header.SetFileName(name)
        header.ReadImageInformation()
        if not (header.HasMetaDataKey("0020|0032") and header.HasMetaDataKey("0020|0037")):
            return
        try:
            positions.append([float(v) for v in header.GetMetaData("0020|0032").split("\\")])
            orientations.append([float(v) for v in header.GetMetaData("0020|0037").split("\\")])
        except ValueError:
            raise ImageReadError(name, "Image Position/Orientation (Patient) is not a list of numbers") from None
    if len(files) < 2:
        return
    for name, orientation in zip(files[1:], orientations[1:]):
        if len(orientation) != 6 or not np.allclose(orientation, orientations[0], atol=1e-4):
            raise ImageReadError(
                path,
                f"inconsistent slice orientation: {Path(name).name} has Image Orientation (Patient) "
                f"{orientation}, {Path(files[0]).name} has {orientations[0]}; one series must have one orientation",
            )
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    points = np.asarray(positions, dtype=float)
    along = np.sort(points @ normal)
    steps = np.diff(along)
    step = float(np.median(steps))
    if step < 1e-3 or (steps < 1e-3).any():
        raise ImageReadError(path, "two or more slices share one position; is a series duplicated in this folder?")
    first, last = points[np.argmin(points @ normal)], points[np.argmax(points @ normal)]
    shift = (last - first) - ((last - first) @ normal) * normal  # in the slice plane: zero unless tilted
    if np.linalg.norm(shift) > 0.01 + 1e-3 * (along[-1] - along[0]):
        tilt = np.degrees(np.arctan2(np.linalg.norm(shift), along[-1] - along[0]))
        raise ImageReadError(
            path,
            f"its slices shift within their plane from one to the next (gantry tilt of {tilt:.1f} deg), so the "
            "series is not on a rectangular voxel grid; resample it to one first",
        )
    uneven = np.flatnonzero(np.abs(steps - step) > max(0.01, 0.05 * step))
    if uneven.size:
        at = int(uneven[0])
        missing = round(steps[at] / step) - 1
        what = f"{missing} missing slice(s)?" if missing >= 1 else "uneven spacing"
        listed = {os.path.realpath(f) for f in files}
        left_out = sorted(
            f.name
            for f in path.iterdir()
            if f.is_file() and not f.name.startswith(".") and os.path.realpath(f) not in listed
        )
        unread = f"; not read as part of it: {', '.join(left_out[:5])}{' ...' if len(left_out) > 5 else ''}"
        raise ImageReadError(
            path,
            f"slice gap: {steps[at]:.2f} mm between the slices at {along[at]:.2f} and {along[at + 1]:.2f} mm "
            f"along the slice normal, the others are {step:.2f} mm apart ({what}); the series is incomplete"
            + (f"{unread} (damaged or truncated?)" if left_out else ""),
        )


def _read_natural_2d(path: Path, label: bool = False) -> tuple[np.ndarray, ImageMeta]:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if label and im.mode == "P":
            pass  # a palette mask stores class ids as palette indices: keep them
        elif im.mode in ("RGBA", "P", "CMYK", "YCbCr", "LA"):
            im = im.convert("RGB" if im.mode != "LA" else "L")
        arr = np.asarray(im)
    if arr.ndim == 3:
        arr = np.moveaxis(arr[..., :3], -1, 0)
        rgb = True
    else:
        arr = arr[None]
        rgb = False
    return arr, meta_for_array(arr.shape[1:], rgb=rgb, path=str(path), source_format="natural2d")


def read_image(path: str | os.PathLike, *, label: bool = False) -> tuple[np.ndarray, ImageMeta]:
    """Read an image as ``[C, *spatial]`` plus its geometry.

    Supports NIfTI (.nii, .nii.gz), SimpleITK formats (.nrrd, .mha, .mhd), DICOM series folders, and 2D images
    (.png, .jpg, .jpeg, .tif, .tiff, .bmp). ``label=True`` keeps palette indices of palette PNGs (class ids).

    Raises:
        ImageReadError: missing, corrupt, truncated or unsupported file (the message names it).
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "file not found")
    arr, meta = _read_any(p, label)
    if np.iscomplexobj(arr) or arr.dtype.kind not in "biuf":  # complex MR data, RGB structured types, ...
        raise ImageReadError(p, f"holds {arr.dtype} values; images must be real numbers (e.g. a magnitude image)")
    return arr, meta


def _read_any(p: Path, label: bool) -> tuple[np.ndarray, ImageMeta]:
    try:
        if p.is_dir():
            if not is_dicom_dir(p):
                raise ImageReadError(p, "folder is not a DICOM series (no file with a DICM header)")
            return _read_dicom_series(p)
        suffix = image_suffix(p)
        if suffix in NIFTI_SUFFIXES:
            return _read_nifti(p)
        if suffix in ITK_SUFFIXES:
            return _read_itk(p)
        if suffix in NATURAL_2D_SUFFIXES:
            return _read_natural_2d(p, label=label)
    except ImageReadError:
        raise
    except Exception as exc:  # nibabel/SimpleITK/PIL raise many types for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        problem = f"cannot read ({type(exc).__name__}: {reason[:200]}); is the file corrupt or truncated?"
        raise ImageReadError(p, problem) from None
    raise ImageReadError(p, f"unsupported file type {image_suffix(p)!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}")


def read_label(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """Read an integer label map ``[*spatial]``. Palette PNGs give their indices; RGB masks their first channel."""
    arr, meta = read_image(path, label=True)
    if arr.shape[0] != 1 and not meta.rgb:
        raise ImageReadError(path, f"a label map must have one channel, found {arr.shape[0]}")
    arr = arr[0]
    if np.issubdtype(arr.dtype, np.floating):
        rounded = np.rint(arr)
        if not np.allclose(arr, rounded, atol=1e-3):
            raise ImageReadError(path, "label map holds non-integer values (expected integer class ids)")
        arr = rounded
    return arr.astype(np.int16 if arr.max(initial=0) > 255 or arr.min(initial=0) < 0 else np.uint8), meta


def write_image(array: np.ndarray, meta: ImageMeta, path: str | os.PathLike) -> Path:
    """Write ``array`` (``[*spatial]`` or ``[C, *spatial]``) with the geometry of ``meta``, atomically.

    The format follows the extension of ``path``. A DICOM-series meta written to ``.nii.gz`` keeps its geometry.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    spatial = meta.ndim
    if arr.ndim == spatial + 1 and arr.shape[0] == 1:
        arr = arr[0]
    suffix = image_suffix(path)
    writers = {
        **dict.fromkeys(NIFTI_SUFFIXES, lambda tmp: _write_nifti(arr, meta, tmp)),
        **dict.fromkeys(ITK_SUFFIXES, lambda tmp: _write_itk(arr, meta, tmp)),
        **dict.fromkeys(NATURAL_2D_SUFFIXES, lambda tmp: _write_natural_2d(arr, tmp)),
    }
    if suffix not in writers:
        raise ValueError(f"{path}: cannot write files of type {suffix!r}")
    atomic_write(path, writers[suffix], suffix=suffix or path.suffix)
    return path


def _write_nifti(arr: np.ndarray, meta: ImageMeta, tmp: Path) -> None:
    import nibabel as nib

    data = arr
    if data.ndim == meta.ndim + 1:  # channels -> 4th axis
        data = np.moveaxis(data, 0, -1)
    if meta.nifti_header is not None:
        header = meta.nifti_header.copy()
        header.set_data_dtype(data.dtype)
        header.set_data_shape(data.shape)
        img = nib.Nifti1Image(data, meta.affine, header=header)
        # keep the exact qform/sform codes of the input
        img.set_qform(meta.nifti_header.get_qform(), code=int(meta.nifti_header["qform_code"]))
        img.set_sform(meta.nifti_header.get_sform(), code=int(meta.nifti_header["sform_code"]))
        header["scl_slope"], header["scl_inter"] = 1.0, 0.0
    else:
        img = nib.Nifti1Image(data, meta.affine)
        img.set_qform(meta.affine, code=1)
        img.set_sform(meta.affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(tmp))


def _write_itk(arr: np.ndarray, meta: ImageMeta, tmp: Path) -> None:
    import SimpleITK as sitk

    spatial = meta.ndim
    if arr.ndim == spatial + 1:
        image = sitk.GetImageFromArray(np.transpose(arr, (*range(spatial, 0, -1), 0)), isVector=True)
    else:
        image = sitk.GetImageFromArray(np.transpose(arr, tuple(range(spatial - 1, -1, -1))))
    if spatial == 3:
        spacing, origin, direction = _itk_geometry_from_affine(meta.affine, 3)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
    else:
        image.SetSpacing(tuple(float(s) for s in meta.spacing))
    sitk.WriteImage(image, str(tmp), useCompression=True)


def _write_natural_2d(arr: np.ndarray, tmp: Path) -> None:
    from PIL import Image

    if arr.ndim == 3:  # [C, H, W] -> H, W, C
        arr = np.moveaxis(arr, 0, -1)
    if arr.dtype != np.uint8:
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
            raise ValueError(f"{tmp}: values outside 0..255 cannot be written as an 8-bit image")
        arr = arr.astype(np.uint8)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
    Image.fromarray(arr).save(tmp, format=fmt[image_suffix(tmp)])
