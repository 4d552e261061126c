"""``attnseg study run``: a cross-validated comparison of tiny models on synthetic data, end to end."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from attnseg.cli.main import app
from attnseg.study.config import StudyError, load_study
from attnseg.study.runner import RESULT_COLUMNS, jobs_of, prepare_study_dir, run_study

runner = CliRunner()

TRAIN = {"iterations": 3, "batch_size": 2, "input_size": [32, 32], "num_workers": 0, "val_every": 2}
MODELS = [{"name": "unet", "model_kwargs": {"width": 4}}, {"name": "malunet"}, {"name": "ja_denseunet_small"}]


def _study_file(folder: Path, dataset: Path, **changes: object) -> Path:
    study = {
        "name": "tiny",
        "dataset": str(dataset),
        "folds": [0, 1],
        "seeds": [0],
        "baseline": "unet",
        "protocol": "strict",
        "train": dict(TRAIN),
        "models": [dict(m) for m in MODELS],
    }
    study.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def reference(rgb_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted 3-model x 2-fold study: ``(study file, study directory)``."""
    folder = tmp_path_factory.mktemp("study")
    path = _study_file(folder, rgb_dataset)
    assert run_study(path, folder / "out", progress=False) == []
    return path, folder / "out"


def test_a_study_runs_end_to_end(reference, rgb_dataset):
    path, out = reference
    study = load_study(path)
    splits = json.loads((rgb_dataset / "splits.json").read_text())
    with open(out / "results.csv", newline="") as fh:
        assert next(csv.reader(fh)) == list(RESULT_COLUMNS)
    rows = _rows(out / "results.csv")
    keys = [tuple(r[c] for c in RESULT_COLUMNS[:-1]) for r in rows]
    assert len(keys) == len(set(keys))  # one row per (model, fold, seed, split, case, label, metric)
    expected = {
        (m.label, fold, "0", "val", case, "lesion", metric)
        for m in study.models
        for fold in ("fold0", "fold1")
        for case in splits[fold]["val"]
        for metric in ("dice", "iou", "hd95", "assd")
    }
    assert set(keys) == expected
    assert keys == sorted(keys, key=lambda k: (k[0], k[1], int(k[2]), *k[3:]))
    for r in rows:
        if r["metric"] in ("dice", "iou"):
            assert 0.0 <= float(r["value"]) <= 1.0
    for job in jobs_of(study):
        record = json.loads((job.run_dir(out) / "study_job.json").read_text())
        assert record["status"] == "done" and record["error"] is None
        assert record["images"] == 0  # every validation map came from training (see the next test)
        assert record["train_seconds"] >= 0 and record["predict_seconds"] >= 0
        assert (job.run_dir(out) / "checkpoints" / "best.safetensors").exists()
    costs = json.loads((out / "costs.json").read_text())
    assert set(costs) == {"unet", "malunet", "ja_denseunet_small"}
    assert all(isinstance(c["params"], int) and c["params"] > 0 for c in costs.values())
    stored = yaml.safe_load((out / "study.yaml").read_text())
    assert stored["dataset"] == str(rgb_dataset.resolve()) and stored["folds"] == ["fold0", "fold1"]


def _assert_kept_validation_maps_are_fresh_predictions(study_path: Path, out: Path, dataset: Path) -> None:
    """The validation label maps a study takes from training equal predicting the case with ``best``, bit for bit."""
    import numpy as np

    from attnseg.data.layout import load_dataset
    from attnseg.inference.predictor import PredictionInput, Predictor, labels_from_probabilities
    from attnseg.runs import RunDir

    splits = json.loads((dataset / "splits.json").read_text())
    info = load_dataset(dataset)
    for job in jobs_of(load_study(study_path)):
        run = job.run_dir(out)
        predictor = Predictor.from_run(run, "best", device="cpu")
        for cid in splits[job.fold]["val"]:
            kept = RunDir(run).validation_prediction(cid)
            assert kept is not None, f"{run}: no validation map of {cid}"
            np.testing.assert_array_equal(np.load(run / "predictions" / "val" / f"{cid}.npz")["labels"], kept)
            image, meta = predictor.read(PredictionInput(cid, list(info.cases[cid].images)))
            np.testing.assert_array_equal(kept, labels_from_probabilities(predictor.predict_case(image, meta)))


