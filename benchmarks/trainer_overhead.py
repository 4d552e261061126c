"""What the trainer costs beyond the model: ``attnseg train`` against a bare PyTorch loop on ready tensors.

For each dataset, one run times, interleaved (trainer, bare, trainer, bare, ...):

- **trainer**: :func:`attnseg.training.trainer.train` with the CLI's defaults (data checks, preprocessing, sampling,
  augmentation, collation, the default validation schedule, logging, checkpoints), ``--iterations`` steps;
- **bare**: the same model (same seed), loss, optimiser, scheduler and gradient clipping, stepping through batches
  that were sampled beforehand and sit in memory: the floor any training loop of this model has.

The ratio trainer / bare is the trainer's overhead factor (issue goal: at most 1.10). The trainer's wall time is also
split by phase, from timers around the trainer's hooks: set-up (data checks, preprocessing, model), training steps,
data (waiting for the next batch, the loader's start included), validation, checkpoint writes, and the rest (logging,
TensorBoard, run files). Writes
``benchmarks/results/trainer_overhead.json`` and ``.md``.

Usage: ``python benchmarks/trainer_overhead.py [--iterations 200] [--repeats 2] [--datasets demo png]``
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests"))  # the synthetic-data generator of the test suite

from synthetic import make_rgb_dataset  # noqa: E402

from attnseg.bench.report import environment_info, save_results  # noqa: E402
from attnseg.config import TrainConfig  # noqa: E402
from attnseg.demo import demo_dataset_path  # noqa: E402
from attnseg.training.trainer import Trainer  # noqa: E402


def _config(data: Path, out: Path, iterations: int) -> TrainConfig:
    """The CLI's defaults for ``attnseg train --model unet --input-size 128 128 --batch-size 4``."""
    return TrainConfig(
        model="unet", data=str(data), out=str(out), iterations=iterations, batch_size=4, input_size=[128, 128]
    )


