"""The trainer: the loss falls on the demo CT, resume equals an uninterrupted run, checkpoints are complete."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from synthetic import train_tiny

from attnseg.config import AugmentConfig, TrainConfig
from attnseg.runs import RunDir
from attnseg.training.trainer import Trainer, train


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(
        model="unet",
        model_kwargs={"width": 8},
        data=str(data),
        out=str(out),
        iterations=12,
        batch_size=2,
        input_size=[48, 48],
        lr=3e-3,
        optimizer="adamw",
        scheduler="cosine",
        num_workers=0,
        val_every=4,
        log_every=2,
        seed=7,
        augment=AugmentConfig(rotate=0.5, scale=0.5, intensity=0.5, noise=0.5),
    )
    base.update(kw)
    return TrainConfig(**base)


def test_loss_decreases_on_demo_ct(demo_dataset, tmp_path):
    cfg = _cfg(
        demo_dataset,
        tmp_path / "run",
        iterations=40,
        batch_size=4,
        lr=1e-2,
        target_spacing=[4.5, 4.5],
        input_size=[64, 64],
        foreground_prob=0.9,
        val_every=20,
        log_every=5,
        augment=AugmentConfig(flip=0, rotate=0, scale=0, intensity=0, noise=0),
    )
    summary = train(cfg, progress=False)
    with open(tmp_path / "run" / "log.csv") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh) if r.get("loss")]
    assert losses[-1] < 0.8 * losses[0], losses
    assert summary["selected_on"] == "val" and summary["best_val_dice"] > 0
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "plan.json", "model.json", "split.json", "log.csv", "checkpoints"} <= files
    build = json.loads((tmp_path / "run" / "model.json").read_text())
    assert build["name"] == "unet" and build["num_classes"] == 9 and build["label_names"]["6"] == "liver"
    state = RunDir(tmp_path / "run").load_state("last")  # weights_only=True
    assert state["iteration"] == 40 and "optimizer" in state


class _Interrupted(Exception):
    pass


class _StopAt(Trainer):
    """A trainer that dies after ``stop`` steps, like a killed job."""

    stop = 7

    def train_step(self, image, label):
        if self.iteration == self.stop:
            raise _Interrupted
        return super().train_step(image, label)


def _full_and_interrupted(data, tmp_path) -> TrainConfig:
    """An uninterrupted run in ``tmp_path/full``; the same run killed after step 7 (last checkpoint: 4) in
    ``tmp_path/part``, whose config is returned."""
    train(_cfg(data, tmp_path / "full"), progress=False)
    part = _cfg(data, tmp_path / "part")
    trainer = _StopAt(part, progress=False)
    trainer._seed_everything()
    trainer.setup()
    with pytest.raises(_Interrupted):
        trainer.run()
    assert RunDir(tmp_path / "part").load_state("last")["iteration"] == 4
    return part


def _assert_same_weights(run_a, run_b, name="last"):
    a = load_file(str(run_a / "checkpoints" / f"{name}.safetensors"))
    b = load_file(str(run_b / "checkpoints" / f"{name}.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_resume_equals_uninterrupted(ct_dataset, tmp_path):
    part = _full_and_interrupted(ct_dataset, tmp_path)
    train(part, resume=True, progress=False)
    _assert_same_weights(tmp_path / "full", tmp_path / "part")
    with open(tmp_path / "full" / "log.csv") as f1, open(tmp_path / "part" / "log.csv") as f2:
        l1 = [float(r["loss"]) for r in csv.DictReader(f1)]
        l2 = [float(r["loss"]) for r in csv.DictReader(f2)]
    assert l1 == pytest.approx(l2, rel=1e-5)


@pytest.mark.slow
def test_compiled_training_gives_the_eager_weights_in_plain_checkpoints(ct_dataset, tmp_path, monkeypatch):
    """``--compile`` end to end: the compiled run trains to the eager run's weights (``aot_eager``, which runs the
    same kernels; the conformance suite checks inductor's numerics per model) and writes checkpoints under the
    model's own parameter names (no ``_orig_mod.`` prefix), which a second, resumed run and ``attnseg predict``
    load."""
    from attnseg.inference.predictor import load_run

    real_compile, compiled = torch.compile, []

    def compile_aot_eager(model, **kw):
        compiled.append(type(model).__name__)
        return real_compile(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    kw = dict(iterations=6, val_every=3, augment=AugmentConfig(0, 0, 0))
    train(_cfg(ct_dataset, tmp_path / "eager", **kw), progress=False)
    assert not compiled
    train(_cfg(ct_dataset, tmp_path / "compiled", compile=True, **kw), progress=False)
    assert compiled, "--compile did not compile the model"
    _assert_same_weights(tmp_path / "eager", tmp_path / "compiled")
    train(_cfg(ct_dataset, tmp_path / "compiled", compile=True, **{**kw, "iterations": 8}), resume=True, progress=False)
    volume = torch.zeros(40, 36, 6).numpy()
    assert load_run(tmp_path / "compiled", device="cpu").predict(volume).shape == volume.shape


def test_loader_workers_do_not_change_the_run(ct_dataset, tmp_path):
    """Samples are a function of (seed, index): two worker processes give the weights of the in-process loader."""
    for workers in (0, 2):
        train(
            _cfg(ct_dataset, tmp_path / f"w{workers}", iterations=6, val_every=3, num_workers=workers), progress=False
        )
    _assert_same_weights(tmp_path / "w0", tmp_path / "w2")


def test_existing_run_is_not_overwritten_without_resume(ct_dataset, tmp_path):
    cfg = _cfg(ct_dataset, tmp_path / "run", iterations=2, val_every=2)
    train(cfg, progress=False)
    before = (tmp_path / "run" / "checkpoints" / "last.safetensors").read_bytes()
    from attnseg.config import ConfigError

    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg, progress=False)
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").read_bytes() == before


def test_schedulers_follow_their_formulas(ct_dataset, tmp_path):
    for name, expected in (
        ("poly", lambda t: (1 - t / 10) ** 0.9),
        ("cosine", lambda t: 0.5 * (1 + torch.cos(torch.tensor(torch.pi * t / 10)).item())),
    ):
        cfg = _cfg(ct_dataset, tmp_path / name, iterations=10, scheduler=name, lr=1.0)
        trainer = Trainer(cfg, progress=False)
        trainer.setup()
        lrs = []
        for _ in range(10):
            lrs.append(trainer.optimizer.param_groups[0]["lr"])
            trainer.optimizer.step()
            trainer.scheduler.step()
        assert lrs == pytest.approx([expected(t) for t in range(10)], rel=1e-6)


def test_epochs_derive_iterations_from_the_training_samples(ct_dataset, tmp_path):
    # 2 training cases of 12 slices each (fold0 of 3 cases) at batch 4: an epoch is ceil(24 / 4) = 6 iterations
    summary = train(
        _cfg(ct_dataset, tmp_path / "run", iterations=None, epochs=2, batch_size=4, val_every=6), progress=False
    )
    assert summary["iterations_per_epoch"] == 6 and summary["iterations"] == 12 and summary["epochs"] == 2


def test_a_model_built_for_one_size_trains_at_the_run_size(ct_dataset, tmp_path):
    """MT-UNet's position embedding is built for img_size: the trainer builds it for --input-size by itself."""
    cfg = _cfg(
        ct_dataset,
        tmp_path / "run",
        model="mtunet",
        model_kwargs={"stem_channels": 8, "embed_dim": 16},
        input_size=[64, 64],
        iterations=1,
        val_every=1,
        batch_size=1,
    )
    train(cfg, progress=False)
    build = json.loads((tmp_path / "run" / "model.json").read_text())
    assert build["kwargs"] == {"img_size": 64, "stem_channels": 8, "embed_dim": 16}


