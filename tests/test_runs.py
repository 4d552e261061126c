"""The run directory: one owner for its files, reserved names that other commands cannot overwrite."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from attnseg.runs import RunDir, RunError, refuse_reserved


def _fake_run(path):
    path.mkdir(parents=True)
    (path / "model.json").write_text(json.dumps({"name": "unet", "in_channels": 1, "num_classes": 2}))
    (path / "plan.json").write_text("{}")
    return path


@pytest.mark.parametrize(
    "name",
    [
        "model.json",
        "plan.json",
        "config.yaml",
        "split.json",
        "log.csv",
        "train_summary.json",
        "checkpoints/best.safetensors",
        "tensorboard/x",
        "validation/case1.npz",
    ],
)
def test_reserved_files_cannot_be_overwritten(tmp_path, name):
    run = _fake_run(tmp_path / "run")
    with pytest.raises(RunError, match="would overwrite"):
        refuse_reserved(run / name, "--output")


def test_other_names_in_a_run_and_anything_outside_are_allowed(tmp_path):
    run = _fake_run(tmp_path / "run")
    for path in (
        run / "model.onnx",
        run / "model.onnx.json",
        run / "exports" / "model.json",
        tmp_path / "elsewhere" / "model.json",
    ):
        refuse_reserved(path, "--output")


def test_checkpoint_round_trip_is_strict_and_unwraps(tmp_path):
    run = RunDir(tmp_path / "run")
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    run.save_checkpoint("last", torch.compile(model, backend="eager"), {"iteration": 3}, {"model": "x"})
    other = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    (tmp_path / "run" / "model.json").write_text("{}")
    run.load_weights(other, "last")
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    state = run.load_state("last")
    assert state["iteration"] == 3 and set(state) == {"iteration", "weights_sha256"}
    assert run.checkpoint_problem("last") is None
    expected = 0o666 & ~_umask()  # what open() gives, not mkstemp's 0600: readable by the group on a cluster
    assert [p.stat().st_mode & 0o777 for p in run.checkpoint_paths("last")] == [expected, expected]
    with pytest.raises(RunError, match="Missing key"):  # strict: a model with more parameters does not load
        run.load_weights(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 1)), "last")


def test_broken_checkpoints_are_found_and_named(tmp_path):
    import hashlib

    run = RunDir(_fake_run(tmp_path / "run"))
    model = nn.Conv2d(1, 2, 3)
    run.save_checkpoint("last", model, {"iteration": 3})
    weights, state = run.checkpoint_paths("last")
    assert run.load_state("last")["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    good = weights.read_bytes()
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF  # same length, one tensor byte changed: only the recorded hash tells
    weights.write_bytes(bytes(flipped))
    assert "SHA-256" in run.checkpoint_problem("last")
    weights.write_bytes(good[:40])  # truncated
    with pytest.raises(RunError, match="corrupt or truncated"):
        run.load_weights(nn.Conv2d(1, 2, 3), "last")
    weights.write_bytes(good)
    with pytest.raises(RunError, match="does not fit"):
        run.load_weights(nn.Conv2d(1, 4, 3), "last")
    state.write_bytes(state.read_bytes()[:50])
    with pytest.raises(RunError, match="last_state.pt.*corrupt or truncated"):
        run.load_state("last")
    assert "last_state.pt" in run.checkpoint_problem("last")


def test_broken_run_files_are_named(tmp_path):
    run = _fake_run(tmp_path / "run")
    (run / "model.json").write_text('{"name": "unet"')
    with pytest.raises(RunError, match="model.json: not valid JSON"):
        RunDir(run).read_model()
    (run / "model.json").write_text('{"input": {}}')  # e.g. an export sidecar written over it
    with pytest.raises(RunError, match="model.json: missing name, in_channels, num_classes"):
        RunDir(run).read_model()
    _fake_run(tmp_path / "r2")
    with pytest.raises(RunError, match="checkpoint 'best' not found"):
        RunDir(tmp_path / "r2").require_checkpoint("best")


def test_log_appends_rows_and_rewrites_on_new_columns(tmp_path):
    run = RunDir(tmp_path)
    history = [{"iteration": 1, "loss": 0.5}]
    run.write_log(history, append=False)
    history.append({"iteration": 2, "loss": 0.4})
    run.write_log(history, append=True)
    history.append({"iteration": 3, "loss": 0.3, "val_dice/mean": 0.7})
    run.write_log(history, append=False)
    assert run.log_path.read_text().splitlines() == ["iteration,loss,val_dice/mean", "1,0.5,", "2,0.4,", "3,0.3,0.7"]
    assert [r["iteration"] for r in run.read_log(up_to_iteration=2)] == ["1", "2"]


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_validation_predictions_belong_to_the_best_checkpoint_only(tmp_path):
    import numpy as np

    run = RunDir(_fake_run(tmp_path / "run"))
    model = nn.Conv2d(1, 2, 1)
    first, second = np.arange(6, dtype=np.uint8).reshape(2, 3), np.ones((2, 3), np.uint8)
    run.stage_validation("case1", first, 10)
    run.settle_validation(["case1"], best=True)  # a new best at iteration 10 ...
    run.save_checkpoint("best", model, {}, {"iteration": "10"})
    np.testing.assert_array_equal(run.validation_prediction("case1"), first)
    run.stage_validation("case1", second, 20)
    run.settle_validation(["case1"], best=False)  # ... not beaten at 20: the kept map stays the first
    np.testing.assert_array_equal(run.validation_prediction("case1"), first)
    assert not (tmp_path / "run" / "validation" / ".pending" / "case1.npz").exists()
    run.stage_validation("case1", second, 30)
    run.settle_validation(["case1"], best=True)  # killed before the best checkpoint of 30 was written:
    assert run.validation_prediction("case1") is None  # the map of 30 is not taken for the checkpoint of 10
    run.save_checkpoint("best", model, {}, {"iteration": "30"})
    np.testing.assert_array_equal(run.validation_prediction("case1"), second)
    assert run.validation_prediction("never_validated") is None
    assert run.checkpoint_iteration("best") == 30