def _ready_batches(cfg: TrainConfig) -> tuple[Trainer, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A set-up trainer and the batches its loader yields, collected into memory."""
    trainer = Trainer(cfg, progress=False)
    trainer._seed_everything()
    trainer.setup()
    return trainer, [(x.clone(), y.clone()) for x, y in trainer._loader()]


def _bare_loop(trainer: Trainer, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Seconds for the plain loop over ``batches`` with the trainer's model, loss, optimiser and scheduler."""
    cfg = trainer.cfg
    torch.manual_seed(cfg.seed)
    model = trainer.build_model(trainer.model.attnseg_build["in_channels"], trainer.num_classes).train()
    optimizer = trainer.build_optimizer(model.parameters())
    scheduler = trainer.build_scheduler(optimizer)
    t0 = time.perf_counter()
    for image, label in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = trainer.loss_fn(model(image), label)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - t0


PHASES = ("setup", "steps", "data", "validation", "checkpoints", "other")


class _TimedTrainer(Trainer):
    """The default trainer with wall-clock timers around its phases (what :func:`train` runs, hook for hook)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._mark = 0.0

    def _timed(self, phase: str, fn: Any, *args: Any) -> Any:
        """Run a hook, adding its time to ``phase`` and moving the data-wait mark past it."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            elapsed = time.perf_counter() - t0
            self.seconds[phase] += elapsed
            self._mark += elapsed  # time spent in a hook is not the loader's wait

    def setup(self) -> None:
        self._timed("setup", super().setup)

    def train_step(self, image: torch.Tensor, label: torch.Tensor) -> float:
        self.seconds["data"] += time.perf_counter() - self._mark  # since the previous step ended: the loader's wait
        return self._timed("steps", super().train_step, image, label)

    def on_step_end(self, loss: float) -> dict[str, Any]:
        row = super().on_step_end(loss)
        self._mark = time.perf_counter()
        return row

    def on_train_start(self) -> None:
        super().on_train_start()
        self._mark = time.perf_counter()

    def on_validation(self) -> dict[str, Any]:
        return self._timed("validation", super().on_validation)

    def log(self, row: dict[str, Any]) -> None:
        self._timed("other", super().log, row)  # "other" is recomputed as the remainder at the end

    def on_checkpoint(self, name: str) -> None:
        self._timed("checkpoints", super().on_checkpoint, name)


def _timed_train(cfg: TrainConfig) -> tuple[float, dict[str, float], int]:
    """Wall seconds of one run as :func:`train` does it, its phases, and the number of validations."""
    t0 = time.perf_counter()
    trainer = _TimedTrainer(cfg, progress=False)
    trainer._seed_everything()
    trainer.setup()
    trainer.run()
    total = time.perf_counter() - t0
    phases = trainer.seconds
    phases["other"] = total - sum(v for k, v in phases.items() if k != "other")
    validations = sum(1 for row in trainer.history if any(k.startswith("val_dice/") for k in row))
    return total, phases, validations


def measure(name: str, data: Path, iterations: int, repeats: int) -> dict[str, Any]:
    trainer_s, bare_s, phases = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        ready, batches = _ready_batches(_config(data, Path(tmp) / "probe", iterations))
        for k in range(repeats):
            total, split, validations = _timed_train(_config(data, Path(tmp) / f"run{k}", iterations))
            trainer_s.append(total)
            phases.append(split)
            bare_s.append(_bare_loop(ready, batches))
    ratios = [t / b for t, b in zip(trainer_s, bare_s, strict=True)]
    return {
        "dataset": name,
        "iterations": iterations,
        "val_every": ready.val_every,
        "validations": validations,
        "checkpoint_every": ready.save_every,
        "validation_cases": len(ready.val_cases),
        "trainer_seconds": [round(t, 2) for t in trainer_s],
        "bare_seconds": [round(b, 2) for b in bare_s],
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_spread": [round(min(ratios), 3), round(max(ratios), 3)],
        "phase_seconds_median": {p: round(statistics.median(s[p] for s in phases), 2) for p in PHASES},
    }


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Trainer overhead: `attnseg train` against a bare loop on ready tensors",
        "",
        f"Generated {doc['created']} by `python benchmarks/trainer_overhead.py`: unet, 128x128, batch 4, CLI defaults "
        f"otherwise; {doc['repeats']} interleaved repeats; load average {doc['load_average']} at the start; "
        f"{doc['environment']['host']['cpu']}, {doc['environment']['host']['torch_threads']} torch threads.",
        "",
        "| dataset | iterations | validation every (count) | `last` every | trainer s | bare loop s "
        "| trainer / bare (median, range) |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for r in doc["datasets"]:
        lo, hi = r["ratio_spread"]
        lines.append(
            f"| {r['dataset']} | {r['iterations']} | {r['val_every']} ({r['validations']}) | {r['checkpoint_every']} "
            f"| {r['trainer_seconds']} | {r['bare_seconds']} | {r['ratio_median']:.3f} ({lo:.3f}-{hi:.3f}) |"
        )
    lines += [
        "",
        "Where the trainer's time goes (median seconds over the repeats; `data`: waiting for the next batch):",
        "",
        "| dataset | " + " | ".join(PHASES) + " |",
        "|---|" + "---:|" * len(PHASES),
    ]
    for r in doc["datasets"]:
        lines.append(f"| {r['dataset']} | " + " | ".join(f"{r['phase_seconds_median'][p]:.2f}" for p in PHASES) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--datasets", nargs="+", default=["demo", "png"], choices=["demo", "png"])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load = [round(v, 2) for v in os.getloadavg()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = {
            "demo": demo_dataset_path(),
            "png": make_rgb_dataset(Path(tmp) / "png", num_train=12, size=(128, 128)),
        }
        for name in args.datasets:
            rows.append(measure(name, sources[name], args.iterations, args.repeats))
    doc = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "load_average": load,
        "repeats": args.repeats,
        "datasets": rows,
        "environment": environment_info(),
    }
    save_results(args.results, "trainer_overhead", doc, markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
