"""Mixed precision and memory format on CPU: ``--amp bf16`` and ``--channels-last`` run where CI runs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from attnseg.config import AugmentConfig, ConfigError, TrainConfig
from attnseg.training.trainer import train


def _cfg(data, out, **changes) -> TrainConfig:
    base = dict(model="unet", model_kwargs={"width": 8}, data=str(data), out=str(out), iterations=6, batch_size=2)
    base.update(input_size=[48, 48], lr=3e-3, optimizer="adamw", num_workers=0, val_every=3, log_every=1, seed=3)
    base.update(augment=AugmentConfig(0, 0, 0))
    return TrainConfig(**{**base, **changes})


def _losses(run) -> list[float]:
    with open(run / "log.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def test_bf16_and_channels_last_training_on_cpu_tracks_fp32(ct_dataset, tmp_path):
    train(_cfg(ct_dataset, tmp_path / "fp32"), progress=False)
    train(_cfg(ct_dataset, tmp_path / "bf16", amp="bf16", channels_last=True), progress=False)
    fp32, bf16 = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16")
    assert len(fp32) == len(bf16) == 6
    assert fp32 != bf16, "the bf16 run computed exactly the fp32 numbers: autocast did not run"
    np.testing.assert_allclose(bf16, fp32, rtol=0.05)  # six steps later the loss curves still agree within 5 %
    weights = load_file(str(tmp_path / "bf16" / "checkpoints" / "last.safetensors"))
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())  # fp32 master weights


def test_channels_last_alone_changes_nothing_but_the_layout(ct_dataset, tmp_path):
    train(_cfg(ct_dataset, tmp_path / "plain"), progress=False)
    train(_cfg(ct_dataset, tmp_path / "nhwc", channels_last=True), progress=False)
    np.testing.assert_allclose(_losses(tmp_path / "nhwc"), _losses(tmp_path / "plain"), rtol=1e-4)


def test_fp16_without_cuda_is_refused(ct_dataset, tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        train(_cfg(ct_dataset, tmp_path / "run", amp="fp16", device="cpu"), progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.slow
def test_bf16_inference_agrees_with_fp32_on_a_trained_demo_model(tmp_path):
    """On the bundled CT, a demo-recipe model (width 16) trained briefly labels >= 99 % of the voxels of the test
    scan's five middle slices the same in bf16 (bf16 convolutions are emulated on CPUs without native bf16: the
    whole scan at the demo's width 24 took 87 s of inference alone)."""
    import dataclasses

    from attnseg.data.io import read_image
    from attnseg.demo import demo_config, demo_dataset_path
    from attnseg.inference.predictor import load_run

    cfg = demo_config(tmp_path, iterations=60, device="cpu")
    cfg = dataclasses.replace(cfg, batch_size=4, val_every=60, model_kwargs={"width": 16})
    train(cfg, progress=False)
    image, meta = read_image(demo_dataset_path() / "imagesTs" / "ct_dicom_abdomen_0000.nii.gz")
    image = image[..., 8:13]  # (1, X, Y, 20 slices): the middle five, on the same affine
    fp32 = load_run(cfg.out, device="cpu").predict(image[0], affine=meta.affine)
    bf16 = load_run(cfg.out, device="cpu", amp="bf16").predict(image[0], affine=meta.affine)
    agreement = float((fp32 == bf16).mean())
    print(f"bf16 vs fp32 argmax agreement on the demo test scan: {agreement:.5f}")
    assert fp32.max() > 0, "the model predicts no organ at all: nothing was compared"
    assert agreement >= 0.99


def test_bf16_on_a_cpu_with_broken_bf16_conv3d_gradients_is_refused(ct_dataset, tmp_path, monkeypatch):
    import attnseg.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "bf16_conv3d_backward_is_reliable", lambda device_type: False)
    cfg = _cfg(ct_dataset, tmp_path / "run", amp="bf16", model="unet3d", input_size=[16, 32, 32], device="cpu")
    with pytest.raises(ConfigError, match="bf16 Conv3d weight gradients failed"):
        train(cfg, progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()
    train(_cfg(ct_dataset, tmp_path / "2d", amp="bf16", iterations=1), progress=False)  # 2D models are not probed


def test_the_bf16_conv3d_probe_passes_where_onednn_is_held_to_avx2():
    # The probe must not refuse a sound platform: with oneDNN limited to AVX2 (no AVX512 bf16 kernels) the same
    # convolutions are right, and the probe says so (in a subprocess: the ISA is fixed when oneDNN first runs).
    import os
    import subprocess
    import sys

    code = "from attnseg.training.precision import bf16_conv3d_backward_is_reliable as f; print(f())"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "True"
