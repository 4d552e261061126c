"""A plain-PyTorch trainer in nnU-Net's style: hyperparameters as attributes, the loop as a list of hooks.

Override ``build_model``, ``build_loss``, ``build_optimizer``, ``build_scheduler`` or ``train_step`` in a subclass to
change one thing. Iteration-based: the run is ``total_iterations`` optimiser steps; an "epoch" is
``iterations_per_epoch`` steps (default: one pass over the training images or slices). Validation runs on the
validation split of the fold (never on test) every ``val_every`` steps and selects the ``best`` checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from attnseg.config import ConfigError, TrainConfig, config_to_dict
from attnseg.data.datasets import CaseCache, SliceSampler
from attnseg.data.layout import DatasetError, DatasetInfo, load_dataset, load_splits
from attnseg.data.preprocess import Plan, load_case, make_plan, preprocess_case
from attnseg.evaluation.metrics import confusion_counts, dice_from_counts
from attnseg.inference.sliding_window import predict_probabilities
from attnseg.models.registry import check_input_size, create_model, model_info
from attnseg.training import checkpoint as ckpt
from attnseg.training import distributed as ddp
from attnseg.training.losses import build_loss

__all__ = ["Trainer", "resolve_device", "dice_per_class"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a valid torch device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return device


def dice_per_class(pred: np.ndarray, gt: np.ndarray, labels: list[int]) -> dict[int, float]:
    """Dice per label (1 when both are empty, as in the ``strict`` protocol)."""
    out = {}
    for k in labels:
        c = confusion_counts(pred == k, gt == k)
        out[k] = dice_from_counts(c["tp"], c["fp"], c["fn"], empty=1.0)
    return out


class _RankSampler(Sampler[int]):
    """Global sample ids for this rank from ``start_iteration``: sample id = (it * world + rank) * B + b."""

    def __init__(self, start: int, total: int, batch: int, rank: int, world: int) -> None:
        self.start, self.total, self.batch, self.rank, self.world = start, total, batch, rank, world

    def __iter__(self):
        for it in range(self.start, self.total):
            base = (it * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)

    def __len__(self) -> int:
        return (self.total - self.start) * self.batch


class Trainer:
    """Trains one model on one fold of a dataset into a run directory."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> None:
        cfg.validate()
        self.cfg = cfg
        self.resume = resume
        self.progress = progress
        self.run_dir = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        self.model: nn.Module | None = None  # -> setup()
        self.iteration = 0
        self.best_metric = -math.inf
        self.history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------------------------------------- build hooks
    def build_model(self, in_channels: int, num_classes: int) -> nn.Module:
        return create_model(self.cfg.model, in_channels, num_classes, **self.cfg.model_kwargs)

    def build_loss(self, num_classes: int) -> nn.Module:
        return build_loss(self.cfg.loss, num_classes)

    def build_optimizer(self, params) -> torch.optim.Optimizer:
        c = self.cfg
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=False)
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        c, total = self.cfg, self.total_iterations

        def factor(step: int) -> float:
            if c.warmup_iterations and step < c.warmup_iterations:
                return (step + 1) / c.warmup_iterations
            progress = min(step / max(total, 1), 1.0)
            if c.scheduler == "poly":  # lr = base * (1 - t/T)^0.9 (TransUNet/nnU-Net)
                return (1 - progress) ** c.poly_power
            if c.scheduler == "cosine":  # cosine annealing to min_lr over the run
                floor = c.min_lr / c.lr
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
            return 1.0

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # ------------------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Validate everything that can fail before anything is written to the run directory."""
        c = self.cfg
        if not c.out:
            raise ConfigError("--out (run directory) is required")
        info = load_dataset(c.data)
        self.info: DatasetInfo = info
        splits = load_splits(info, write_if_missing=not self.resume)
        fold = c.fold if not c.fold.isdigit() else f"fold{c.fold}"
        if fold == "all":
            train_ids, val_ids = info.training_cases(), []
        elif fold not in splits or not isinstance(splits[fold], dict):
            names = [k for k, v in splits.items() if isinstance(v, dict)]
            raise ConfigError(f"--fold {c.fold!r} is not in {info.root / 'splits.json'} (available: {names + ['all']})")
        else:
            train_ids, val_ids = list(splits[fold]["train"]), list(splits[fold].get("val", []))
        test_ids = set(splits.get("test", [])) if isinstance(splits.get("test"), list) else set()
        if isinstance(splits.get(fold), dict) and "test" in splits[fold]:
            test_ids = set(splits[fold]["test"])  # a named split (e.g. ACDC "official") defines its own test set
        if (set(val_ids) | set(train_ids)) & test_ids:
            overlap = sorted((set(val_ids) | set(train_ids)) & test_ids)
            raise ConfigError(f"fold {fold!r}: cases {overlap[:5]} are both in train/val and in the test split; "
                              "training and checkpoint selection must not see test cases")
        if not train_ids:
            raise ConfigError(f"fold {fold!r} has no training cases")
        self.train_ids, self.val_ids = train_ids, val_ids

        meta = model_info(c.model)
        binary = c.loss in ("bce_dice", "bce")
        if binary and info.num_classes != 2:
            raise ConfigError(f"--loss {c.loss} is for binary datasets; {info.root} has {info.num_classes - 1} labels")
        num_classes = 1 if binary else info.num_classes
        in_channels = 3 if info.is_rgb else info.num_channels
        self.model = self.build_model(in_channels, num_classes)
        spatial_dims = meta.spatial_dims
        if len(c.input_size) != spatial_dims:
            raise ConfigError(f"--input-size {c.input_size}: model {c.model!r} is {spatial_dims}D and needs "
                              f"{spatial_dims} sizes")
        try:
            check_input_size(self.model, c.input_size)
        except ValueError as exc:
            raise ConfigError(f"--input-size {' '.join(map(str, c.input_size))}: {exc}") from None
        self.slab = c.slab_size or int(getattr(self.model, "slab_size", 1))
        self.spatial_dims, self.num_classes = spatial_dims, num_classes
        self._probe_forward(in_channels)

        self.plan: Plan = make_plan(info, train_ids, geometry=c.geometry, input_size=c.input_size,
                                    spatial_dims=spatial_dims, target_spacing=c.target_spacing,
                                    ct_window=tuple(c.ct_window), ct_clip_hu=c.ct_clip_hu, seed=c.seed)
        self.plan.num_classes = num_classes
        train_cases = [preprocess_case(cid, *load_case(info.cases[cid], info), self.plan) for cid in train_ids]
        self.val_cases = [preprocess_case(cid, *load_case(info.cases[cid], info), self.plan) for cid in val_ids]
        self.cache = CaseCache(train_cases, spatial_dims, seed=c.seed)
        samples = self.cache.num_slices if spatial_dims == 2 else len(train_cases)
        world = ddp.world_size()
        self.iterations_per_epoch = c.iterations_per_epoch or max(1, math.ceil(samples / (c.batch_size * world)))
        self.total_iterations = c.total_iterations(self.iterations_per_epoch)
        self.val_every = c.val_every or self.iterations_per_epoch
        self.loss_fn = self.build_loss(num_classes)

        existing = ckpt.checkpoint_paths(self.run_dir, "last")[1]
        if existing.exists() and not self.resume:
            raise ConfigError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose a new --out")
        if self.resume and not existing.exists():
            raise ConfigError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}")

        self.model.to(self.device)
        if c.channels_last and self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last if spatial_dims == 2 else torch.channels_last_3d)
        self.optimizer = self.build_optimizer(self.model.parameters())
        self.scheduler = self.build_scheduler(self.optimizer)
        self.scaler = torch.amp.GradScaler("cuda", enabled=c.amp == "fp16" and self.device.type == "cuda")
        if self.resume:
            self._load_resume_state()

    @torch.no_grad()
    def _probe_forward(self, in_channels: int) -> None:
        """One eval-mode forward of a zero input, so a size the model cannot take fails before anything is written."""
        c = self.cfg
        shape = (1, in_channels, *((self.slab,) if self.slab > 1 else ()), *c.input_size)
        self.model.eval()
        try:
            out = self.model(torch.zeros(shape))
        except Exception as exc:  # any failure here is the size/option combination, reported as such
            raise ConfigError(f"--input-size {' '.join(map(str, c.input_size))}: model {c.model!r} cannot take an "
                              f"input of shape {list(shape)} ({type(exc).__name__}: {exc})") from None
        finally:
            self.model.train()
        expected = (1, self.num_classes, *c.input_size)
        if tuple(out.shape) != expected:
            raise ConfigError(f"model {c.model!r} returned {tuple(out.shape)} for input {list(shape)}; expected "
                              f"logits of shape {expected}")

    # ------------------------------------------------------------------------------------------------- run files
    def _write_run_files(self) -> None:
        import yaml

        from attnseg.data.layout import atomic_write_text

        d = self.run_dir
        d.mkdir(parents=True, exist_ok=True)
        resolved = config_to_dict(self.cfg)
        atomic_write_text(d / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        atomic_write_text(d / "plan.json", self.plan.to_json())
        build = dict(getattr(self.model, "attnseg_build", {}))
        build.update(slab_size=self.slab, spatial_dims=self.spatial_dims, dataset=str(self.info.root),
                     label_names={str(v): k for k, v in self.info.labels.items()})
        atomic_write_text(d / "model.json", json.dumps(build, indent=2) + "\n")
        atomic_write_text(d / "split.json", json.dumps({"fold": self.cfg.fold, "train": self.train_ids,
                                                          "val": self.val_ids}, indent=2) + "\n")

    def _state(self) -> dict[str, Any]:
        state = {
            "iteration": self.iteration,
            "best_metric": self.best_metric,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "world_size": ddp.world_size(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def save(self, name: str) -> None:
        if not ddp.is_main():
            return
        weights, state = ckpt.checkpoint_paths(self.run_dir, name)
        meta = {"model": self.cfg.model, "iteration": str(self.iteration)}
        ckpt.save_weights(self.model, weights, meta)
        ckpt.save_state(self._state(), state)

    def _load_resume_state(self) -> None:
        weights, state_path = ckpt.checkpoint_paths(self.run_dir, "last")
        ckpt.load_weights(self.model, weights)
        state = ckpt.load_state(state_path)
        self.iteration = int(state["iteration"])
        self.best_metric = float(state["best_metric"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        log = self.run_dir / "log.csv"
        if log.exists():
            with open(log) as fh:
                self.history = [r for r in csv.DictReader(fh) if int(r["iteration"]) <= self.iteration]

    # ------------------------------------------------------------------------------------------------------ steps
    def train_step(self, image: torch.Tensor, label: torch.Tensor) -> float:
        c = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        dtype = torch.bfloat16 if c.amp == "bf16" else torch.float16
        with torch.autocast(device_type=self.device.type, dtype=dtype, enabled=c.amp != "none"):
            logits = self.model(image)
            loss = self.loss_fn(logits.float(), label)
        self.scaler.scale(loss).backward()
        if c.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach())

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Per-class Dice on the validation cases (sharded over ranks, gathered), on the preprocessed grid."""
        model = ckpt.unwrap(self.model)
        labels = [v for v in self.info.label_values if v != 0]
        mine = self.val_cases[ddp.rank():: ddp.world_size()]
        results = []
        for case in mine:
            probs = predict_probabilities(model, case.image, spatial_dims=self.spatial_dims,
                                          input_size=self.plan.input_size, geometry=self.plan.geometry,
                                          slab=self.slab, device=self.device)
            results.append(dice_per_class(probs.argmax(0), case.label, labels))
        model.train()
        gathered = [r for part in ddp.gather_objects(results) for r in part]
        names = self.info.label_names
        per_class = {names[k]: float(np.mean([r[k] for r in gathered])) for k in labels}
        per_class["mean"] = float(np.mean(list(per_class.values())))
        return per_class

    # -------------------------------------------------------------------------------------------------------- run
    def _loader(self) -> DataLoader:
        c, world = self.cfg, ddp.world_size()
        dataset = SliceSampler(self.cache, self.plan, num_samples=self.total_iterations * c.batch_size * world,
                               seed=c.seed, foreground_prob=c.foreground_prob, augment=c.augment, slab_size=self.slab)
        sampler = _RankSampler(self.iteration, self.total_iterations, c.batch_size, ddp.rank(), world)
        return DataLoader(dataset, batch_size=c.batch_size, sampler=sampler, num_workers=c.num_workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False,
                          prefetch_factor=4 if c.num_workers > 0 else None)

    def _log(self, row: dict[str, Any], writer) -> None:
        self.history.append(row)
        if not ddp.is_main():
            return
        path = self.run_dir / "log.csv"
        fields = sorted({k for r in self.history for k in r}, key=lambda k: (k != "iteration", k))
        if fields == getattr(self, "_log_fields", None) and path.exists():
            with open(path, "a", newline="") as fh:  # same columns: append one row
                csv.DictWriter(fh, fieldnames=fields).writerow(row)
        else:  # new columns (e.g. the first validation) or a resumed run: rewrite the whole file
            with open(path, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=fields)
                w.writeheader()
                w.writerows(self.history)
            self._log_fields = fields
        if writer is not None:
            for k, v in row.items():
                if k != "iteration" and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, row["iteration"])

    def run(self) -> dict[str, Any]:
        """Train to ``total_iterations``; returns a summary (final and best validation Dice)."""
        c = self.cfg
        ddp.init_distributed(self.device)
        if self.model is None:
            self._seed_everything()
            self.setup()
        if ddp.is_main():
            self._write_run_files()
        model = self.model
        if ddp.world_size() > 1:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.model = model
        if c.compile:
            self.model = torch.compile(self.model)
        writer = None
        if ddp.is_main():
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.model.train()
        progress, task = self._progress()
        running, t0 = [], time.perf_counter()
        last_val: dict[str, float] = {}
        try:
            for image, label in self._loader():
                image = image.to(self.device, non_blocking=True)
                label = label.to(self.device, non_blocking=True)
                loss = self.train_step(image, label)
                self.iteration += 1
                running.append(loss)
                if progress is not None:
                    progress.update(task, advance=1, description=f"loss {np.mean(running[-20:]):.4f}")
                row: dict[str, Any] = {}
                if self.iteration % c.log_every == 0 or self.iteration == self.total_iterations:
                    row.update(loss=float(np.mean(running)), lr=self.optimizer.param_groups[0]["lr"],
                               seconds=round(time.perf_counter() - t0, 2))
                    running = []
                if self.val_cases and (self.iteration % self.val_every == 0
                                       or self.iteration == self.total_iterations):
                    last_val = self.validate()
                    row.update({f"val_dice/{k}": v for k, v in last_val.items()})
                    if last_val["mean"] > self.best_metric:
                        self.best_metric = last_val["mean"]
                        self.save("best")
                if row:
                    self._log({"iteration": self.iteration, **row}, writer)
                if self.iteration % self.val_every == 0 or self.iteration == self.total_iterations:
                    self.save("last")
        finally:
            if progress is not None:
                progress.stop()
            if writer is not None:
                writer.close()
        if not self.val_cases and ddp.is_main():
            self.save("best")  # no validation split: "best" is the final model (recorded in summary)
        summary = {"iterations": self.iteration, "iterations_per_epoch": self.iterations_per_epoch,
                   "epochs": TrainConfig.derived_epochs(self.total_iterations, self.iterations_per_epoch),
                   "best_val_dice": self.best_metric if self.val_cases else None,
                   "final_val_dice": last_val or None, "selected_on": "val" if self.val_cases else "none (last)"}
        if ddp.is_main():
            from attnseg.data.layout import atomic_write_text

            atomic_write_text(self.run_dir / "train_summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    def _progress(self):
        if not (self.progress and ddp.is_main()):
            return None, None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.description}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn())
        task = progress.add_task("", total=self.total_iterations, completed=self.iteration)
        progress.start()
        return progress, task

    def _seed_everything(self) -> None:
        c = self.cfg
        random.seed(c.seed)
        np.random.seed(c.seed % 2**32)
        torch.manual_seed(c.seed + ddp.rank())
        if c.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Validate, then train; raises ``ConfigError``/``DatasetError`` before writing anything on bad input."""
    trainer = Trainer(cfg, resume=resume, progress=progress)
    ddp.init_distributed(trainer.device)
    trainer._seed_everything()  # model init depends only on the seed; resume then restores the saved RNG
    trainer.setup()
    return trainer.run()


__all__ += ["train", "DatasetError"]
