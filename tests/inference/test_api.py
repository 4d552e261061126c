"""The Python API (README "Python API"): arrays in memory give what `attnseg predict` writes for their files.

The equality tests compare, bit for bit, the label map of ``Predictor.predict(array)`` with the mask file the CLI
writes for the file the array was loaded from (PIL for PNG, nibabel for NIfTI), the float16 probabilities with the
CLI's ``--probabilities`` file, and the float32 probabilities with ``Predictor.predict_files`` on the file.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from synthetic import train_tiny
from typer.testing import CliRunner

import attnseg
from attnseg.cli.args import join_multi_value_options
from attnseg.cli.main import app
from attnseg.data.io import read_image
from attnseg.inference.arrays import image_from_array
from attnseg.inference.predictor import Ensemble, Predictor
from attnseg.runs import RunDir, RunError

runner = CliRunner()


def _train(data, out, **kwargs):
    return train_tiny(data, out, **{"iterations": 2, **kwargs})


@pytest.fixture(scope="module")
def ct_run(ct_dataset, tmp_path_factory):
    """2D model on 3D CT (``data_is_3d``), ``spacing`` geometry: reorientation and resampling both run."""
    return _train(ct_dataset, tmp_path_factory.mktemp("run") / "ct")


@pytest.fixture(scope="module")
def rgb_run(rgb_dataset, tmp_path_factory):
    """2D RGB PNG model, binary with a sigmoid (one logit), ``resize`` geometry."""
    return _train(rgb_dataset, tmp_path_factory.mktemp("run") / "rgb", geometry="resize", loss="bce_dice")


@pytest.fixture(scope="module")
def gray_dataset(tmp_path_factory):
    """The synthetic lesion dataset stored as 8-bit gray PNGs (one z-scored channel)."""
    from synthetic import make_rgb_dataset

    from attnseg.data.layout import write_dataset_json

    root = make_rgb_dataset(tmp_path_factory.mktemp("gray") / "Dataset902_Gray")
    for png in sorted((root / "imagesTr").glob("*.png")):
        Image.open(png).convert("L").save(png)
    write_dataset_json(
        root,
        channel_names={0: "gray"},
        labels={"background": 0, "lesion": 1},
        file_ending=".png",
        num_training=len(list((root / "imagesTr").glob("*.png"))),
    )
    return root


@pytest.fixture(scope="module")
def gray_run(gray_dataset, tmp_path_factory):
    return _train(gray_dataset, tmp_path_factory.mktemp("run") / "gray", geometry="resize")


def _cli(run, inp, out):
    result = runner.invoke(
        app,
        join_multi_value_options(
            ["predict", "--run", str(run), "--input", str(inp), "--output", str(out), "--device", "cpu"]
            + ["--probabilities"]
        ),
    )
    assert result.exit_code == 0, result.output
    return out


def _assert_equals_cli(run, array, path, out, case, *, read_mask, **geometry):
    """``load_run(run).predict(array)`` against the CLI's mask and probabilities for ``path``, and ``predict_files``."""
    predictor = attnseg.load_run(run, device="cpu")
    labels, probs = predictor.predict(array, return_probabilities=True, **geometry)
    _cli(run, path, out)
    written = read_mask(next(out.glob(f"{case}.*")))
    assert labels.dtype == written.dtype == np.uint8 and labels.shape == written.shape
    assert np.array_equal(labels, written)
    cli_probs = np.load(out / f"{case}_probabilities.npz")["probabilities"]
    assert probs.dtype == np.float32 and np.array_equal(probs.astype(np.float16), cli_probs)
    file_labels, file_probs = predictor.predict_files([path], return_probabilities=True)[case]
    assert np.array_equal(file_labels, labels) and np.array_equal(file_probs, probs)  # float32, bit for bit
    assert len(np.unique(labels)) > 1  # a real segmentation, not a constant map
    return labels, probs


def _png(path):
    return np.asarray(Image.open(path))


def _nifti(path):
    return np.asarray(nib.load(path).dataobj)