def test_validation_maps_come_from_training_and_equal_a_fresh_prediction(reference, rgb_dataset):
    _assert_kept_validation_maps_are_fresh_predictions(*reference, rgb_dataset)


def test_a_rerun_skips_done_jobs(reference, monkeypatch):
    import attnseg.training.trainer as trainer_module

    path, out = reference
    files = [p for p in (out / "runs").rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in files}

    def no_training(*args, **kwargs):
        raise AssertionError("a done job was trained again")

    monkeypatch.setattr(trainer_module, "train", no_training)
    assert run_study(path, out, progress=False) == []
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_force_trains_again_only_the_jobs_trained_with_other_settings(reference, rgb_dataset, tmp_path, monkeypatch):
    import yaml

    import attnseg.training.trainer as trainer_module

    _, ref_out = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    calls = []
    real_train = trainer_module.train

    def recording(cfg, *, resume=False, progress=True):
        calls.append((cfg.model, cfg.fold, cfg.iterations))
        return real_train(cfg, resume=resume, progress=progress)

    monkeypatch.setattr(trainer_module, "train", recording)
    same_training = _study_file(tmp_path / "a", rgb_dataset, protocol="nnunet")  # another study, same runs
    assert run_study(same_training, out, force=True, progress=False) == []
    assert calls == []
    longer = _study_file(tmp_path / "b", rgb_dataset, train={**TRAIN, "iterations": 4}, models=[MODELS[0]])
    assert run_study(longer, out, force=True, progress=False) == []
    assert sorted(calls) == [("unet", "fold0", 4), ("unet", "fold1", 4)]
    for fold in ("fold0", "fold1"):
        config = yaml.safe_load((out / "runs" / "unet" / f"{fold}_seed0" / "config.yaml").read_text())
        assert config["iterations"] == 4


def test_report_of_an_unfinished_study_names_the_jobs_without_results(reference, tmp_path):
    _, ref_out = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    shutil.rmtree(out / "runs" / "malunet" / "fold1_seed0")  # never started
    (out / "runs" / "unet" / "fold0_seed0" / "study_job.json").unlink()  # killed while training
    result = runner.invoke(app, ["study", "report", str(out)])
    said = " ".join(result.output.split())
    assert result.exit_code == 0, said
    assert "warning: 2 of 6 job(s) have no results" in said and "unet/fold0_seed0, malunet/fold1_seed0" in said
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["malunet"]["jobs"] == {"done": 1, "not started": 1}
    assert summary["models"]["unet"]["jobs"] == {"unfinished": 1, "done": 1}


def test_a_killed_job_resumes_to_the_same_results(reference, rgb_dataset, tmp_path, monkeypatch):
    from attnseg.training.trainer import Trainer

    path, ref_out = reference
    out = tmp_path / "out"
    original = Trainer.on_step_end

    def killed(self, loss):
        row = original(self, loss)
        if self.cfg.model == "malunet" and self.cfg.fold == "fold1" and self.iteration == 3:
            raise KeyboardInterrupt  # the process dies after step 3; the last checkpoint is step 2's
        return row

    monkeypatch.setattr(Trainer, "on_step_end", killed)
    with pytest.raises(KeyboardInterrupt):
        run_study(path, out, progress=False)
    monkeypatch.setattr(Trainer, "on_step_end", original)
    killed_dir = out / "runs" / "malunet" / "fold1_seed0"
    assert not (killed_dir / "study_job.json").exists()
    assert (killed_dir / "checkpoints" / "last.safetensors").exists()

    import attnseg.training.trainer as trainer_module

    calls = []
    real_train = trainer_module.train

    def recording(cfg, *, resume=False, progress=True):
        calls.append((cfg.model, cfg.fold, resume))
        return real_train(cfg, resume=resume, progress=progress)

    monkeypatch.setattr(trainer_module, "train", recording)
    assert run_study(path, out, progress=False) == []
    assert calls[0] == ("malunet", "fold1", True)
    assert all(not resume for *_, resume in calls[1:])
    assert (out / "results.csv").read_text() == (ref_out / "results.csv").read_text()


