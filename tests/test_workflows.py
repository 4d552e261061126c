"""Workflows end to end: MALUNet's ISIC pipeline (challenge folders -> convert-dataset -> paper recipe -> predict ->
pooled ISIC evaluation), MALUNet and SALSTM (3-slice slabs) on the demo CT."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from attnseg.cli.args import join_multi_value_options
from attnseg.cli.main import app

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "malunet" / "isic2018.yaml"
runner = CliRunner()


def _cli(*args: str):
    result = runner.invoke(app, join_multi_value_options(list(args)))
    assert result.exit_code == 0, result.output
    return result


def _isic2018_with_lesions(root: Path, n=(16, 4, 4), size=(60, 80), seed=0) -> None:
    """Challenge folders whose lesions are dark ellipses on skin-coloured noise (learnable, unlike random masks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    for sub, count, offset in (("Training", n[0], 0), ("Validation", n[1], 100), ("Test", n[2], 200)):
        img_dir, gt_dir = root / f"ISIC2018_Task1-2_{sub}_Input", root / f"ISIC2018_Task1_{sub}_GroundTruth"
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        for i in range(count):
            cy, cx = rng.uniform(0.35, 0.65) * size[0], rng.uniform(0.35, 0.65) * size[1]
            ry, rx = rng.uniform(0.15, 0.3) * size[0], rng.uniform(0.15, 0.3) * size[1]
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            img = rng.normal([200, 160, 140], 12, size=(*size, 3))
            img[mask] = rng.normal([90, 60, 50], 12, size=(int(mask.sum()), 3))
            cid = f"ISIC_{offset + i:07d}"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(img_dir / f"{cid}.jpg", quality=95)
            Image.fromarray((mask * 255).astype(np.uint8)).save(gt_dir / f"{cid}_segmentation.png")


def _losses(run: Path) -> list[float]:
    with open(run / "log.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh) if r.get("loss")]


def test_isic_layout_trains_predicts_and_evaluates(tmp_path):
    _isic2018_with_lesions(tmp_path / "src")
    data = tmp_path / "Dataset200_ISIC2018"
    _cli("convert-dataset", "isic2018", str(tmp_path / "src"), str(data))
    run = tmp_path / "run"
    _cli(
        "train",
        "--config",
        str(RECIPE),
        "--data",
        str(data),
        "--out",
        str(run),
        "--fold",
        "official",
        "--iterations",
        "60",
        "--batch-size",
        "4",
        "--input-size",
        "64",
        "64",
        "--lr",
        "0.01",
        "--num-workers",
        "0",
        "--val-every",
        "30",
        "-q",
    )
    losses = _losses(run)
    assert losses[-1] < 0.6 * losses[0], losses  # BCE + Dice falls clearly within 60 steps
    split = json.loads((data / "splits.json").read_text())["official"]
    pred = tmp_path / "pred"
    test_dir = tmp_path / "test_images"
    test_dir.mkdir()
    for cid in split["test"]:
        (test_dir / f"{cid}_0000.png").symlink_to(data / "imagesTs" / f"{cid}_0000.png")
    _cli("predict", "--run", str(run), "--checkpoint", "best", "--input", str(test_dir), "--output", str(pred))
    out = tmp_path / "summary.json"
    _cli(
        "evaluate",
        "--pred",
        str(pred),
        "--gt",
        str(data / "labelsTs"),
        "--dataset",
        str(data),
        "--protocol",
        "isic",
        "--out",
        str(out),
    )
    summary = json.loads(out.read_text())
    assert summary["protocol"] == "isic"
    assert summary["foreground_mean"]["dice"] > 0.6, summary["foreground_mean"]


def test_malunet_trains_on_the_demo_ct(demo_dataset, tmp_path):
    run = tmp_path / "run"
    _cli(
        "train",
        "--model",
        "malunet",
        "--data",
        str(demo_dataset),
        "--out",
        str(run),
        "--iterations",
        "30",
        "--batch-size",
        "4",
        "--input-size",
        "96",
        "96",
        "--lr",
        "0.01",
        "--optimizer",
        "adamw",
        "--num-workers",
        "0",
        "--val-every",
        "30",
        "-q",
    )
    losses = _losses(run)
    assert losses[-1] < 0.8 * losses[0], losses


def test_salstm_trains_on_demo_ct_with_three_slice_inputs(demo_dataset, tmp_path):
    """SALSTM on a U-Net backbone: the pipeline feeds [B, 1, 3, H, W] slabs and predicts volumes slab by slab."""
    run = tmp_path / "run"
    kwargs = json.dumps({"backbone": "unet", "backbone_kwargs": {"width": 4}, "hidden_channels": 8})
    _cli(
        "train",
        "--model",
        "salstm",
        "--model-kwargs",
        kwargs,
        "--data",
        str(demo_dataset),
        "--out",
        str(run),
        "--iterations",
        "30",
        "--batch-size",
        "4",
        "--input-size",
        "64",
        "64",
        "--lr",
        "0.01",
        "--optimizer",
        "adamw",
        "--num-workers",
        "0",
        "--val-every",
        "30",
        "-q",
    )
    assert json.loads((run / "model.json").read_text())["slab_size"] == 3
    losses = _losses(run)
    assert losses[-1] < 0.85 * losses[0], losses
    _cli("predict", "--run", str(run), "--input", str(demo_dataset / "imagesTs"), "--output", str(tmp_path / "p"))
    import nibabel as nib

    ref = nib.load(demo_dataset / "imagesTs" / "ct_dicom_abdomen_0000.nii.gz")
    mask = nib.load(tmp_path / "p" / "ct_dicom_abdomen.nii.gz")
    assert mask.shape == ref.shape and np.array_equal(mask.affine, ref.affine)


def test_gray_png_dataset_predict_with_overlays_then_evaluate_the_same_folder(tmp_path):
    """A one-channel 2D dataset (ultrasound-like): overlays must not pollute the prediction folder evaluate reads."""
    from attnseg.data.layout import write_dataset_json

    root = tmp_path / "Dataset300_US"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:45, :60]
    for i in range(8):
        mask = ((yy - rng.uniform(15, 30)) / 9) ** 2 + ((xx - rng.uniform(20, 40)) / 12) ** 2 <= 1
        img = rng.normal(120, 20, mask.shape)
        img[mask] = rng.normal(60, 20, int(mask.sum()))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "imagesTr" / f"us{i:03d}_0000.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "labelsTr" / f"us{i:03d}.png")
    write_dataset_json(
        root, channel_names={0: "US"}, labels={"background": 0, "nodule": 1}, file_ending=".png", num_training=8
    )
    run, pred = tmp_path / "run", tmp_path / "pred"
    _cli(
        "train",
        "--model",
        "malunet",
        "--data",
        str(root),
        "--out",
        str(run),
        "--iterations",
        "40",
        "--batch-size",
        "4",
        "--input-size",
        "64",
        "64",
        "--geometry",
        "resize",
        "--loss",
        "bce_dice",
        "--optimizer",
        "adamw",
        "--lr",
        "0.01",
        "--num-workers",
        "0",
        "-q",
    )
    _cli("predict", "--run", str(run), "--input", str(root / "imagesTr"), "--output", str(pred), "--overlay")
    assert (pred / "overlays" / "us000.png").exists()
    mask = np.asarray(Image.open(pred / "us000.png"))
    assert mask.shape == (45, 60)  # back on the input grid after the papers' resize protocol
    out = tmp_path / "s.json"
    _cli(
        "evaluate",
        "--pred",
        str(pred),
        "--gt",
        str(root / "labelsTr"),
        "--dataset",
        str(root),
        "--protocol",
        "isic",
        "--out",
        str(out),
    )
    assert json.loads(out.read_text())["foreground_mean"]["dice"] > 0.7


def test_salstm2d_reconstruction_trains_on_a_2d_dataset(rgb_dataset, tmp_path):
    """The 2D variant builds its slab inside the model: the pipeline feeds plain images [B, 3, H, W]."""
    run = tmp_path / "run"
    kwargs = json.dumps({"backbone": "unet", "backbone_kwargs": {"width": 4}, "hidden_channels": 8})
    _cli(
        "train",
        "--model",
        "salstm2d",
        "--model-kwargs",
        kwargs,
        "--data",
        str(rgb_dataset),
        "--out",
        str(run),
        "--iterations",
        "30",
        "--batch-size",
        "4",
        "--input-size",
        "32",
        "32",
        "--geometry",
        "resize",
        "--loss",
        "bce_dice",
        "--lr",
        "0.01",
        "--optimizer",
        "adamw",
        "--num-workers",
        "0",
        "-q",
    )
    assert json.loads((run / "model.json").read_text())["slab_size"] == 1
    losses = _losses(run)
    assert losses[-1] < 0.85 * losses[0], losses