def test_a_shared_progress_display_gets_one_training_task(ct_dataset, tmp_path):
    """``attnseg study`` passes its display: the trainer adds its bar there, advances it and removes it."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    class Recording(Progress):
        def __init__(self) -> None:
            super().__init__(console=Console(file=io.StringIO()), auto_refresh=False)
            self.events: list[tuple] = []

        def add_task(self, description, **kwargs):
            task = super().add_task(description, **kwargs)
            self.events.append(("add", description, kwargs.get("total")))
            return task

        def update(self, task, **kwargs):
            super().update(task, **kwargs)
            self.events.append(("update", kwargs.get("advance"), kwargs.get("description")))

        def remove_task(self, task):
            super().remove_task(task)
            self.events.append(("remove",))

    display = Recording()
    study_task = display.add_task("study", total=3)
    train(_cfg(ct_dataset, tmp_path / "run", iterations=4, val_every=0), progress=display)
    assert display.events[1] == ("add", "  train", 4)
    steps = [e for e in display.events if e[0] == "update"]
    assert [e[1] for e in steps] == [1, 1, 1, 1] and all(e[2].startswith("  train loss ") for e in steps)
    assert display.events[-1] == ("remove",) and [t.id for t in display.tasks] == [study_task]
    assert not display.live.is_started  # the owner starts and stops the display, not the trainer


def test_resume_falls_back_to_best_when_last_is_broken(ct_dataset, tmp_path, capsys):
    import shutil

    from attnseg.runs import RunError

    part = _full_and_interrupted(ct_dataset, tmp_path)
    weights = tmp_path / "part" / "checkpoints" / "last.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a disk that lost the file's end
    shutil.copytree(tmp_path / "part", tmp_path / "both_broken")
    train(part, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "last.safetensors: corrupt or truncated" in err and "resuming from the 'best' checkpoint" in err
    _assert_same_weights(tmp_path / "full", tmp_path / "part")  # best was written at the same step as last

    best = tmp_path / "both_broken" / "checkpoints" / "best_state.pt"
    best.write_bytes(best.read_bytes()[:100])
    with pytest.raises(RunError, match="cannot resume: .*last.safetensors.*no other complete checkpoint"):
        train(_cfg(ct_dataset, tmp_path / "both_broken"), resume=True, progress=False)


@pytest.mark.slow
def test_training_killed_at_random_moments_resumes_to_the_uninterrupted_weights(ct_dataset, tmp_path):
    """SIGKILL at random moments, some while a checkpoint is being written; ``--resume`` each time; the final
    weights equal an uninterrupted run's."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    def command(out, *extra):
        args = ["--model", "unet", "--model-kwargs", '{"width": 8}', "--data", str(ct_dataset), "--out", str(out)]
        args += ["--iterations", "24", "--batch-size", "2", "--input-size", "48", "48", "--val-every", "3"]
        args += ["--num-workers", "0", "--seed", "5", "--device", "cpu", "-q", *extra]
        return [sys.executable, "-m", "attnseg.cli.main", "train", *args]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(tmp_path / "whole"), env=env, check=True, capture_output=True)
    out, rng = tmp_path / "killed", random.Random(0)
    checkpoints, kills, during_write = out / "checkpoints", 0, 0
    while kills < 4:
        resume = (checkpoints / "last_state.pt").exists()
        proc = subprocess.Popen(command(out, *(["--resume"] if resume else [])), env=env)
        started = (checkpoints / "last_state.pt").stat().st_mtime_ns if resume else 0
        deadline = time.monotonic() + 240
        aim_at_write = kills % 2 == 0
        while proc.poll() is None and time.monotonic() < deadline:
            if aim_at_write and checkpoints.is_dir() and any(p.name.startswith(".") for p in checkpoints.iterdir()):
                during_write += 1
                break
            state = checkpoints / "last_state.pt"
            if not aim_at_write and state.exists() and state.stat().st_mtime_ns != started:
                time.sleep(rng.uniform(0.0, 0.4))  # somewhere in the steps after a new checkpoint
                break
            time.sleep(0.0005)
        if proc.poll() is not None:
            break  # finished before the kill
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 3, f"only {kills} kill(s) landed before the run finished"
    print(f"{kills} kills, {during_write} while a checkpoint was being written")
    final = subprocess.run(command(out, "--resume"), env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stdout + final.stderr
    _assert_same_weights(tmp_path / "whole", out)
    assert RunDir(out).load_state("last")["iteration"] == 24


def test_checkpoints_are_written_about_ten_times_per_run_and_best_is_the_best_validation(ct_dataset, tmp_path):
    """Validating every step of 20, ``last`` is written every 2nd validation (20 / 10); ``best`` is held in memory
    and written just before the next ``last``, with the weights of the step whose validation was best."""
    writes, best_weights = [], {}

    class Recording(Trainer):
        def on_checkpoint(self, name: str) -> None:
            writes.append((self.iteration, name))
            super().on_checkpoint(name)

        def on_validation(self):
            before = self.best_metric
            row = super().on_validation()
            if self.best_metric > before:
                best_weights.clear()
                best_weights[self.iteration] = {k: v.clone() for k, v in self.model.state_dict().items()}
            return row

    trainer = Recording(_cfg(ct_dataset, tmp_path / "run", iterations=20, val_every=1), progress=False)
    trainer._seed_everything()
    trainer.setup()
    summary = trainer.run()
    assert trainer.save_every == 2
    assert [i for i, name in writes if name == "last"] == list(range(2, 21, 2))
    assert all(writes[k + 1] == (i, "last") for k, (i, name) in enumerate(writes) if name == "best")
    (step, weights), saved = (
        next(iter(best_weights.items())),
        load_file(str(tmp_path / "run/checkpoints/best.safetensors")),
    )
    assert RunDir(tmp_path / "run").load_state("best")["iteration"] == step
    assert summary["best_val_dice"] == max(r["val_dice/mean"] for r in trainer.history if "val_dice/mean" in r)
    for k, v in weights.items():
        torch.testing.assert_close(saved[k], v, rtol=0, atol=0, msg=k)


def test_the_default_schedule_validates_no_closer_than_its_interval(ct_dataset, tmp_path):
    """41 steps, interval 4: the default schedule skips step 40 (the final validation at 41 would follow 1 step
    later); an explicit ``--val-every 4`` validates at every multiple and at the end."""
    for val_every, expected in ((0, [*range(4, 37, 4), 41]), (4, [*range(4, 41, 4), 41])):
        trainer = Trainer(_cfg(ct_dataset, tmp_path / str(val_every), iterations=41, val_every=val_every))
        trainer.total_iterations, trainer.val_every = 41, 4
        due = []
        for step in range(1, 42):
            trainer.iteration = step
            if trainer._validation_due():
                due.append(step)
        assert due == expected, (val_every, due)


def test_default_data_workers_leave_a_cpu_per_process(monkeypatch):
    import os

    from attnseg.training.trainer import data_workers

    for cpus, processes, expected in ((1, 1, 0), (2, 1, 1), (2, 2, 0), (8, 2, 3), (64, 1, 4)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)), raising=False)
        assert data_workers(processes) == expected, (cpus, processes)
        assert data_workers(processes, "cpu") == 0  # torch's threads use every core already