def test_a_run_directory_without_checkpoint_starts_again(reference, tmp_path):
    path, ref_out = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    job_dir = out / "runs" / "unet" / "fold0_seed0"
    shutil.rmtree(job_dir / "checkpoints")
    (job_dir / "study_job.json").unlink()
    (job_dir / "stray.txt").write_text("left by a crash")
    assert run_study(path, out, progress=False) == []
    assert not (job_dir / "stray.txt").exists()
    assert json.loads((job_dir / "study_job.json").read_text())["status"] == "done"
    assert (out / "results.csv").read_text() == (ref_out / "results.csv").read_text()


def test_shards_give_the_unsharded_results(reference, tmp_path):
    path, ref_out = reference
    out = tmp_path / "out"
    result = runner.invoke(app, ["study", "run", str(path), "--out", str(out), "--shard", "1/2", "-q"])
    assert result.exit_code == 0, result.output
    assert len(list((out / "runs").glob("*/*/study_job.json"))) == 3
    result = runner.invoke(app, ["study", "run", str(path), "--out", str(out), "--shard", "2/2", "-q"])
    assert result.exit_code == 0, result.output
    assert (out / "results.csv").read_text() == (ref_out / "results.csv").read_text()


BAD = [
    ({"colour": "red"}, "colour: unknown key"),
    ({"models": [*MODELS[:2], {"name": "ja_denseunet_small", "lr": 0.1}]}, "models[2].lr: unknown key"),
    ({"models": [{"name": "no_such_net"}]}, "models[0].name: unknown model 'no_such_net'"),
    ({"folds": [0, 7]}, "folds: fold7 is not in"),
    ({"baseline": "resnet"}, "baseline: 'resnet' is not a model label"),
    ({"models": [MODELS[0], {"name": "unet", "model_kwargs": {"width": 8}}]}, "models[1].label: 'unet' is also"),
    ({"train": {**TRAIN, "learning_rate": 1}}, "train.learning_rate: not a training option"),
    (
        {"models": [MODELS[0], {"name": "malunet", "train": {"no_such": 1}}]},
        "models[1].train.no_such: not a training option",
    ),
    (
        {"models": [MODELS[0], {"name": "malunet", "train": {"augment": {"flipp": 1}}}]},
        "models[1].train.augment: unknown",
    ),
    ({"models": [MODELS[0], {"name": "malunet", "train": {"lr": -1}}]}, "models[1] (malunet): lr: must be > 0"),
    ({"train": {**TRAIN, "seed": 3}}, "train.seed: set by the study"),
    ({"protocol": "best"}, "protocol: 'best' is not one of"),
    ({"seeds": [0, -5]}, "seeds: -5 is outside 0 .. 2**32 - 1"),
]


