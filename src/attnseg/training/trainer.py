"""A plain-PyTorch trainer in nnU-Net's style: hyperparameters as attributes, the loop as a list of named hooks.

:meth:`Trainer.run` is ``on_train_start`` -> (``train_step`` -> ``on_step_end`` -> ``on_validation`` when due ->
``on_checkpoint``) per iteration -> ``on_train_end``. Override one hook, or one of the factories ``build_model``,
``build_loss``, ``build_optimizer``, ``build_scheduler``, in a subclass registered with :func:`register_trainer`; a
recipe then selects it with ``trainer: NAME`` (nnU-Net's ``-tr``).

Iteration-based: the run is ``total_iterations`` optimiser steps; an "epoch" is ``iterations_per_epoch`` steps
(default: one pass over the training images or slices). Validation runs on the validation split of the fold (never on
test) every ``val_every`` steps and selects the ``best`` checkpoint. The run directory is written through
:class:`attnseg.runs.RunDir`.
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from attnseg.config import ConfigError, TrainConfig, config_to_dict, resolve_device
from attnseg.data.check import verify_dataset
from attnseg.data.datasets import CaseCache, SliceSampler
from attnseg.data.layout import DatasetInfo, load_dataset, load_splits
from attnseg.data.preprocess import Plan, load_case, make_plan, preprocess_case, restore_geometry
from attnseg.inference.predictor import labels_from_probabilities
from attnseg.inference.sliding_window import predict_probabilities
from attnseg.metrics import confusion_counts, dice_from_counts
from attnseg.models.registry import (
    UnknownModelOptionError,
    batchnorm_values,
    check_input_size,
    create_model,
    ddp_safe,
    model_info,
    sized_kwargs,
)
from attnseg.runs import RunDir, RunError, unwrap
from attnseg.training import distributed as ddp
from attnseg.training.losses import build_loss
from attnseg.training.precision import bf16_conv3d_backward_is_reliable

__all__ = ["Trainer", "register_trainer", "get_trainer", "list_trainers", "train", "dice_per_class"]

_TRAINERS: dict[str, type[Trainer]] = {}


def register_trainer(name: str) -> Callable[[type[Trainer]], type[Trainer]]:
    """Class decorator: make a :class:`Trainer` subclass selectable as ``trainer: NAME`` in a recipe."""

    def decorator(cls: type[Trainer]) -> type[Trainer]:
        if name in _TRAINERS and _TRAINERS[name] is not cls:
            raise ValueError(f"trainer name {name!r} is already registered by {_TRAINERS[name].__qualname__}")
        _TRAINERS[name] = cls
        return cls

    return decorator


def list_trainers() -> list[str]:
    return sorted(_TRAINERS)


def get_trainer(name: str) -> type[Trainer]:
    """The trainer class registered as ``name``; a :class:`ConfigError` lists the names otherwise."""
    if name not in _TRAINERS:
        raise ConfigError(f"{name!r} is not registered (available: {', '.join(list_trainers())})", option="trainer")
    return _TRAINERS[name]


VALIDATION_SHARE = 0.05  # the default schedule keeps validation within this share of the training compute
CHECKPOINTS_PER_RUN = 10  # `last` is written at about this many validations per run (and after the final step)


def validation_interval(
    val_shapes: list[tuple[int, ...]],
    *,
    input_size: list[int],
    spatial_dims: int,
    geometry: str,
    batch_size: int,
    iterations_per_epoch: int,
) -> int:
    """The default ``val_every``: once per epoch, or less often when one validation pass would cost more than
    ``VALIDATION_SHARE`` of the training steps between two validations.

    The cost is counted in network forward passes on ``input_size`` inputs: a validation pass runs one per sliding
    window (50 % overlap; one per slice for a 2D model on a volume, one per image under ``resize``), a training step
    about ``3 * batch_size`` (forward and backward; ``batch_size`` is the global batch). Counting instead of timing
    keeps the schedule, and so the choice of ``best``, the same on every machine.
    """

    def windows(length: int, window: int) -> int:
        return 1 if length <= window else math.ceil((length - window) / (window / 2)) + 1

    passes = 0
    for shape in val_shapes:
        planes, slices = shape[:spatial_dims], math.prod(shape[spatial_dims:])  # a 2D model's volume: Z slices
        per_plane = 1 if geometry == "resize" else math.prod(map(windows, planes, input_size))
        passes += per_plane * slices
    bounded = math.ceil(passes / (VALIDATION_SHARE * 3 * batch_size))
    return max(iterations_per_epoch, bounded)


def data_workers(processes: int = 1, device_type: str = "cuda") -> int:
    """Default loader workers per training process. On an accelerator: the CPUs left after one per process, at most
    4. On the CPU: none, since torch's threads already use every core and a worker only competes with them (2 cores,
    unet 128x128 batch 4: 1.20x a bare loop's time with one worker, 1.10x without; ``benchmarks/trainer_overhead.py``).
    """
    if device_type == "cpu":
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus // max(processes, 1) - 1))


def _memory_format(ndim: int) -> torch.memory_format:
    """The channels-last format of a tensor (or a model's inputs) with ``ndim`` dimensions."""
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


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


@register_trainer("default")
class Trainer:
    """Trains one model on one fold of a dataset into a run directory.

    Args:
        cfg: the resolved configuration.
        resume: continue the run in ``cfg.out`` from its ``last`` checkpoint.
        progress: show a progress bar (rank 0 only); a ``rich.progress.Progress`` shows it as one more task of
            that display (``attnseg study``: the jobs, then the current job's training).
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, progress: bool | Any = True) -> None:
        cfg.validate()
        self.cfg = cfg
        self.resume = resume
        self.progress = progress
        self.run_dir = RunDir(cfg.out)
        # under torchrun, plain "cuda" is this process's GPU (cuda:LOCAL_RANK)
        self.device = ddp.process_device(resolve_device(cfg.device))
        self.model: nn.Module | None = None  # -> setup()
        self.iteration = 0
        self.best_metric = -math.inf
        self.last_validation: dict[str, float] = {}
        self._pending_best: tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, str]] | None = None
        self.history: list[dict[str, Any]] = []
        self._running: list[float] = []
        self._log_fields: list[str] | None = None
        self._writer = None  # TensorBoard, rank 0 -> on_train_start()
        self._progress_bar = None

    # ----------------------------------------------------------------------------------------------- build hooks
    def build_model(self, in_channels: int, num_classes: int) -> nn.Module:
        c = self.cfg
        try:
            # models built for one input size (MSA2Net's img_size, ...) are built for the run's
            return create_model(
                c.model, in_channels, num_classes, **sized_kwargs(c.model, c.input_size, c.model_kwargs)
            )
        except UnknownModelOptionError as exc:  # the message lists the model's options
            raise ConfigError(str(exc), option="model_kwargs") from None
        except ValueError as exc:  # a value the model's constructor refuses (width -4, heads not dividing dim, ...)
            raise ConfigError(f"cannot build {c.model!r} with {c.model_kwargs}: {exc}", option="model_kwargs") from None

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
        """Linear warm-up over ``warmup_iterations``, then the schedule over the remaining steps.

        ``poly``: lr = base (1 - t/T)^0.9 (TransUNet, nnU-Net); ``cosine``: cosine annealing to ``min_lr``;
        ``constant``.
        """
        from torch.optim import lr_scheduler as sched

        c = self.cfg
        warmup = min(c.warmup_iterations, max(self.total_iterations - 1, 0))
        steps = max(self.total_iterations - warmup, 1)
        if c.scheduler == "poly":
            main = sched.PolynomialLR(optimizer, total_iters=steps, power=c.poly_power)
        elif c.scheduler == "cosine":
            main = sched.CosineAnnealingLR(optimizer, T_max=steps, eta_min=c.min_lr)
        else:
            main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
        if warmup <= 1:
            return main
        # step k < warmup: lr = base (k + 1) / warmup
        ramp = sched.LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1)
        return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])

    # ------------------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Validate everything that can fail before anything is written to the run directory."""
        c = self.cfg
        if not c.out:
            raise ConfigError("the run directory is required", option="out")
        if Path(c.out).exists() and not Path(c.out).is_dir():
            raise ConfigError(f"{c.out} is a file; the run directory must be a folder", option="out")
        # every problem of the dataset at once, before anything is written (attnseg.data.check; cached)
        verify_dataset(c.data, print_warnings=ddp.is_main())
        info = load_dataset(c.data)
        self.info: DatasetInfo = info
        self.train_ids, self.val_ids = self._fold_cases(info)

        meta = model_info(c.model)
        binary = c.loss in ("bce_dice", "bce")
        if binary and info.num_classes != 2:
            raise ConfigError(
                f"{c.loss} is for binary datasets; {info.root} has {info.num_classes - 1} labels", option="loss"
            )
        num_classes = 1 if binary else info.num_classes
        in_channels = 3 if info.is_rgb else info.num_channels
        if self.resume and (self.run_dir.path / "model.json").is_file():
            self._check_resumed_model(in_channels, num_classes)
        if len(c.input_size) != meta.spatial_dims:
            raise ConfigError(
                f"{c.input_size}: model {c.model!r} is {meta.spatial_dims}D and needs {meta.spatial_dims} sizes",
                option="input_size",
            )
        if c.compile and not meta.torch_compile:
            raise ConfigError(f"model {c.model!r} does not support torch.compile", option="compile")
        self.model = self.build_model(in_channels, num_classes)
        try:
            check_input_size(self.model, c.input_size)
        except ValueError as exc:
            raise ConfigError(f"{' '.join(map(str, c.input_size))}: {exc}", option="input_size") from None
        if c.slab_size and c.slab_size > 1 and not hasattr(self.model, "slab_size"):
            raise ConfigError(f"{c.slab_size}: model {c.model!r} does not take slabs of slices", option="slab_size")
        self.slab = c.slab_size or int(getattr(self.model, "slab_size", 1))
        self.spatial_dims, self.num_classes = meta.spatial_dims, num_classes
        self._probe_forward(in_channels)

        self.plan: Plan = make_plan(
            info,
            self.train_ids,
            geometry=c.geometry,
            input_size=c.input_size,
            spatial_dims=self.spatial_dims,
            target_spacing=c.target_spacing,
            ct_window=tuple(c.ct_window),
            ct_clip_hu=c.ct_clip_hu,
            seed=c.seed,
        )
        self.plan.num_classes = num_classes
        if self.spatial_dims == 3 and not self.plan.data_is_3d:
            raise ConfigError(f"model {c.model!r} is a 3D network but {info.root} holds 2D images", option="model")
        train_cases = [preprocess_case(cid, *load_case(info.cases[cid], info), self.plan) for cid in self.train_ids]
        self.val_cases = [preprocess_case(cid, *load_case(info.cases[cid], info), self.plan) for cid in self.val_ids]
        self.cache = CaseCache(train_cases, self.spatial_dims, seed=c.seed)
        samples = self.cache.num_slices if self.spatial_dims == 2 else len(train_cases)
        world = ddp.world_size()
        self.iterations_per_epoch = c.iterations_per_epoch or max(1, math.ceil(samples / (c.batch_size * world)))
        self.total_iterations = c.total_iterations(self.iterations_per_epoch)
        self.val_every = c.val_every or validation_interval(
            [case.image.shape[1:] for case in self.val_cases],
            input_size=c.input_size,
            spatial_dims=self.spatial_dims,
            geometry=c.geometry,
            batch_size=c.batch_size * world,
            iterations_per_epoch=self.iterations_per_epoch,
        )
        # `last` at every k-th validation: at most ~CHECKPOINTS_PER_RUN writes however often the run validates
        per_run = math.ceil(self.total_iterations / CHECKPOINTS_PER_RUN)
        self.save_every = self.val_every * max(1, math.ceil(per_run / self.val_every))
        self.loss_fn = self.build_loss(num_classes)

        has_run = self.run_dir.checkpoint_paths("last")[1].exists()
        if has_run and not self.resume:
            raise ConfigError(
                f"{self.run_dir.path} already holds a run; resume it or choose a new run directory", option="out"
            )
        if self.resume and not has_run:
            raise ConfigError(f"cannot resume: no checkpoint in {self.run_dir.path / 'checkpoints'}", option="out")

        if c.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError(f"fp16 needs CUDA (its gradient scaler); on {self.device.type} use bf16", option="amp")
        if c.amp == "bf16" and self.device.type == "cpu" and self.spatial_dims == 3:
            if not bf16_conv3d_backward_is_reliable("cpu"):
                raise ConfigError(
                    "bf16 on this CPU: oneDNN's bf16 Conv3d weight gradients failed attnseg's self-test (wrong values "
                    "on small maps, docs/mixed_precision.md); use --amp none, or set ONEDNN_MAX_CPU_ISA=AVX2",
                    option="amp",
                )
        self.model.to(self.device)
        if c.channels_last:  # NHWC / NDHWC: faster convolutions on tensor cores and in oneDNN on CPU
            self.model.to(memory_format=_memory_format(self.spatial_dims + 2))
        self.optimizer = self.build_optimizer(self.model.parameters())
        self.scheduler = self.build_scheduler(self.optimizer)
        self.scaler = torch.amp.GradScaler("cuda", enabled=c.amp == "fp16" and self.device.type == "cuda")
        if self.resume:
            self._load_resume_state()

    def _check_resumed_model(self, in_channels: int, num_classes: int) -> None:
        """A resumed run continues with its own model and a dataset of the same channels and classes (its
        checkpoint fits no other network)."""
        build = self.run_dir.read_model()
        if build["name"] != self.cfg.model:
            raise ConfigError(
                f"the run in {self.run_dir.path} trains {build['name']!r}, not {self.cfg.model!r}; "
                "--resume continues a run with its own model (leave --model out)",
                option="model",
            )
        had = (int(build["in_channels"]), int(build["num_classes"]))
        if had != (in_channels, num_classes):
            raise ConfigError(
                f"the run in {self.run_dir.path} was trained with {had[0]} input channel(s) and {had[1]} output(s); "
                f"{self.cfg.data} gives {in_channels} and {num_classes}: --resume needs the run's own dataset",
                option="data",
            )

    def _fold_cases(self, info: DatasetInfo) -> tuple[list[str], list[str]]:
        """Training and validation cases of ``cfg.fold``; test cases must be in neither."""
        c = self.cfg
        splits = load_splits(info, write_if_missing=not self.resume)
        fold = c.fold if not c.fold.isdigit() else f"fold{c.fold}"
        if fold == "all":
            train_ids, val_ids = info.training_cases(), []
        elif fold in splits and not isinstance(splits[fold], dict):
            raise ConfigError(
                f"split {fold!r} of {info.root / 'splits.json'} is a list of cases, not a fold "
                '{"train": [...], "val": [...]}',
                option="fold",
            )
        elif fold not in splits:
            names = [k for k, v in splits.items() if isinstance(v, dict)]
            raise ConfigError(
                f"{c.fold!r} is not in {info.root / 'splits.json'} (available: {names + ['all']})", option="fold"
            )
        else:
            train_ids, val_ids = list(splits[fold].get("train", [])), list(splits[fold].get("val", []))
        test_ids = set(splits.get("test", [])) if isinstance(splits.get("test"), list) else set()
        if isinstance(splits.get(fold), dict) and "test" in splits[fold]:
            test_ids = set(splits[fold]["test"])  # a named split (e.g. ACDC "official") defines its own test set
        overlap = sorted((set(val_ids) | set(train_ids)) & test_ids)
        if overlap:
            raise ConfigError(
                f"{fold!r}: cases {overlap[:5]} are both in train/val and in the test split; "
                "training and checkpoint selection must not see test cases",
                option="fold",
            )
        if not train_ids:
            raise ConfigError(f"{fold!r} has no training cases", option="fold")
        return train_ids, val_ids

    @torch.no_grad()
    def _probe_forward(self, in_channels: int) -> None:
        """One eval-mode forward of a zero input: the model must return logits of the input size.

        The size was validated by the model; an exception here is a bug of the model and propagates as one.
        """
        c = self.cfg
        shape = (1, in_channels, *((self.slab,) if self.slab > 1 else ()), *c.input_size)
        self.model.eval()
        try:
            with batchnorm_values(self.model) as values:
                out = self.model(torch.zeros(shape))
        finally:
            self.model.train()
        single = [name for name, n in values.items() if n * c.batch_size < 2]
        if single:  # train-mode BatchNorm needs two values per channel: torch would fail on the first step
            raise ConfigError(
                f"{c.batch_size}: at input size {' x '.join(map(str, c.input_size))} BatchNorm {single[0]!r} of "
                f"{c.model!r} sees one value per channel; use a batch of 2 or more, or a larger input size",
                option="batch_size",
            )
        expected = (1, self.num_classes, *c.input_size)
        if tuple(out.shape) != expected:
            raise RuntimeError(
                f"model {c.model!r} returned {tuple(out.shape)} for input {list(shape)}; expected "
                f"logits of shape {expected}"
            )

    # -------------------------------------------------------------------------------------------- checkpoints
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

    def _snapshot(self) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, str]]:
        """Copies of the weights and training state as they are now (for a checkpoint written later)."""
        weights = {k: v.detach().to("cpu", copy=True) for k, v in unwrap(self.model).state_dict().items()}
        return weights, copy.deepcopy(self._state()), {"model": self.cfg.model, "iteration": str(self.iteration)}

    def save(self, name: str) -> None:
        """Write checkpoint ``name`` (rank 0 only); ``best`` writes the snapshot of the best validation."""
        if not ddp.is_main():
            return
        if name == "best" and self._pending_best is not None:
            weights, state, meta = self._pending_best
            self._pending_best = None
        else:
            weights, state, meta = self._snapshot()
        self.run_dir.save_checkpoint(name, weights, state, meta)

    def _load_resume_state(self) -> None:
        """Continue from ``last``; from ``best`` when ``last`` is broken (a kill mid-write, a bad disk)."""
        name, problem = "last", self.run_dir.checkpoint_problem("last")
        if problem is not None:
            if not self.run_dir.has_checkpoint("best") or self.run_dir.checkpoint_problem("best") is not None:
                raise RunError(f"cannot resume: {problem}; no other complete checkpoint to continue from")
            name = "best"
            if ddp.is_main():
                sys.stderr.write(f"warning: {problem}; resuming from the 'best' checkpoint instead\n")
        state = self.run_dir.load_state(name)
        self._check_resumed_world_size(state)
        self.run_dir.load_weights(self.model, name)
        self.iteration = int(state["iteration"])
        if self.iteration > self.total_iterations:
            raise ConfigError(
                f"{self.total_iterations}: the run has already trained {self.iteration} iterations; resume it with "
                "more (or leave --iterations / --epochs out)",
                option="iterations",
            )
        self.best_metric = float(state["best_metric"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.history = self.run_dir.read_log(up_to_iteration=self.iteration)

    def _check_resumed_world_size(self, state: dict[str, Any]) -> None:
        """A resumed run continues with the number of processes it was trained with: the batch size is per process,
        so another number would change the global batch (and the samples each step draws) midway."""
        had, now = state.get("world_size"), ddp.world_size()
        if had is None or int(had) == now:  # checkpoints written before world_size was recorded: not checked
            return
        had, batch = int(had), self.cfg.batch_size
        launch = (
            "without torchrun" if had == 1 else f"with {had} processes (torchrun: nodes x --nproc_per_node = {had})"
        )
        raise ConfigError(
            f"the run in {self.run_dir.path} was trained by {had} process(es) and this launch has {now}: the global "
            f"batch (batch size x processes) would change from {batch} x {had} = {batch * had} to {batch} x {now} = "
            f"{batch * now}; resume it {launch}"
        )

    # ------------------------------------------------------------------------------------------------------ hooks
    def on_train_start(self) -> None:
        """Write the run files, wrap the model (DDP, compile), open TensorBoard and the progress bar."""
        c = self.cfg
        if ddp.is_main():
            build = dict(getattr(self.model, "attnseg_build", {}))
            build.update(
                slab_size=self.slab,
                spatial_dims=self.spatial_dims,
                dataset=str(self.info.root),
                label_names={str(v): k for k, v in self.info.labels.items()},
            )
            self.run_dir.write_run_files(
                config=config_to_dict(c),
                plan=self.plan,
                build=build,
                split={"fold": c.fold, "train": self.train_ids, "val": self.val_ids},
            )
        if ddp.world_size() > 1:
            # only a model that declares parameters its forward never uses pays for the unused-parameter search
            self.model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=not ddp_safe(self.model),
            )
        if c.compile:
            self.model = torch.compile(self.model)
        if ddp.is_main():
            from torch.utils.tensorboard import SummaryWriter

            # events from a killed attempt past this start (its later steps, or a whole unfinished run) are hidden
            self._writer = SummaryWriter(str(self.run_dir.tensorboard_dir), purge_step=self.iteration + 1)
        self.model.train()
        self._progress_bar = self._open_progress()
        self._t0 = time.perf_counter()

    def train_step(self, image: torch.Tensor, label: torch.Tensor) -> float:
        """One optimiser step; returns the loss."""
        c = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        if c.channels_last:
            image = image.contiguous(memory_format=_memory_format(image.dim()))
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

    def on_step_end(self, loss: float) -> dict[str, Any]:
        """Count the step and advance the progress bar; returns the loss/lr log entries when a log step is due."""
        self.iteration += 1
        self._running.append(loss)
        if self._progress_bar is not None:
            bar, task, prefix = self._progress_bar
            bar.update(task, advance=1, description=f"{prefix}loss {np.mean(self._running[-20:]):.4f}")
        if self.iteration % self.cfg.log_every and self.iteration != self.total_iterations:
            return {}
        row = {
            "loss": float(np.mean(self._running)),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - self._t0, 2),
        }
        self._running = []
        return row

    def on_validation(self) -> dict[str, Any]:
        """Validate, keep the ``best`` checkpoint; returns the log entries."""
        self.last_validation = self.validate()
        best = self.last_validation["mean"] > self.best_metric
        if self.cfg.save_val_predictions:
            self.run_dir.settle_validation([c.case_id for c in self._my_val_cases()], best=best)
        if best:  # held in memory, written with the next `last` (a crash before it resumes from that `last`)
            self.best_metric = self.last_validation["mean"]
            self._pending_best = self._snapshot() if ddp.is_main() else None
        return {f"val_dice/{k}": v for k, v in self.last_validation.items()}

    def on_checkpoint(self, name: str) -> None:
        self.save(name)

    def on_train_end(self) -> dict[str, Any]:
        """Close the progress bar and TensorBoard; write ``best`` when there is no validation; the summary."""
        self._close()
        if not self.val_cases:
            self.save("best")  # no validation split: "best" is the final model (recorded in the summary)
        summary = {
            "iterations": self.iteration,
            "iterations_per_epoch": self.iterations_per_epoch,
            "epochs": TrainConfig.derived_epochs(self.total_iterations, self.iterations_per_epoch),
            "best_val_dice": self.best_metric if self.val_cases else None,
            "final_val_dice": self.last_validation or None,
            "selected_on": "val" if self.val_cases else "none (last)",
        }
        if ddp.is_main():
            self.run_dir.write_summary(summary)
        return summary

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Per-class Dice on the validation cases (sharded over ranks, gathered), on the preprocessed grid."""
        model = unwrap(self.model)
        ddp.broadcast_buffers(model)  # every rank validates the model rank 0 saves (BatchNorm statistics)
        labels = [v for v in self.info.label_values if v != 0]
        results = []
        for case in self._my_val_cases():
            probs = predict_probabilities(
                model,
                case.image,
                spatial_dims=self.spatial_dims,
                input_size=self.plan.input_size,
                geometry=self.plan.geometry,
                slab=self.slab,
                device=self.device,
            )
            results.append(dice_per_class(probs.argmax(0), case.label, labels))
            if self.cfg.save_val_predictions:  # on the case's own grid, as `attnseg predict` writes it
                on_grid = labels_from_probabilities(restore_geometry(probs, case.geometry, is_label=False))
                self.run_dir.stage_validation(case.case_id, on_grid, self.iteration)
        model.train()
        gathered = [r for part in ddp.gather_objects(results) for r in part]
        names = self.info.label_names
        per_class = {names[k]: float(np.mean([r[k] for r in gathered])) for k in labels}
        per_class["mean"] = float(np.mean(list(per_class.values())))
        return per_class

    def _my_val_cases(self) -> list[Any]:
        """This process's share of the validation cases (all of them without DDP)."""
        return self.val_cases[ddp.rank() :: ddp.world_size()]

    # -------------------------------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Train to ``total_iterations``; returns a summary (final and best validation Dice)."""
        ddp.init_distributed(self.device)
        if self.model is None:
            self._seed_everything()
            self.setup()
        self.on_train_start()
        try:
            for image, label in self._loader():
                loss = self.train_step(
                    image.to(self.device, non_blocking=True), label.to(self.device, non_blocking=True)
                )
                row = self.on_step_end(loss)
                due = self._validation_due()
                if due and self.val_cases:
                    row.update(self.on_validation())
                if row:
                    self.log({"iteration": self.iteration, **row})
                if due and (self.iteration % self.save_every == 0 or self.iteration == self.total_iterations):
                    if self._pending_best is not None:
                        self.on_checkpoint("best")
                    self.on_checkpoint("last")
        except BaseException:
            self._close()
            raise
        return self.on_train_end()

    def _validation_due(self) -> bool:
        """After the final step and every ``val_every`` steps before it; under the default schedule not within
        ``val_every`` steps of the end, so that the final validation keeps the schedule's cost bound too."""
        step, total = self.iteration, self.total_iterations
        if step == total:
            return True
        return step % self.val_every == 0 and (self.cfg.val_every > 0 or total - step >= self.val_every)

    def log(self, row: dict[str, Any]) -> None:
        """Add a row to the history, ``log.csv`` and TensorBoard (rank 0)."""
        self.history.append(row)
        if not ddp.is_main():
            return
        fields = RunDir.log_fields(self.history)
        self.run_dir.write_log(self.history, append=fields == self._log_fields)
        self._log_fields = fields
        if self._writer is not None:
            for k, v in row.items():
                if k != "iteration" and isinstance(v, (int, float)):
                    self._writer.add_scalar(k, v, row["iteration"])

    def _loader(self) -> DataLoader:
        c, world = self.cfg, ddp.world_size()
        dataset = SliceSampler(
            self.cache,
            self.plan,
            num_samples=self.total_iterations * c.batch_size * world,
            seed=c.seed,
            foreground_prob=c.foreground_prob,
            augment=c.augment,
            slab_size=self.slab,
        )
        sampler = _RankSampler(self.iteration, self.total_iterations, c.batch_size, ddp.rank(), world)
        workers = data_workers(world, self.device.type) if c.num_workers is None else c.num_workers
        return DataLoader(  # one pass over the whole run: the workers live as long as training
            dataset,
            batch_size=c.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None,
        )

    def _open_progress(self):
        if not (self.progress and ddp.is_main()):
            return None
        if not isinstance(self.progress, bool):  # a display that someone else started and stops
            task = self.progress.add_task("  train", total=self.total_iterations, completed=self.iteration)
            return self.progress, task, "  train "
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        task = bar.add_task("", total=self.total_iterations, completed=self.iteration)
        bar.start()
        return bar, task, ""

    def _close(self) -> None:
        if self._progress_bar is not None:
            bar, task, _ = self._progress_bar
            if bar is self.progress:
                bar.remove_task(task)
            else:
                bar.stop()
            self._progress_bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _seed_everything(self) -> None:
        c = self.cfg
        random.seed(c.seed)
        np.random.seed(c.seed % 2**32)
        torch.manual_seed(c.seed + ddp.rank())
        if c.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool | Any = True) -> dict[str, Any]:
    """Validate, then train with the trainer the config names; raises ``ConfigError``/``DatasetError`` before
    writing anything on bad input."""
    trainer = get_trainer(cfg.trainer)(cfg, resume=resume, progress=progress)
    ddp.init_distributed(trainer.device)
    trainer._seed_everything()  # model init depends only on the seed; resume then restores the saved RNG
    trainer.setup()
    return trainer.run()