def test_the_default_validation_schedule_bounds_its_cost():
    from attnseg.training.trainer import validation_interval

    def interval(shapes, size, dims=2, geometry="spacing", batch=4, per_epoch=3):
        return validation_interval(
            shapes,
            input_size=size,
            spatial_dims=dims,
            geometry=geometry,
            batch_size=batch,
            iterations_per_epoch=per_epoch,
        )

    # one 2D tile that fits one window: 1 pass <= 5 % of an epoch's 3 steps x 3 x 4 = 36 passes: once per epoch
    assert interval([(128, 128)], [128, 128]) == 3
    # four tiles: 4 passes need 4 / (0.05 x 3 x 4) = 6.7 -> 7 steps between validations
    assert interval([(128, 128)] * 4, [128, 128]) == 7
    # 20 slices of 300x200 with 128 windows at 50 % overlap: 4 x 3 windows per slice = 240 passes;
    # 5 % of a step (3 x 4 passes) is 0.6 passes, so every ceil(240 / 0.6) = 400 steps
    assert interval([(300, 200, 20)], [128, 128]) == 400
    assert interval([(300, 200, 20)], [128, 128], geometry="resize") == math.ceil(20 / 0.6)  # a window per slice
    # a 3D model: 3 x 3 x 1 windows of 64^3 on a 100x100x40 volume (MONAI's starts 0, 32, 36 on 100); a global
    # batch of 4 (2 processes x 2): ceil(9 / 0.6) = 15
    assert interval([(100, 100, 40)], [64, 64, 64], dims=3, batch=4, per_epoch=1) == 15
    assert interval([], [128, 128]) == 3  # no validation cases: checkpoints once per epoch
    # the window count is MONAI's own (sliding_window_inference's scan at 50 % overlap)
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for shape, roi in (((1000, 130), (128, 128)), ((257, 129), (128, 128)), ((100, 100, 64), (64, 64, 64))):
        monai_windows = len(dense_patch_slices(shape, roi, _get_scan_interval(shape, roi, len(shape), (0.5,) * 3)))
        assert interval([shape], list(roi), dims=len(shape), per_epoch=1) == math.ceil(monai_windows / 0.6)


