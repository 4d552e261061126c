"""Bad input gives one clear line naming the file or option, exit code 2, and leaves no run directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnseg.cli.args import join_multi_value_options
from attnseg.cli.main import app

runner = CliRunner()


def _train(data, out, *extra):
    args = [
        "train",
        "--model",
        "unet",
        "--data",
        str(data),
        "--out",
        str(out),
        "--iterations",
        "1",
        "--batch-size",
        "1",
        "--input-size",
        "32",
        "32",
        "--num-workers",
        "0",
        "-q",
        *extra,
    ]
    return runner.invoke(app, join_multi_value_options(args))


def _copy(src, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(src, dst)
    return dst


def _assert_clean_error(result, *fragments, out=None):
    assert result.exit_code == 2, result.output
    text = result.output
    assert "Traceback" not in text and "error:" in text
    for f in fragments:
        assert f in text, text
    if out is not None:
        assert not out.exists(), "a run directory was left behind"


def test_missing_dataset_json(ct_dataset, tmp_path):
    ds = _copy(ct_dataset, tmp_path)
    (ds / "dataset.json").unlink()
    _assert_clean_error(_train(ds, tmp_path / "run"), "dataset.json", out=tmp_path / "run")


def test_label_value_not_in_labels(ct_dataset, tmp_path):
    ds = _copy(ct_dataset, tmp_path)
    path = ds / "labelsTr" / "train001.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, img.affine), path)
    _assert_clean_error(_train(ds, tmp_path / "run", "--fold", "all"), "train001.nii.gz", "[7]", out=tmp_path / "run")


def test_shape_and_spacing_mismatch(ct_dataset, tmp_path):
    ds = _copy(ct_dataset, tmp_path)
    path = ds / "labelsTr" / "train000.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    nib.save(nib.Nifti1Image(data[:-1], img.affine), path)
    _assert_clean_error(_train(ds, tmp_path / "run", "--fold", "all"), "train000.nii.gz", "shape", out=tmp_path / "run")
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 1.5, 3.0, 1.0])), path)
    _assert_clean_error(
        _train(ds, tmp_path / "run", "--fold", "all"), "train000.nii.gz", "spacing", out=tmp_path / "run"
    )


def test_corrupt_image(ct_dataset, tmp_path):
    ds = _copy(ct_dataset, tmp_path)
    path = ds / "imagesTr" / "train002_0000.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    _assert_clean_error(_train(ds, tmp_path / "run", "--fold", "all"), "train002_0000.nii.gz", out=tmp_path / "run")


def test_unknown_model_and_bad_sizes(ct_dataset, tmp_path):
    result = runner.invoke(app, ["train", "--model", "unte", "--data", str(ct_dataset), "--out", str(tmp_path / "r")])
    _assert_clean_error(result, "unknown model 'unte'", "Did you mean 'unet'", out=tmp_path / "r")
    _assert_clean_error(
        _train(ct_dataset, tmp_path / "r", "--input-size", "30", "30"), "multiples of 16", out=tmp_path / "r"
    )
    _assert_clean_error(_train(ct_dataset, tmp_path / "r", "--input-size", "32", "32", "32"), "2D", out=tmp_path / "r")
    _assert_clean_error(_train(ct_dataset, tmp_path / "r", "--fold", "fold9"), "fold9", out=tmp_path / "r")
    _assert_clean_error(_train(ct_dataset, tmp_path / "r", "--optimizer", "lion"), "--optimizer", out=tmp_path / "r")


def test_predict_missing_run(tmp_path):
    result = runner.invoke(
        app, ["predict", "--run", str(tmp_path), "--input", str(tmp_path), "--output", str(tmp_path / "o")]
    )
    _assert_clean_error(result, "model.json")


@pytest.mark.parametrize(
    "cmd",
    [
        [],
        ["train"],
        ["predict"],
        ["evaluate"],
        ["bench"],
        ["models"],
        ["demo"],
        ["convert-dataset"],
        ["convert-weights"],
        ["export"],
        ["check-data"],
        ["study", "run"],
        ["study", "report"],
    ],
)
def test_help_is_available(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_help_does_not_import_heavy_libraries():
    # --help must answer fast: building the CLI may not import torch, monai, timm or scipy.
    code = (
        "import sys, attnseg.cli.main; heavy = [m for m in ('torch', 'monai', 'timm', 'scipy', 'nibabel') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_an_option_the_model_does_not_take_is_a_user_error(ct_dataset, tmp_path):
    result = _train(ct_dataset, tmp_path / "run", "--model-kwargs", '{"no_such_option": 1}')
    _assert_clean_error(result, "--model-kwargs", "no_such_option", out=tmp_path / "run")
    assert "its options: width=32, dropout=0.0" in result.output  # the valid ones, from the signature
    typo = _train(ct_dataset, tmp_path / "run2", "--model-kwargs", '{"widht": 8}')
    _assert_clean_error(typo, "--model-kwargs", "'widht' (did you mean 'width'?)", out=tmp_path / "run2")


def test_an_unexpected_exception_is_reported_as_a_bug(monkeypatch, tmp_path):
    """Only attnseg's own errors are user errors; a KeyError or FileNotFoundError from a bug exits 1 with its place."""
    import attnseg.evaluation.evaluate as evaluate_module

    def broken(*args, **kwargs):
        return {}["no_such_key"]

    monkeypatch.setattr(evaluate_module, "evaluate_folders", broken)
    result = runner.invoke(app, ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")])
    assert result.exit_code == 1
    assert "internal error: KeyError" in result.output and "test_cli_errors.py:" in result.output
    assert "Traceback" in result.output and "This is a bug in attnseg" in result.output
    assert not (tmp_path / "summary.json").exists()


def test_a_recipe_selects_a_registered_trainer(ct_dataset, tmp_path):
    from attnseg.training.trainer import Trainer, register_trainer

    calls = []

    @register_trainer("counting_test")
    class CountingTrainer(Trainer):
        def on_checkpoint(self, name: str) -> None:
            calls.append((self.iteration, name))
            super().on_checkpoint(name)

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("trainer: counting_test\nval_every: 1\n")
    result = _train(ct_dataset, tmp_path / "run", "--config", str(recipe), "--iterations", "2")
    assert result.exit_code == 0, result.output
    # step 1 validates (first Dice is the best so far) then saves last; step 2 saves best only if Dice improved
    assert calls[:2] == [(1, "best"), (1, "last")] and calls[-1] == (2, "last") and len(calls) in (3, 4)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("trainer: no_such_trainer\n")
    _assert_clean_error(
        _train(ct_dataset, tmp_path / "run2", "--config", str(unknown)),
        "no_such_trainer",
        "counting_test",
        out=tmp_path / "run2",
    )


@pytest.fixture(scope="module")
def tiny_ct_run(ct_dataset, tmp_path_factory):
    from synthetic import train_tiny

    return train_tiny(ct_dataset, tmp_path_factory.mktemp("run") / "ct")


def _invoke(*args):
    return runner.invoke(app, join_multi_value_options([str(a) for a in args]))


def test_output_paths_that_cannot_be_written_are_user_errors(ct_dataset, tiny_ct_run, tmp_path):
    """A file where an output folder should be, or a folder where an output file should be: named, exit 2."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    predicted = tmp_path / "pred"
    assert _invoke("predict", "--run", tiny_ct_run, "-i", ct_dataset / "imagesTs", "-o", predicted).exit_code == 0
    cases = [
        (["evaluate", "--pred", predicted, "--gt", ct_dataset / "labelsTs", "--out", blocker / "s.json"], "is a file"),
        (["evaluate", "--pred", predicted, "--gt", ct_dataset / "labelsTs", "--out", tmp_path], "is a folder"),
        (["export", "--run", tiny_ct_run, "-o", blocker / "m.onnx"], "notes.txt is a file"),
        (["predict", "--run", tiny_ct_run, "-i", ct_dataset / "imagesTs", "-o", blocker], "--output"),
        (["bench", "--model", "unet", "--input-size", "32", "32", "--json", blocker / "b.json"], "notes.txt is a file"),
    ]
    # a folder that takes no new files: /proc refuses them even to root (chmod would not stop root)
    cases += [
        (["evaluate", "--pred", predicted, "--gt", ct_dataset / "labelsTs", "--out", "/proc/s.json"], "/proc/s.json"),
        (["export", "--run", tiny_ct_run, "-o", "/proc/m.onnx"], "/proc/m.onnx: cannot create a file in /proc"),
        (["predict", "--run", tiny_ct_run, "-i", ct_dataset / "imagesTs", "-o", "/proc/p"], "/proc/p: cannot be"),
        (["predict", "--run", tiny_ct_run, "-i", ct_dataset / "imagesTs", "-o", blocker / "sub"], "sub: cannot be"),
        (["train", "-m", "unet", "-d", ct_dataset, "-o", "/proc/run", "-q"], "/proc/run (No such file"),
    ]
    for args, fragment in cases:
        _assert_clean_error(_invoke(*args), fragment)
    _assert_clean_error(_train(ct_dataset, blocker), "--out", "is a file")
    assert blocker.read_text() == "keep me" and not (predicted / "summary.json").exists()


def test_option_values_out_of_range_are_named(ct_dataset, tiny_ct_run, tmp_path):
    _assert_clean_error(
        _train(ct_dataset, tmp_path / "run", "--num-workers", "-1"), "--num-workers", out=tmp_path / "run"
    )
    for opset in ("3", "99"):
        result = _invoke("export", "--run", tiny_ct_run, "-o", tmp_path / "m.onnx", "--opset", opset)
        _assert_clean_error(result, f"opset {opset}", "7 to")
        assert not (tmp_path / "m.onnx").exists()
    result = _invoke("evaluate", "--pred", tmp_path, "--gt", ct_dataset / "labelsTs", "--workers", "-3")
    _assert_clean_error(result, "--workers", "-3")
    for value in ("nan", "inf"):
        _assert_clean_error(_train(ct_dataset, tmp_path / "run", "--lr", value), "--lr", "finite", out=tmp_path / "run")
    _assert_clean_error(_train(ct_dataset, tmp_path / "run", "--seed", "-5"), "--seed", "-5", out=tmp_path / "run")
    recipe = tmp_path / "recipe.yaml"
    for text, fragments in (
        ("ct_clip_hu: [240, -160]\n", ("ct_clip_hu", "low < high")),  # an inverted window: one value everywhere
        ("augment: {scale_range: [1.2]}\n", ("augment.scale_range", "two numbers")),
        ("slab_size: 3\n", ("slab_size", "does not take slabs")),
    ):
        recipe.write_text(text)
        _assert_clean_error(_train(ct_dataset, tmp_path / "run", "--config", recipe), *fragments, out=tmp_path / "run")
    result = _train(ct_dataset, tmp_path / "run", "--model-kwargs", '{"width": -4}')
    _assert_clean_error(result, "--model-kwargs", "cannot build 'unet'", "width must be >= 1", out=tmp_path / "run")


def test_a_3d_model_on_2d_images_is_refused_before_writing(rgb_dataset, tmp_path):
    result = _invoke(
        "train", "-m", "unet3d", "-d", rgb_dataset, "-o", tmp_path / "run", "--iterations", "1", "--batch-size", "1",
        "--input-size", "32", "32", "32", "--model-kwargs", '{"width": 4}', "--num-workers", "0", "-q",
    )  # fmt: skip
    _assert_clean_error(result, "--model", "3D network", "2D images", out=tmp_path / "run")


def test_a_batchnorm_left_with_one_value_per_channel_is_refused_before_training(rgb_dataset, tmp_path):
    """ja_denseunet_small at 32x32 has a 1x1 bottleneck: fine at batch 2, a torch error at batch 1 (found by QA)."""
    args = ["-m", "ja_denseunet_small", "-d", rgb_dataset, "--iterations", "1", "--input-size", "32", "32", "-q"]
    result = _invoke("train", *args, "-o", tmp_path / "run", "--batch-size", "1", "--num-workers", "0")
    _assert_clean_error(result, "--batch-size", "BatchNorm 'blocks.3.0.bottleneck.1'", out=tmp_path / "run")
    bench = ["bench", "--model", "ja_denseunet_small", "--input-size", "32", "32", "--runs", "1", "--warmup", "0"]
    _assert_clean_error(_invoke(*bench), "--batch-size 1", "one value per channel")
    assert _invoke(*bench, "--batch-size", "2", "--no-memory").exit_code == 0


def test_evaluate_never_writes_its_summary_over_an_image_it_reads(ct_dataset, tiny_ct_run, tmp_path):
    predicted = tmp_path / "pred"
    assert _invoke("predict", "--run", tiny_ct_run, "-i", ct_dataset / "imagesTs", "-o", predicted).exit_code == 0
    reference = sorted((ct_dataset / "labelsTs").glob("*.nii.gz"))[0]
    mask = predicted / reference.name
    before = reference.read_bytes(), mask.read_bytes()
    for target, fragment in (
        (reference, "ending in .json"),
        (mask, "ending in .json"),
        (reference.parent / "s.json", "inside the reference folder"),
    ):
        result = _invoke("evaluate", "--pred", predicted, "--gt", ct_dataset / "labelsTs", "--out", target)
        _assert_clean_error(result, "--out", fragment)
    assert (reference.read_bytes(), mask.read_bytes()) == before and not (reference.parent / "s.json").exists()


def test_a_colour_photo_is_not_a_ct_scan(tiny_ct_run, rgb_dataset, tmp_path):
    photo = sorted((rgb_dataset / "imagesTr").glob("*.png"))[0]
    result = _invoke("predict", "--run", tiny_ct_run, "-i", photo, "-o", tmp_path / "out", "--device", "cpu")
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "colour image" in said and photo.name in said, said
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))  # no mask written


def test_resume_keeps_the_run_model_and_dataset(ct_dataset, rgb_dataset, tiny_ct_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_ct_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = _invoke("train", "--resume", "--out", run, "--model", "malunet", "-q")
    _assert_clean_error(result, "--model", "'unet', not 'malunet'")
    result = _invoke("train", "--resume", "--out", run, "--data", rgb_dataset, "-q")
    _assert_clean_error(result, "--data", "1 input channel(s)", "gives 3")
    done = json.loads((run / "train_summary.json").read_text())["iterations"]
    result = _invoke("train", "--resume", "--out", run, "--iterations", done - 1, "-q")  # shorter than trained
    _assert_clean_error(result, "--iterations", f"already trained {done} iterations")
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    config = run / "config.yaml"
    for damaged, problem in [(config.read_bytes()[:100], "incomplete run config (missing"), (b"\xff\xfe", "UTF-8")]:
        config.write_bytes(damaged)  # a kill while it was written: training on with defaults would overwrite the run
        _assert_clean_error(_invoke("train", "--resume", "--out", run, "-q"), "config.yaml", problem)
        assert config.read_bytes() == damaged
    _assert_clean_error(_invoke("train", "--resume", "--out", tmp_path / "nope", "-q"), "no run to resume")


def test_a_dataset_json_path_names_its_folder(ct_dataset, tmp_path):
    result = _invoke("check-data", ct_dataset / "dataset.json")
    assert result.exit_code == 0, result.output


def test_a_command_line_that_does_not_parse_is_one_line_exit_2():
    """click's own usage errors (unknown option, extra argument, value out of range) through the real entry point."""

    def run(*args):
        return subprocess.run([sys.executable, "-m", "attnseg.cli.main", *args], capture_output=True, text=True)

    for args, fragment in (
        (["predict", "--nope"], "No such option: --nope"),
        (["train", "--input-size", "-32", "32", "--model", "unet"], "unexpected extra argument"),
        (["bench", "--runs", "0", "--model", "unet"], "'--runs'"),
    ):
        result = run(*args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ") and fragment in lines[0] and f"attnseg {args[0]} --help" in lines[0]
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("attnseg ")


def test_converters_and_check_data_never_overwrite_their_inputs(tmp_path) -> None:
    # check-data --json inside the dataset, convert-weights onto its own checkpoint: refused, inputs untouched
    from safetensors.torch import load_file
    from synthetic import make_ct_dataset

    ds = make_ct_dataset(tmp_path / "ds")
    before = (ds / "dataset.json").read_bytes()
    result = CliRunner().invoke(app, ["check-data", str(ds), "--json", str(ds / "dataset.json")])
    assert result.exit_code == 2 and "lies inside the dataset" in result.output, result.output
    assert (ds / "dataset.json").read_bytes() == before

    fixture = Path(__file__).parents[1] / "fixtures" / "official" / "malunet" / "default_256" / "weights.safetensors"
    ckpt = tmp_path / "official.safetensors"
    ckpt.write_bytes(fixture.read_bytes())
    args = ["convert-weights", str(ckpt), str(ckpt), "--official-class", "models.malunet.MALUNet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "would overwrite the checkpoint" in result.output, result.output
    assert ckpt.read_bytes() == fixture.read_bytes()
    bad = [
        (b"", "zero.pth", "EOFError"),
        (fixture.read_bytes()[:1000], "trunc.safetensors", "cannot load as safetensors"),
    ]
    for payload, name, problem in bad:
        (tmp_path / name).write_bytes(payload)
        result = CliRunner().invoke(
            app, ["convert-weights", str(tmp_path / name), str(tmp_path / "o.safetensors")] + args[3:]
        )
        assert result.exit_code == 2 and problem in result.output and "Traceback" not in result.output, result.output
    for kwargs, problem in [('{"foo": 1}', "unexpected keyword argument 'foo'"), ('{"num_classes": 0}', ">= 1")]:
        result = CliRunner().invoke(app, [*args[:2], str(tmp_path / "o.safetensors"), *args[3:], "--kwargs", kwargs])
        assert result.exit_code == 2 and f"--kwargs {kwargs}" in result.output and problem in result.output
    torch.save(load_file(str(fixture)), tmp_path / "good.pth")
    result = CliRunner().invoke(
        app,
        [
            "convert-weights",
            str(tmp_path / "good.pth"),
            str(tmp_path / "o.safetensors"),
            *args[3:],
            "--kwargs",
            '{"num_classes": 2}',
        ],
    )
    assert result.exit_code == 2 and str(tmp_path / "good.pth") in result.output and "shape mismatches" in result.output
    assert not (tmp_path / "o.safetensors").exists()


def test_a_damaged_run_is_named_by_its_file(ct_dataset, tiny_ct_run, tmp_path):
    """A run killed before its first save, or whose model.json was edited: the message names the file."""
    run = tmp_path / "run"
    shutil.copytree(tiny_ct_run, run)
    image = sorted((ct_dataset / "imagesTs").iterdir())[0]
    shutil.rmtree(run / "checkpoints")
    result = _invoke("predict", "--run", run, "-i", image, "-o", tmp_path / "p")
    _assert_clean_error(result, "checkpoint 'best' not found", "no checkpoint yet", out=tmp_path / "p")
    shutil.copytree(tiny_ct_run / "checkpoints", run / "checkpoints")
    model_json = json.loads((run / "model.json").read_text())
    edits = [
        ({"name": "nosuch"}, "unknown model 'nosuch'"),
        ({"kwargs": {"width": "x"}}, "takes int"),
        ({"in_channels": "1"}, "'in_channels' must be int, got '1'"),
        ({"kwargs": [16]}, "'kwargs' must be a mapping, got [16]"),
        ({"slab_size": [3]}, "'slab_size' must be int"),
        ({"spatial_dims": 4}, "'spatial_dims' must be 2 or 3, got 4"),
        ({"label_names": {"1": ["liver"]}}, "'label_names' must be a mapping"),
    ]
    for edit, problem in edits:
        (run / "model.json").write_text(json.dumps({**model_json, **edit}))
        result = _invoke("export", "--run", run, "--output", tmp_path / "m.onnx")
        _assert_clean_error(result, "model.json: ", problem, out=tmp_path / "m.onnx")
