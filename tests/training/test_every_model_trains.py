"""Every registered 2D model trains through the CLI at a size it was not built for, with no model options.

Models built for one input size (MSA2Net's and MT-UNet's ``img_size``, MDSA-UNet's region grid, SALSTM's MT-UNet
backbone, the Joint Attention maps, nnU-Net's planned topology) get it from the trainer through ``size_kwargs``;
the registry loop covers a model added later. One iteration at the default (full) widths: the point is the build
at the size, not learning. Checkpoints are recorded instead of written (up to 1 GB each for the largest models with
their optimizer state; writing them is tested in tests/test_runs.py and tests/training/test_trainer.py).
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from attnseg.cli.args import join_multi_value_options
from attnseg.cli.main import app
from attnseg.models.registry import list_models, model_info, sized_kwargs
from attnseg.runs import RunDir

runner = CliRunner()
MODELS_2D = [n for n in list_models() if model_info(n).spatial_dims == 2]


@pytest.fixture(scope="module")
def thin_ct_dataset(tmp_path_factory):
    """The synthetic CT with 3 slices per volume: the run's final validation predicts every slice of the
    validation volume at full width; with the 12-slice CT, ``lstmsa`` at 160x160 took 94 s in CI, with 3 it takes 46."""
    from synthetic import make_ct_dataset

    return make_ct_dataset(tmp_path_factory.mktemp("ct") / "Dataset903_Thin", num_test=0, shape=(48, 40, 3))


@pytest.mark.slow
@pytest.mark.parametrize("side", [128, 160])
@pytest.mark.parametrize("name", MODELS_2D)
def test_every_2d_model_trains_at_any_valid_size_without_options(name, side, thin_ct_dataset, tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(RunDir, "save_checkpoint", lambda self, checkpoint, model, *a, **k: saved.append(checkpoint))
    out = tmp_path / "run"
    args = ["train", "--model", name, "--data", str(thin_ct_dataset), "--out", str(out), "--input-size", str(side)]
    args += [str(side), "--iterations", "1", "--batch-size", "2", "--val-every", "0", "--num-workers", "0"]
    result = runner.invoke(app, join_multi_value_options([*args, "--device", "cpu"]))
    assert result.exit_code == 0, result.output
    build = json.loads((out / "model.json").read_text())
    assert build["name"] == name and build["kwargs"] == json.loads(json.dumps(sized_kwargs(name, (side, side))))
    losses = [float(row["loss"]) for row in RunDir(out).read_log() if row.get("loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert sorted(saved) == ["best", "last"]
