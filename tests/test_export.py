"""ONNX export: onnxruntime reproduces PyTorch, the sidecar describes the preprocessing, bad options are clean."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnseg.cli.main import app
from attnseg.config import AugmentConfig, TrainConfig
from attnseg.inference.predictor import Predictor
from attnseg.training.trainer import train

ort = pytest.importorskip("onnxruntime")
runner = CliRunner()


def _train_unet(data, run, iterations: int = 2):
    cfg = TrainConfig(
        model="unet",
        model_kwargs={"width": 4},
        data=str(data),
        out=str(run),
        iterations=iterations,
        batch_size=2,
        input_size=[32, 32],
        num_workers=0,
        val_every=iterations,
        augment=AugmentConfig(0, 0, 0),
    )
    train(cfg, progress=False)
    return run


def test_exported_graph_matches_pytorch_at_other_batch_and_size(ct_dataset, tmp_path):
    run = _train_unet(ct_dataset, tmp_path / "run")
    out = tmp_path / "export" / "unet.onnx"
    result = runner.invoke(app, ["export", "--run", str(run), "--output", str(out)])
    assert result.exit_code == 0, result.output
    sidecar = json.loads((out.parent / "unet.onnx.json").read_text())
    assert sidecar["onnxruntime_max_abs_diff"] < 1e-4 and sidecar["input"]["size"] == [32, 32]
    assert sidecar["preprocessing"]["channel_kinds"] == ["ct"] and sidecar["preprocessing"]["ct_stats"][0]["std"] > 0
    assert sidecar["array_conventions"]["accepted"][0] == "(X, Y, Z) in nibabel's voxel order, with affine= or spacing="
    model = Predictor.from_run(run).model
    x = torch.randn(3, 1, 48, 64)  # another batch and size than at export
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)
    assert sorted(p.name for p in out.parent.iterdir()) == ["unet.onnx", "unet.onnx.json"]  # no temp files left
    assert sidecar["input"]["dynamic_size"] is True


def test_a_model_built_for_its_size_is_exported_at_that_size_only(rgb_dataset, tmp_path):
    """MDSA-UNet picks its window counts from the size it is built for: a graph with dynamic H and W gave logits
    off by up to 5.8 at other sizes (found by QA), so it is exported with fixed spatial axes."""
    run = tmp_path / "run"
    cfg = TrainConfig(
        model="mdsa_unet_test", model_kwargs={"topks": [1, 1, 1]}, data=str(rgb_dataset), out=str(run), iterations=1,
        batch_size=2, input_size=[64, 64], num_workers=0, val_every=1, augment=AugmentConfig(0, 0, 0),
    )  # fmt: skip
    train(cfg, progress=False)
    out = tmp_path / "mdsa.onnx"
    assert runner.invoke(app, ["export", "--run", str(run), "--output", str(out)]).exit_code == 0
    assert json.loads((tmp_path / "mdsa.onnx.json").read_text())["input"]["dynamic_size"] is False
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(
            session.run(None, {"image": x.numpy()})[0], Predictor.from_run(run).model(x), atol=1e-3
        )
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"image": torch.randn(1, 3, 128, 128).numpy()})


def test_export_errors_are_one_line(tmp_path):
    result = runner.invoke(app, ["export", "--run", str(tmp_path), "--output", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and "model.json" in result.output and "Traceback" not in result.output


def test_export_into_the_run_directory_leaves_the_run_usable(ct_dataset, tmp_path):
    run = _train_unet(ct_dataset, tmp_path / "run", iterations=1)
    before = (run / "model.json").read_bytes()
    result = runner.invoke(app, ["export", "--run", str(run), "--output", str(run / "model.onnx")])
    assert result.exit_code == 0, result.output
    assert (run / "model.json").read_bytes() == before and (run / "model.onnx.json").exists()
    assert Predictor.from_run(run).model is not None  # the run still loads
    clash = runner.invoke(app, ["export", "--run", str(run), "--output", str(run / "checkpoints" / "best.onnx")])
    assert clash.exit_code == 2 and "would overwrite checkpoints/best.onnx" in clash.output
    (tmp_path / "side.onnx.json").mkdir()  # the sidecar cannot be written: no half export (network only) is left
    blocked = runner.invoke(app, ["export", "--run", str(run), "--output", str(tmp_path / "side.onnx")])
    assert blocked.exit_code == 2 and "side.onnx.json: is a folder" in blocked.output
    assert not (tmp_path / "side.onnx").exists()
    (run / "model.json").write_bytes(b"\xff\xfe")
    broken = runner.invoke(app, ["export", "--run", str(run), "--output", str(tmp_path / "b.onnx")])
    assert broken.exit_code == 2 and "model.json: not valid JSON" in broken.output and "Traceback" not in broken.output
    (run / "model.json").write_bytes(before)
    import stat

    assert stat.S_IMODE((run / "model.onnx").stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
