"""Prediction writes masks on exactly the input grid, for NIfTI, DICOM series and 2D images."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from synthetic import train_tiny
from typer.testing import CliRunner

from attnseg.cli.args import join_multi_value_options
from attnseg.cli.main import app
from attnseg.inference.postprocess import keep_largest_component

runner = CliRunner()


@pytest.fixture(scope="module")
def ct_run(ct_dataset, tmp_path_factory):
    return train_tiny(ct_dataset, tmp_path_factory.mktemp("run") / "ct")


def _predict(run, inp, out, *extra):
    return runner.invoke(
        app,
        join_multi_value_options(
            ["predict", "--run", str(run), "--input", str(inp), "--output", str(out), "--device", "cpu", *extra]
        ),
    )


def test_nifti_with_oblique_affine_keeps_its_affine(ct_run, ct_dataset, tmp_path):
    src = nib.load(ct_dataset / "imagesTs" / "test000_0000.nii.gz")
    rot = np.array([[0, -1, 0], [1, 0, 0], [0, 0, -1]], float) @ np.diag([1.1, 0.9, 2.5])
    affine = np.eye(4)
    affine[:3, :3] = rot
    affine[:3, 3] = [12.5, -30.0, 80.0]
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj), affine), tmp_path / "oblique.nii.gz")
    result = _predict(ct_run, tmp_path / "oblique.nii.gz", tmp_path / "out", "--probabilities", "--overlay")
    assert result.exit_code == 0, result.output
    mask = nib.load(tmp_path / "out" / "oblique.nii.gz")
    assert np.array_equal(mask.affine, nib.load(tmp_path / "oblique.nii.gz").affine)
    assert mask.shape == src.shape and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
    probs = np.load(tmp_path / "out" / "oblique_probabilities.npz")["probabilities"]
    assert probs.shape == (3, *src.shape)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
    assert (probs.argmax(0) == np.asarray(mask.dataobj)).mean() > 0.98  # float16 storage may flip near-ties
    assert (tmp_path / "out" / "overlays" / "oblique.png").exists()


def test_reoriented_copy_gets_the_same_segmentation(ct_run, ct_dataset, tmp_path):
    # The same scan stored with flipped/permuted axes must give the same mask in world space.
    src = nib.load(ct_dataset / "imagesTs" / "test000_0000.nii.gz")
    data = np.asarray(src.dataobj)
    flipped = data[::-1].transpose(1, 0, 2)
    aff = src.affine.copy()
    # voxel (j, i', k) of the new array = voxel (n_i - 1 - i', j, k) of the old one
    n_i = data.shape[0]
    new = np.zeros((4, 4))
    new[:, 0] = src.affine[:, 1]
    new[:, 1] = -src.affine[:, 0]
    new[:, 2] = src.affine[:, 2]
    new[:3, 3] = src.affine[:3, 3] + (n_i - 1) * src.affine[:3, 0]
    new[3, 3] = 1
    nib.save(nib.Nifti1Image(flipped, new), tmp_path / "b.nii.gz")
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "a.nii.gz")
    assert _predict(ct_run, tmp_path / "a.nii.gz", tmp_path / "o1").exit_code == 0
    assert _predict(ct_run, tmp_path / "b.nii.gz", tmp_path / "o2").exit_code == 0
    a = np.asarray(nib.load(tmp_path / "o1" / "a.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "o2" / "b.nii.gz").dataobj)
    assert np.array_equal(a[::-1].transpose(1, 0, 2), b)


def test_dicom_series_gives_nifti_on_the_dicom_grid(ct_run, tmp_path):
    from conftest import FIXTURES

    result = _predict(ct_run, FIXTURES / "dicom_series", tmp_path / "out")
    assert result.exit_code == 0, result.output
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(FIXTURES / "dicom_series")))
    ref = reader.Execute()
    mask = sitk.ReadImage(str(tmp_path / "out" / "dicom_series.nii.gz"))
    assert mask.GetSize() == ref.GetSize()
    np.testing.assert_allclose(mask.GetSpacing(), ref.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(mask.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(mask.GetDirection(), ref.GetDirection(), atol=1e-5)


def test_folder_continues_past_bad_files(ct_run, ct_dataset, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(ct_dataset / "imagesTs" / "test000_0000.nii.gz", folder / "good_0000.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    (folder / "notes.txt").write_text("not an image")
    result = _predict(ct_run, folder, tmp_path / "out")
    assert result.exit_code == 2
    assert "broken" in result.output and "notes.txt" in result.output and "1 of 3" in result.output
    assert (tmp_path / "out" / "good.nii.gz").exists() and not (tmp_path / "out" / "broken.nii.gz").exists()


def test_png_model_round_trip(rgb_dataset, tmp_path):
    out = train_tiny(rgb_dataset, tmp_path / "run", iterations=3, val_every=3, geometry="resize", loss="bce_dice")
    img = rgb_dataset / "imagesTr" / "img000_0000.png"
    assert _predict(out, img, tmp_path / "pred", "--tta").exit_code == 0
    mask = np.asarray(Image.open(tmp_path / "pred" / "img000.png"))
    assert mask.shape == np.asarray(Image.open(img)).shape[:2] and set(np.unique(mask)) <= {0, 1}
    # a mask named like its input, written into the input's folder, would replace the image: refused, nothing written
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(img, folder / name)
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    for inp, first in ((folder, "a.png"), (folder / "b.png", "b.png")):
        result = _predict(out, inp, folder)
        assert result.exit_code == 2, result.output
        said = " ".join(result.output.split())
        assert f"output folder {folder}: the mask {first} would overwrite the input image {folder / first}" in said
        assert {f.name: f.read_bytes() for f in folder.iterdir()} == before
    # one case name, two formats: each input gets its own mask (x.jpg -> x.png, x.tif -> x.tif)
    twins = tmp_path / "twins"
    twins.mkdir()
    for suffix in (".jpg", ".tif"):
        Image.open(img).save(twins / f"x{suffix}")
    assert _predict(out, twins, tmp_path / "twins_out").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "twins_out").iterdir()) == ["x.png", "x.tif"]


def test_rgb_folder_files_are_cases_not_channels(tmp_path):
    from attnseg.inference.predictor import find_inputs

    for name in ("a_0000.png", "a_0001.png", "b.png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name)
    assert [(i.case_id, len(i.paths)) for i in find_inputs(tmp_path, 1)] == [("a", 1), ("a_0001", 1), ("b", 1)]
    two = find_inputs(tmp_path, 2)
    assert [(i.case_id, len(i.paths)) for i in two] == [("a", 2), ("b", 1)]


@pytest.fixture(scope="module")
def second_ct_run(ct_dataset, tmp_path_factory):
    """Another CT run (other seed and input size): an ensemble member with its own plan."""
    return train_tiny(ct_dataset, tmp_path_factory.mktemp("run") / "ct2", input_size=[48, 48], seed=1)


def test_an_ensemble_averages_the_runs_probabilities(ct_run, second_ct_run, ct_dataset, tmp_path):
    image = ct_dataset / "imagesTs" / "test000_0000.nii.gz"
    probs = []
    for name, run in (("a", ct_run), ("b", second_ct_run)):
        assert _predict(run, image, tmp_path / name, "--probabilities").exit_code == 0
        probs.append(np.load(tmp_path / name / "test000_probabilities.npz")["probabilities"].astype(np.float32))
    result = _predict(ct_run, image, tmp_path / "ens", "--probabilities", "--run", str(second_ct_run))
    assert result.exit_code == 0, result.output
    ens = np.load(tmp_path / "ens" / "test000_probabilities.npz")["probabilities"].astype(np.float32)
    mean = (probs[0] + probs[1]) / 2
    np.testing.assert_allclose(ens, mean, atol=2e-3)  # float16 files
    assert not np.allclose(probs[0], probs[1], atol=1e-2)  # the members differ, so the mean is a real test
    labels = np.asarray(nib.load(tmp_path / "ens" / "test000.nii.gz").dataobj)
    decided = np.sort(mean, axis=0)[-1] - np.sort(mean, axis=0)[-2] > 5e-3  # away from float16 ties
    assert (labels == mean.argmax(0))[decided].all()


def test_an_ensemble_of_incompatible_runs_is_refused(ct_run, rgb_dataset, tmp_path):
    rgb_run = train_tiny(rgb_dataset, tmp_path / "rgb", iterations=1, val_every=0)
    image = rgb_dataset / "imagesTr" / "img000_0000.png"
    result = _predict(ct_run, image, tmp_path / "out", "--run", str(rgb_run))
    assert result.exit_code == 2
    assert (
        f"{rgb_run}: input channels ['rgb', 'rgb', 'rgb'] differ from {ct_run}'s ['ct']; cannot ensemble"
        in result.output
    )
    twice = _predict(ct_run, image, tmp_path / "out", "--run", str(ct_run))
    assert twice.exit_code == 2 and "--run: the same run directory is given twice" in twice.output
    assert not (tmp_path / "out").exists()


def _outputs(folder):
    """``{file name: (array, affine)}`` of a prediction folder's outputs (not a killed writer's hidden temporaries)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.name.startswith("."):
            continue
        if path.name.endswith(".nii.gz"):
            img = nib.load(path)
            found[path.name] = (np.asarray(img.dataobj), img.affine)
        elif path.suffix == ".npz":
            found[path.name] = (np.load(path)["probabilities"], None)
        elif path.suffix == ".png":
            found[path.name] = (np.asarray(Image.open(path)), None)
    return found