def test_rgb_png_array_equals_the_cli(rgb_run, rgb_dataset, tmp_path):
    png = rgb_dataset / "imagesTr" / "img000_0000.png"
    array = np.asarray(Image.open(png))  # (H, W, 3) as PIL gives it
    assert array.ndim == 3 and array.shape[-1] == 3
    labels, probs = _assert_equals_cli(rgb_run, array, png, tmp_path / "out", "img000", read_mask=_png)
    assert labels.shape == array.shape[:2] and probs.shape == (2, *array.shape[:2])
    channels_first = np.moveaxis(array, -1, 0)  # (3, H, W) is the same image
    assert np.array_equal(attnseg.load_run(rgb_run, device="cpu").predict(channels_first), labels)


def test_gray_png_array_equals_the_cli(gray_run, gray_dataset, rgb_dataset, tmp_path):
    png = gray_dataset / "imagesTr" / "img001_0000.png"
    array = np.asarray(Image.open(png))
    assert array.ndim == 2
    predictor = attnseg.load_run(gray_run, device="cpu")
    labels, _ = _assert_equals_cli(gray_run, array, png, tmp_path / "gray", "img001", read_mask=_png)
    assert labels.shape == array.shape and np.array_equal(predictor.predict(array[None]), labels)
    assert np.array_equal(predictor.predict(array[..., None]), labels)  # (H, W, 1): a gray image too
    # an RGB image for a gray model is averaged to gray, for the file as for the array
    colour = rgb_dataset / "imagesTr" / "img002_0000.png"
    _assert_equals_cli(gray_run, np.asarray(Image.open(colour)), colour, tmp_path / "rgb", "img002", read_mask=_png)