def test_a_fold_without_training_cases_is_refused_before_any_write(ct_dataset, tmp_path):
    import shutil

    from attnseg.config import ConfigError
    from attnseg.data.layout import load_dataset

    root = tmp_path / "ds"
    shutil.copytree(ct_dataset, root)
    cases = load_dataset(root).training_cases()
    (root / "splits.json").write_text(json.dumps({"fold0": {"val": cases[:1]}, "fold1": {"train": [], "val": cases}}))
    for fold in ("0", "1"):
        with pytest.raises(ConfigError, match=f"'fold{fold}' has no training cases"):
            train(_cfg(root, tmp_path / f"run{fold}", fold=fold), progress=False)
        assert not (tmp_path / f"run{fold}" / "config.yaml").exists()


def test_a_restart_into_an_unfinished_run_hides_its_old_tensorboard_events(ct_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train_tiny(ct_dataset, out, log_every=1, seed=1)
    shutil.rmtree(out / "checkpoints")  # as if killed before its first checkpoint: a new run may start here
    train_tiny(ct_dataset, out, log_every=1, seed=2, iterations=3)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = [(int(r["iteration"]), float(r["loss"])) for r in csv.DictReader((out / "log.csv").open())]
    shown = [(e.step, e.value) for e in events.Scalars("loss")]
    assert [s for s, _ in shown] == [s for s, _ in logged] == [1, 2, 3], shown
    assert [v for _, v in shown] == pytest.approx([v for _, v in logged], rel=1e-6)