def test_continue_finishes_a_killed_folder_prediction_as_an_uninterrupted_run(ct_run, ct_dataset, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    sources = sorted((ct_dataset / "imagesTr").glob("*.nii.gz")) + sorted((ct_dataset / "imagesTs").glob("*.nii.gz"))
    for k in range(24):  # different volumes, so a mix-up between cases would show
        shutil.copy(sources[k % len(sources)], folder / f"case{k:02d}_0000.nii.gz")
    extra = ["--probabilities", "--overlay"]
    assert _predict(ct_run, folder, tmp_path / "whole", *extra).exit_code == 0

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "attnseg.cli.main", "predict", "--run", str(ct_run), "--input", str(folder)]
    cmd += ["--output", str(out), "--device", "cpu", *extra]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not list(out.glob("case0[2-9].nii.gz")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    masks = sorted(out.glob("case*.nii.gz"))
    assert 0 < len(masks) < 24, "the kill did not land midway"
    for path in masks:  # a file under its final name is whole
        assert (
            np.asarray(nib.load(path).dataobj).shape == nib.load(folder / path.name.replace(".nii", "_0000.nii")).shape
        )

    stem = [p.name.removesuffix(".nii.gz") for p in masks]
    done_before = sum(
        (out / f"{c}_probabilities.npz").exists() and (out / "overlays" / f"{c}.png").exists() for c in stem
    )
    (out / ".case23.nii.gz.k1ll3d.tmp.gz").write_bytes(b"")  # what a kill inside an atomic write leaves
    result = _predict(ct_run, folder, out, *extra, "--continue")
    assert result.exit_code == 0, result.output
    assert not list(out.rglob(".*.tmp*")), "--continue left the killed run's temporary files"
    said = " ".join(result.output.split())
    assert f"{24 - done_before} of {24 - done_before} case(s)" in said
    assert f"({done_before} skipped: already complete)" in said
    whole, resumed = _outputs(tmp_path / "whole"), _outputs(out)
    assert whole.keys() == resumed.keys() and len(whole) == 3 * 24
    for name, (array, affine) in whole.items():
        np.testing.assert_array_equal(resumed[name][0], array, err_msg=name)
        if affine is not None:
            np.testing.assert_array_equal(resumed[name][1], affine, err_msg=name)
    again = " ".join(_predict(ct_run, folder, out, *extra, "--continue").output.split())
    assert "0 of 0 case(s)" in again and "(24 skipped" in again


def test_predict_keep_largest_equals_the_postprocessed_plain_prediction(ct_run, ct_dataset, tmp_path):
    image = ct_dataset / "imagesTs" / "test000_0000.nii.gz"
    assert _predict(ct_run, image, tmp_path / "plain").exit_code == 0
    result = _predict(ct_run, image, tmp_path / "post", "--keep-largest", "all")
    assert result.exit_code == 0, result.output
    plain = np.asarray(nib.load(tmp_path / "plain" / "test000.nii.gz").dataobj)
    post = np.asarray(nib.load(tmp_path / "post" / "test000.nii.gz").dataobj)
    assert (post != plain).any()  # the tiny run's map has islands, so the option is seen to act
    np.testing.assert_array_equal(post, keep_largest_component(plain, (1, 2)))
    bad = _predict(ct_run, image, tmp_path / "bad", "--keep-largest", "kidney")
    assert bad.exit_code == 2 and "--keep-largest: 'kidney' is not a foreground class" in bad.output
    assert not (tmp_path / "bad").exists()
    empty = _predict(ct_run, image, tmp_path / "bad", "--keep-largest", "")
    assert empty.exit_code == 2 and "--keep-largest: '' is not a foreground class" in empty.output
    assert not (tmp_path / "bad").exists()


def test_a_3d_run_refuses_2d_images_and_carries_on_with_the_folder(ct_run, ct_dataset, tmp_path):
    run3d = train_tiny(
        ct_dataset, tmp_path / "run3d", model="unet3d", iterations=2, batch_size=1, input_size=[32, 32, 16]
    )
    folder = tmp_path / "in"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((37, 53), np.float32), np.diag([1.5, 1.5, 3.0, 1.0])), folder / "flat.nii.gz")
    shutil.copy(ct_dataset / "imagesTs" / "test000_0000.nii.gz", folder / "vol_0000.nii.gz")
    result = _predict(run3d, folder, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "flat.nii.gz" in result.output and "2D image" in result.output and "Traceback" not in result.output
    assert "1 of 2" in result.output
    mask = nib.load(tmp_path / "out" / "vol.nii.gz")
    assert mask.shape == nib.load(folder / "vol_0000.nii.gz").shape


def test_two_inputs_of_one_case_name_are_refused_before_writing(ct_run, ct_dataset, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(ct_dataset / "imagesTs" / "test000_0000.nii.gz", folder / "a_0000.nii.gz")
    shutil.copy(ct_dataset / "imagesTr" / "train000_0000.nii.gz", folder / "a.nii.gz")
    result = _predict(ct_run, folder, tmp_path / "out")
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in said, said
    assert "a_0000.nii.gz" in said and "a.nii.gz" in said and "same file" in said
    assert not (tmp_path / "out").exists()


def test_a_header_spacing_far_coarser_than_the_model_is_refused_not_resampled_for_hours(ct_run, ct_dataset, tmp_path):
    source = nib.load(ct_dataset / "imagesTs" / "test000_0000.nii.gz")
    folder = tmp_path / "in"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj), np.diag([50.0, 50.0, 3.0, 1.0])), folder / "cm.nii.gz")
    shutil.copy(ct_dataset / "imagesTs" / "test000_0000.nii.gz", folder / "ok_0000.nii.gz")
    result = _predict(ct_run, folder, tmp_path / "out")
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in said, said
    assert "cm.nii.gz: voxel spacing (50.0, 50.0, 3.0) mm; resampling to the model's 1.5 mm would enlarge" in said
    assert "33x" in said and "check the spacing in the file's header" in said
    assert (tmp_path / "out" / "ok.nii.gz").exists() and not (tmp_path / "out" / "cm.nii.gz").exists()