def _oblique_affine() -> np.ndarray:
    """A rotation by 25 deg about z and 10 deg about x, axes permuted and flipped, anisotropic voxels."""
    a, b = np.deg2rad(25.0), np.deg2rad(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    perm = np.array([[0, -1, 0], [1, 0, 0], [0, 0, -1]], float)
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ perm @ np.diag([1.1, 0.9, 2.5])
    affine[:3, 3] = [12.5, -30.0, 80.0]
    return affine


def test_oblique_nifti_array_equals_the_cli(ct_run, ct_dataset, tmp_path):
    src = nib.load(ct_dataset / "imagesTs" / "test000_0000.nii.gz")
    path = tmp_path / "oblique_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj), _oblique_affine()), path)
    img = nib.load(path)
    volume, affine = np.asarray(img.dataobj), img.affine
    predictor = attnseg.load_run(ct_run, device="cpu")
    labels, probs = _assert_equals_cli(
        ct_run, volume, path, tmp_path / "out", "oblique", read_mask=_nifti, affine=affine
    )
    assert labels.shape == volume.shape and probs.shape == (3, *volume.shape)
    # the array's geometry is the file's: same affine bit for bit, same voxel size to float32 (NIfTI pixdim)
    from_file, file_meta = read_image(path)
    from_array, array_meta = image_from_array(volume, predictor.plan, affine=affine)
    assert np.array_equal(from_array, from_file) and np.array_equal(array_meta.affine, file_meta.affine)
    np.testing.assert_allclose(array_meta.spacing, file_meta.spacing, rtol=1e-6)
    assert (array_meta.ndim, array_meta.rgb) == (file_meta.ndim, file_meta.rgb) == (3, False)
    # without the affine the volume is read as unit-spaced RAS: another grid, another result
    assert not np.array_equal(predictor.predict(volume, return_probabilities=True)[1], probs)


def test_spacing_describes_an_axis_aligned_volume(ct_run, ct_dataset, tmp_path):
    path = ct_dataset / "imagesTs" / "test000_0000.nii.gz"  # diagonal affine, 1.5 x 1.5 x 3 mm
    volume = np.asarray(nib.load(path).dataobj)
    predictor = attnseg.load_run(ct_run, device="cpu")
    labels, probs = _assert_equals_cli(
        ct_run, volume, path, tmp_path / "out", "test000", read_mask=_nifti, spacing=(1.5, 1.5, 3.0)
    )
    with_affine = predictor.predict(volume, affine=nib.load(path).affine, return_probabilities=True)
    assert np.array_equal(with_affine[0], labels) and np.array_equal(with_affine[1], probs)
    as_channels = predictor.predict(volume[None], spacing=(1.5, 1.5, 3.0))
    assert np.array_equal(as_channels, labels)


def test_a_volume_of_three_slices_stays_a_volume(ct_run, ct_dataset, tmp_path):
    # (X, Y, 3) is RGB-shaped, but this run was trained on volumes: three slices, not three colours
    volume = np.asarray(nib.load(ct_dataset / "imagesTs" / "test000_0000.nii.gz").dataobj)[..., 4:7]
    path = tmp_path / "slab_0000.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 3.0, 1.0])), path)
    labels, _ = _assert_equals_cli(
        ct_run, volume, path, tmp_path / "out", "slab", read_mask=_nifti, spacing=(1.5, 1.5, 3.0)
    )
    assert labels.shape == volume.shape


def test_load_run_reads_the_weights_once(ct_run, monkeypatch):
    calls = []
    original = RunDir.load_weights

    def counting(self, model, name):
        calls.append(name)
        return original(self, model, name)

    monkeypatch.setattr(RunDir, "load_weights", counting)
    predictor = attnseg.load_run(ct_run, checkpoint="last")
    assert type(predictor) is Predictor and predictor.device.type in ("cpu", "cuda")
    volume = np.random.default_rng(0).normal(0, 50, size=(24, 20, 4)).astype(np.float32)
    masks = [predictor.predict(volume, spacing=(1.5, 1.5, 3.0)) for _ in range(3)]
    assert calls == ["last"]
    assert all(np.array_equal(m, masks[0]) for m in masks)


def test_a_list_of_runs_is_an_ensemble(ct_run, ct_dataset, tmp_path_factory):
    other = _train(ct_dataset, tmp_path_factory.mktemp("run") / "ct_seed1", seed=1)
    volume = np.asarray(nib.load(ct_dataset / "imagesTs" / "test000_0000.nii.gz").dataobj)
    ensemble = attnseg.load_run([ct_run, other], device="cpu")
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 2
    labels, probs = ensemble.predict(volume, spacing=(1.5, 1.5, 3.0), return_probabilities=True)
    a, b = (
        attnseg.load_run(r, device="cpu").predict(volume, spacing=(1.5, 1.5, 3.0), return_probabilities=True)
        for r in (ct_run, other)
    )
    assert np.array_equal(probs, (a[1] + b[1]) / 2) and labels.shape == volume.shape
    with pytest.raises(RunError, match="the same run directory is given twice"):
        attnseg.load_run([ct_run, ct_run], device="cpu")


def test_load_run_errors(ct_run, tmp_path):
    with pytest.raises(RunError, match="checkpoint must be 'best' or 'last', got 'final'"):
        attnseg.load_run(ct_run, checkpoint="final")
    with pytest.raises(RunError, match="model.json"):
        attnseg.load_run(tmp_path)


@pytest.mark.parametrize(
    "shape, kwargs, problem",
    [
        ((40,), {}, r"image of shape \(40,\): 1 dimensions"),
        ((2, 3, 4, 5, 6), {}, r"image of shape \(2, 3, 4, 5, 6\): 5 dimensions"),
        ((16, 16), {}, r"\(16, 16\): a 2D image, but the run was trained on 3D volumes"),
        ((2, 16, 16, 4), {}, r"2 channel\(s\) on the first axis but the model takes 1"),
        ((16, 16, 4, 1), {}, r"a 4D NIfTI's array is \(X, Y, Z, C\): pass np.moveaxis\(array, -1, 0\)"),
        ((16, 16, 4), {"affine": np.eye(3)}, r"affine must be a finite 4x4 .* got shape \(3, 3\)"),
        (
            (16, 16, 4),
            {"affine": np.full((4, 4), np.nan)},
            r"affine must be a finite 4x4 .* got NaN or infinite entries",
        ),
        ((16, 16, 4), {"affine": np.eye(4), "spacing": (1, 1, 1)}, "give affine= or spacing=, not both"),
        ((16, 16, 4), {"spacing": (1.0, 1.0)}, r"spacing must be 3 positive voxel sizes"),
        ((16, 16, 4), {"spacing": (1.0, 0.0, 1.0)}, r"spacing must be 3 positive voxel sizes"),
        ((16, 16, 4), {"affine": np.diag([1.0, 0.0, 1.0, 1.0])}, "degenerate"),
    ],
)
def test_bad_arrays_for_a_volume_run(ct_run, shape, kwargs, problem):
    predictor = attnseg.load_run(ct_run, device="cpu")
    with pytest.raises(ValueError, match=problem) as info:
        predictor.predict(np.zeros(shape, np.float32), **kwargs)
    if "image of shape" in str(info.value):
        assert "accepts (X, Y, Z) in nibabel's voxel order" in str(info.value)


@pytest.mark.parametrize(
    "shape, problem",
    [
        ((16, 20), r"image of shape \(16, 20\): a gray image \(H, W\) has one channel but the model takes 3"),
        ((2, 16, 20), r"\(2, 16, 20\): neither \(C, H, W\) with the model's 3 channel\(s\) nor an RGB"),
        ((3, 16, 20, 5), r"\(3, 16, 20, 5\): a volume, but the run was trained on 2D images"),
    ],
)
def test_bad_arrays_for_an_rgb_run(rgb_run, shape, problem):
    with pytest.raises(ValueError, match=problem) as info:
        attnseg.load_run(rgb_run, device="cpu").predict(np.zeros(shape, np.uint8))
    assert "accepts (H, W, 3) RGB as PIL/imageio return it" in str(info.value)


def test_non_numeric_arrays_are_refused(rgb_run):
    with pytest.raises(ValueError, match="image of dtype <U1: expected a real numeric array"):
        attnseg.load_run(rgb_run, device="cpu").predict(np.full((8, 8, 3), "a"))


def test_nan_and_inf_inputs_are_refused_not_segmented(ct_run, ct_dataset, tmp_path):
    """One NaN voxel spreads through every convolution window and its argmax is background: refuse the input
    (the array with a ValueError, a file in a folder as a failed case, exit 2) instead of a silently wrong mask."""
    path = ct_dataset / "imagesTs" / "test000_0000.nii.gz"
    image = nib.load(path)
    volume = np.asarray(image.dataobj).astype(np.float32)
    volume[0, 0, 0], volume[1, 2, 3], volume[2, 2, 2] = np.nan, np.inf, -np.inf
    predictor = attnseg.load_run(ct_run, device="cpu")
    with pytest.raises(ValueError, match=r"image of shape \(48, 40, 12\) holds 1 NaN and 2 infinite voxel\(s\)"):
        predictor.predict(volume, affine=image.affine)
    folder = tmp_path / "in"
    folder.mkdir()
    nib.save(nib.Nifti1Image(volume, image.affine), folder / "bad_0000.nii.gz")
    nib.save(image, folder / "good_0000.nii.gz")
    result = runner.invoke(
        app, ["predict", "--run", str(ct_run), "--input", str(folder), "--output", str(tmp_path / "out")]
    )
    assert result.exit_code == 2, result.output
    assert "bad_0000.nii.gz: holds 1 NaN and 2 infinite voxel(s)" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz"]


def test_predict_files_returns_masks_by_case(ct_run, ct_dataset, tmp_path):
    predictor = attnseg.load_run(ct_run, device="cpu")
    path = ct_dataset / "imagesTs" / "test000_0000.nii.gz"
    masks = predictor.predict_files(ct_dataset / "imagesTs")
    assert list(masks) == ["test000"] and masks["test000"].shape == nib.load(path).shape
    from attnseg.data.io import ImageReadError

    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no images found"):
        predictor.predict_files([tmp_path / "empty"])
    with pytest.raises(ImageReadError, match="two inputs give the case name 'test000'"):
        predictor.predict_files([path, ct_dataset / "imagesTs"])


def test_the_readme_names_the_conventions():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for phrase in ("attnseg.load_run(", "(H, W, 3)", "(C, X, Y, Z)", "affine=", "predict_files("):
        assert phrase in readme


def test_load_run_and_create_model_name_a_wrong_argument_type():
    from attnseg.models import create_model

    for bad in (None, 3, []):
        with pytest.raises(TypeError, match="run_dir must be a run directory path or a list of them"):
            attnseg.load_run(bad)
    for kwargs in ({"in_channels": "3"}, {"in_channels": 3.5}, {"num_classes": True}):
        with pytest.raises(TypeError, match="must be an integer"):
            create_model("unet", **kwargs)