@pytest.mark.parametrize(("changes", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_a_bad_study_file_names_the_key(changes, message, rgb_dataset, tmp_path):
    path = _study_file(tmp_path, rgb_dataset, **changes)
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    out = tmp_path / "out"
    result = runner.invoke(app, ["study", "run", str(path), "--out", str(out), "-q"])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("changes", "extra", "message"),
    [
        (
            {"models": [{"name": "unet", "model_kwargs": {"widht": 4}}]},
            [],
            "models[0] (unet): model 'unet' has no option",
        ),
        ({"models": [{"name": "unet", "model_kwargs": {"width": -4}}]}, [], "models[0] (unet): width must be >= 1"),
        ({"train": {**TRAIN, "input_size": [33, 33]}}, [], "sides must be multiples of 16"),
        ({}, ["--device", "foo"], "device: 'foo' is not a valid torch device"),
    ],
)
def test_entries_every_job_would_fail_on_are_refused_before_training(changes, extra, message, rgb_dataset, tmp_path):
    """Found by building each entry's model once: before, every job failed in turn and a report of n = 0 was written."""
    path = _study_file(tmp_path, rgb_dataset, **changes)
    out = tmp_path / "out"
    result = runner.invoke(app, ["study", "run", str(path), "--out", str(out), "-q", *extra])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert not out.exists()


def test_a_directory_holding_another_study_is_refused(rgb_dataset, tmp_path):
    out = tmp_path / "out"
    first = load_study(_study_file(tmp_path / "a", rgb_dataset))
    prepare_study_dir(first, out)
    more = load_study(_study_file(tmp_path / "b", rgb_dataset, models=[*MODELS, {"name": "unet", "label": "u2"}]))
    prepare_study_dir(more, out)  # added entries are the same study
    other = load_study(_study_file(tmp_path / "c", rgb_dataset, seeds=[0, 1]))
    with pytest.raises(StudyError, match="seeds"):
        prepare_study_dir(other, out)
    path = _study_file(tmp_path / "c", rgb_dataset, seeds=[0, 1])
    result = runner.invoke(app, ["study", "run", str(path), "--out", str(out), "-q"])
    assert result.exit_code == 2 and "different study" in result.output
    prepare_study_dir(other, out, force=True)
    assert yaml.safe_load((out / "study.yaml").read_text())["seeds"] == [0, 1]


def test_a_failing_job_is_recorded_and_the_cli_exits_1(rgb_dataset, tmp_path, monkeypatch):
    import attnseg.training.trainer as trainer_module

    real_train = trainer_module.train

    def flaky(cfg, *, resume=False, progress=True):
        if cfg.model == "malunet":
            raise RuntimeError("out of memory (simulated)")
        return real_train(cfg, resume=resume, progress=progress)

    monkeypatch.setattr(trainer_module, "train", flaky)
    path = _study_file(tmp_path, rgb_dataset, folds=[0], models=MODELS[:2])
    out = tmp_path / "out"
    result = runner.invoke(app, ["study", "run", str(path), "--out", str(out), "-q"])
    assert result.exit_code == 1, result.output
    assert "malunet/fold0_seed0" in result.output and "out of memory (simulated)" in result.output
    record = json.loads((out / "runs" / "malunet" / "fold0_seed0" / "study_job.json").read_text())
    assert record["status"] == "failed" and "out of memory (simulated)" in record["error"]
    assert json.loads((out / "runs" / "unet" / "fold0_seed0" / "study_job.json").read_text())["status"] == "done"
    assert {r["model"] for r in _rows(out / "results.csv")} == {"unet"}


def test_a_finished_run_without_done_marker_resumes(reference, tmp_path, monkeypatch):
    """Training finished but the process died before predicting: the job resumes (no step left) and predicts."""
    import attnseg.training.trainer as trainer_module

    path, ref_out = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    job_dir = out / "runs" / "ja_denseunet_small" / "fold0_seed0"
    (job_dir / "study_job.json").unlink()
    calls = []
    real_train = trainer_module.train

    def recording(cfg, *, resume=False, progress=True):
        calls.append(resume)
        return real_train(cfg, resume=resume, progress=progress)

    monkeypatch.setattr(trainer_module, "train", recording)
    assert run_study(path, out, progress=False) == []
    assert calls == [True]
    assert (out / "results.csv").read_text() == (ref_out / "results.csv").read_text()


def test_a_3d_dataset_with_a_test_split_gets_test_rows(ct_dataset, tmp_path):
    train = {**TRAIN, "iterations": 2, "val_every": 0, "batch_size": 1}
    path = _study_file(tmp_path, ct_dataset, folds=[0], train=train, models=MODELS[:1], protocol="nnunet")
    out = tmp_path / "out"
    assert run_study(path, out, progress=False) == []
    rows = _rows(out / "results.csv")
    splits = json.loads((ct_dataset / "splits.json").read_text())
    assert {(r["split"], r["case"]) for r in rows} == {("val", c) for c in splits["fold0"]["val"]} | {
        ("test", c) for c in splits["test"]
    }
    assert {r["label"] for r in rows} == {"organ_a", "organ_b"}
    assert {r["metric"] for r in rows} == {"dice", "iou"}  # what the nnunet protocol provides
    _assert_kept_validation_maps_are_fresh_predictions(path, out, ct_dataset)  # 3D, resampled to the plan


def test_a_study_with_folds_and_a_test_split_evaluates_the_fold_ensemble(ct_dataset, tmp_path):
    import numpy as np

    from attnseg.data.io import read_label
    from attnseg.evaluation.evaluate import evaluate_arrays
    from attnseg.inference.predictor import Ensemble, PredictionInput, labels_from_probabilities

    train = {**TRAIN, "iterations": 2, "val_every": 0, "batch_size": 1}
    path = _study_file(tmp_path, ct_dataset, folds=[0, 1], train=train, models=MODELS[:1])
    out = tmp_path / "out"
    assert run_study(path, out, progress=False) == []
    rows = _rows(out / "results.csv")
    ensemble = [r for r in rows if r["fold"] == "ensemble"]
    assert {(r["split"], r["case"], r["seed"]) for r in ensemble} == {("test", "test000", "0")}
    runs = [out / "runs" / "unet" / f"fold{k}_seed0" for k in (0, 1)]
    for run in runs:  # the kept label maps equal the rows' fold predictions
        assert (run / "predictions" / "val").is_dir() and (run / "predictions" / "test" / "test000.npz").exists()
    # the same ensemble through the predictor (float32 probabilities, the study keeps float16 ones)
    members = Ensemble.from_runs(runs, device="cpu")
    case = PredictionInput("test000", [ct_dataset / "imagesTs" / "test000_0000.nii.gz"])
    image, meta = members.read(case)
    pred = labels_from_probabilities(members.predict_case(image, meta))
    gt, _ = read_label(ct_dataset / "labelsTs" / "test000.nii.gz")
    expected = evaluate_arrays([("test000", pred, gt, meta.spacing)], labels={"organ_a": 1, "organ_b": 2})
    for r in ensemble:
        if r["metric"] == "dice":
            want = expected["per_case"][0]["per_class"][r["label"]]["dice"]
            assert float(r["value"]) == pytest.approx(want, abs=1e-3)
    fold_dice = [
        float(r["value"]) for r in rows if (r["split"], r["metric"]) == ("test", "dice") and r["fold"] != "ensemble"
    ]
    assert len(fold_dice) == 4 and np.isfinite(fold_dice).all()  # 2 folds x 2 classes
    summary = json.loads((out / "summary.json").read_text())
    info = summary["models"]["unet"]
    assert info["test_ensemble_mean"]["organ_a"]["dice"] == pytest.approx(
        np.mean([float(r["value"]) for r in ensemble if r["label"] == "organ_a" and r["metric"] == "dice"])
    )
    assert info["test_n_runs"] == 2  # the ensemble is not a third fold


def test_the_demo_study_file_loads_every_model_at_its_input_size():
    from attnseg.models.registry import check_input_size, create_model, sized_kwargs

    root = Path(__file__).resolve().parents[2]
    study = load_study(root / "recipes" / "studies" / "demo.yaml")
    assert [m.label for m in study.models][0] == study.baseline == "unet"
    assert len(study.folds) == 2 and any(m.name.startswith("nnunet_") for m in study.models)
    size = study.train["input_size"]
    for entry in study.models:  # as the trainer builds them: no hand-written size options
        model = create_model(entry.name, 1, 9, **sized_kwargs(entry.name, size, entry.model_kwargs))
        check_input_size(model, size)
