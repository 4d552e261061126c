"""Reading/writing images keeps values and geometry (affine, spacing, origin, direction)."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from attnseg.data.io import ImageMeta, ImageReadError, meta_for_array, read_image, read_label, write_image

OBLIQUE = np.array([[0.0, -0.8, 0.1, 10.0], [1.2, 0.0, 0.0, -5.0], [0.0, 0.05, 2.5, 30.0], [0, 0, 0, 1.0]])


def test_nifti_round_trip_keeps_affine_and_values(tmp_path):
    data = np.random.default_rng(0).integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, OBLIQUE), tmp_path / "a.nii.gz")
    arr, meta = read_image(tmp_path / "a.nii.gz")
    assert arr.shape == (1, 5, 6, 7) and np.array_equal(arr[0], data)
    np.testing.assert_allclose(meta.spacing, np.linalg.norm(OBLIQUE[:3, :3], axis=0), rtol=1e-6)
    mask = (arr[0] > 0).astype(np.uint8)
    write_image(mask, meta, tmp_path / "m.nii.gz")
    out = nib.load(tmp_path / "m.nii.gz")
    assert np.array_equal(out.affine, nib.load(tmp_path / "a.nii.gz").affine)
    assert np.array_equal(np.asarray(out.dataobj), mask) and out.get_data_dtype() == np.uint8


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_itk_formats_share_the_voxel_to_ras_affine(tmp_path, ext):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(data, OBLIQUE), tmp_path / "a.nii.gz")
    arr, meta = read_image(tmp_path / "a.nii.gz")
    write_image(arr, meta, tmp_path / f"a{ext}")
    arr2, meta2 = read_image(tmp_path / f"a{ext}")
    assert np.array_equal(arr2, arr)
    np.testing.assert_allclose(meta2.affine, meta.affine, atol=1e-5)
    # SimpleITK reads the same file with LPS origin = RAS origin with x, y negated
    img = sitk.ReadImage(str(tmp_path / f"a{ext}"))
    np.testing.assert_allclose(img.GetOrigin(), [-10.0, 5.0, 30.0], atol=1e-5)


def test_dicom_series_folder(tmp_path):
    from conftest import FIXTURES

    arr, meta = read_image(FIXTURES / "dicom_series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(FIXTURES / "dicom_series")))
    ref = reader.Execute()
    assert arr.shape == (1, *ref.GetSize())  # i, j, k order
    assert np.array_equal(arr[0], np.transpose(sitk.GetArrayFromImage(ref), (2, 1, 0)))
    np.testing.assert_allclose(meta.spacing, ref.GetSpacing())
    write_image(arr[0] > arr.mean(), meta, tmp_path / "seg.nii.gz")
    written = nib.load(tmp_path / "seg.nii.gz")
    np.testing.assert_allclose(written.affine, meta.affine, atol=1e-4)
    np.testing.assert_allclose(
        written.affine[:3, 3], [-ref.GetOrigin()[0], -ref.GetOrigin()[1], ref.GetOrigin()[2]], atol=1e-3
    )


def test_png_rgb_and_label(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    arr, meta = read_image(tmp_path / "x.png")
    assert meta.rgb and arr.shape == (3, 7, 9) and np.array_equal(np.moveaxis(arr, 0, -1), rgb)
    Image.fromarray((rgb[..., 0] > 128).astype(np.uint8)).save(tmp_path / "m.png")
    label, _ = read_label(tmp_path / "m.png")
    assert label.shape == (7, 9) and set(np.unique(label)) <= {0, 1}
    write_image(label, meta, tmp_path / "out.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), label)


def test_corrupt_truncated_missing_and_unsupported_files(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)), tmp_path / "ok.nii.gz")
    raw = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.png").write_bytes(b"not a png")
    (tmp_path / "x.txt").write_text("hello")
    for name, problem in (
        ("trunc.nii.gz", "corrupt or truncated"),
        ("junk.png", "corrupt"),
        ("missing.nii.gz", "not found"),
        ("x.txt", "unsupported"),
    ):
        with pytest.raises(ImageReadError, match=problem) as info:
            read_image(tmp_path / name)
        assert name in str(info.value)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    meta = ImageMeta(spacing=(1.0, 1.0, 1.0), affine=np.eye(4))
    write_image(np.zeros((3, 3, 3), np.uint8), meta, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError):
        write_image(np.zeros((3, 3, 3), np.uint8), meta, tmp_path / "a.unknown")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]
    with gzip.open(tmp_path / "a.nii.gz") as fh:
        assert len(fh.read()) > 0


def test_palette_mask_keeps_class_ids(tmp_path):
    ids = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    im = Image.fromarray(ids, mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "m.png")
    label, _ = read_label(tmp_path / "m.png")
    assert np.array_equal(label, ids)
    image, meta = read_image(tmp_path / "m.png")  # as an image, the palette gives colours
    assert meta.rgb and image.shape == (3, 2, 3) and image[0, 0, 1] == 255


def test_meta_for_array_builds_the_readers_geometry(tmp_path):
    rgb = np.zeros((7, 9, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    _, png = read_image(tmp_path / "x.png")
    made = meta_for_array((7, 9), rgb=True)
    assert (made.spacing, made.rgb) == (png.spacing, png.rgb) == ((1.0, 1.0), True) and made.source_format == "array"
    assert np.array_equal(made.affine, png.affine) and png.source_format == "natural2d"
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7), np.int16), OBLIQUE), tmp_path / "a.nii.gz")
    _, nii = read_image(tmp_path / "a.nii.gz")
    made = meta_for_array((5, 6, 7), affine=nib.load(tmp_path / "a.nii.gz").affine)
    assert np.array_equal(made.affine, nii.affine) and nii.nifti_header is not None and made.nifti_header is None
    np.testing.assert_allclose(made.spacing, nii.spacing, rtol=1e-6)  # the file's pixdim is float32
    diagonal = meta_for_array((5, 6, 7), spacing=(0.5, 0.7, 2.0))
    assert diagonal.spacing == (0.5, 0.7, 2.0) and np.array_equal(diagonal.affine, np.diag([0.5, 0.7, 2.0, 1.0]))
    unit = meta_for_array((5, 6, 7))
    assert unit.spacing == (1.0, 1.0, 1.0) and np.array_equal(unit.affine, np.eye(4))
    for kwargs, problem in (
        ({"affine": np.eye(3)}, r"finite 4x4 .* shape \(3, 3\)"),
        ({"affine": np.full((4, 4), np.nan)}, "finite 4x4"),
        ({"spacing": (1.0, 1.0)}, "spacing must be 3 positive"),
        ({"spacing": (1.0, -1.0, 1.0)}, "spacing must be 3 positive"),
    ):
        with pytest.raises(ValueError, match=problem):
            meta_for_array((5, 6, 7), **kwargs)
    with pytest.raises(ValueError, match="images are 2D or 3D"):
        meta_for_array((5,))


def test_complex_images_are_refused_not_truncated_to_their_real_part(tmp_path):
    path = tmp_path / "complex.nii.gz"
    data = np.zeros((6, 5, 4), np.complex64)
    data[1, 2, 3] = 3 + 4j  # numpy's cast to float would keep 3 and drop 4j with only a warning
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(ImageReadError, match="complex.nii.gz: holds complex64 values; images must be real numbers"):
        read_image(path)


def test_a_nifti_without_voxels_is_named_as_such(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((20, 0, 4), np.float32), np.eye(4)), tmp_path / "empty.nii.gz")
    with pytest.raises(ImageReadError, match=r"empty\.nii\.gz.*holds no voxels \(shape \(20, 0, 4\)\)"):
        read_image(tmp_path / "empty.nii.gz")


def test_a_nifti_header_with_nan_voxel_sizes_is_named_as_such(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4))
    img.header["pixdim"][2] = np.nan
    nib.save(img, tmp_path / "nan.nii.gz")
    with pytest.raises(ImageReadError, match=r"nan\.nii\.gz: its header holds NaN or infinite voxel sizes"):
        read_image(tmp_path / "nan.nii.gz")


def test_a_tilted_or_duplicated_dicom_series_is_named(tmp_path):
    """A gantry tilt gave a mask without the shear (slices placed up to 7.6 mm off) and then an internal error in
    the DICOM SEG writer; a duplicated slice was called a gap (found by QA)."""
    import shutil

    import pydicom
    from conftest import FIXTURES

    tilted = tmp_path / "tilted"
    shutil.copytree(FIXTURES / "dicom_series", tilted)
    files = sorted(tilted.iterdir())
    normal = None
    for f in files:
        ds = pydicom.dcmread(f)
        o = np.asarray(ds.ImageOrientationPatient, float)
        normal = np.cross(o[:3], o[3:])
        along = float(np.asarray(ds.ImagePositionPatient, float) @ normal)
        ds.ImagePositionPatient = list(
            np.asarray(ds.ImagePositionPatient, float) + along * np.tan(np.radians(20)) * o[3:]
        )
        ds.save_as(f)
    with pytest.raises(
        ImageReadError, match=r"tilted: its slices shift within their plane .* \(gantry tilt of 20.0 deg\)"
    ):
        read_image(tilted)
    doubled = tmp_path / "doubled"
    shutil.copytree(FIXTURES / "dicom_series", doubled)
    ds = pydicom.dcmread(sorted(doubled.iterdir())[1])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(doubled / "copy.dcm")
    with pytest.raises(ImageReadError, match="two or more slices share one position"):
        read_image(doubled)
