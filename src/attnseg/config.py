"""Typed run configuration and YAML recipes.

A recipe is a YAML file with the fields of :class:`TrainConfig` (unknown keys are errors naming the file and key);
command-line flags override recipe values; the resolved config is saved in the run directory (``config.yaml``) so a
run can be reproduced with ``attnseg train --config RUN/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from attnseg.errors import AttnsegError
from attnseg.kinds import fits, without_none

__all__ = ["TrainConfig", "ConfigError", "load_recipe", "merge_config", "config_to_dict", "resolve_device", "LOSSES"]


class ConfigError(AttnsegError, ValueError):
    """Invalid configuration; the message names the option or file.

    Args:
        problem: what is wrong, in library terms.
        option: the :class:`TrainConfig` field it is about. The message names it as the field (``input_size: ...``,
            the recipe key); the command line names it as its flag (``--input-size: ...``) through :meth:`render`.
    """

    def __init__(self, problem: str, *, option: str | None = None) -> None:
        self.problem, self.option = problem, option
        super().__init__(f"{option}: {problem}" if option else problem)

    def render(self, name: Callable[[str], str]) -> str:
        """The message with the option spelled by ``name`` (e.g. field -> command-line flag)."""
        return f"{name(self.option)}: {self.problem}" if self.option else self.problem


Optimizer = Literal["sgd", "adam", "adamw"]
Scheduler = Literal["poly", "cosine", "constant"]
Loss = Literal["dice_ce", "bce_dice", "ce_dice_0.4_0.6", "boundary_dou", "ce", "bce"]
LOSSES: tuple[str, ...] = ("dice_ce", "bce_dice", "ce_dice_0.4_0.6", "boundary_dou", "ce", "bce")
Geometry = Literal["spacing", "resize"]


@dataclass
class AugmentConfig:
    """MONAI dictionary-transform augmentation; probabilities per sample (nnU-Net-like defaults)."""

    flip: float = 0.5  # each in-plane axis
    rot90: float = 0.0
    rotate: float = 0.2
    rotate_degrees: float = 15.0
    scale: float = 0.2
    scale_range: tuple[float, float] = (0.85, 1.25)
    intensity: float = 0.15  # probability of a brightness scale and of a shift
    intensity_scale: float = 0.25  # x * (1 + U(-s, s))
    intensity_shift: float = 0.1  # x + U(-o, o), in normalised units (CT: ~foreground std)
    noise: float = 0.1
    # probability of one random offset per labelled structure (each organ brightens or darkens on its own, as under
    # contrast enhancement; domain randomisation in the spirit of SynthSeg, Billot et al., Med. Image Anal. 2023)
    label_shift: float = 0.0
    label_shift_range: tuple[float, float] = (-1.0, 1.0)  # offsets in normalised units (CT: foreground std)


@dataclass
class TrainConfig:
    """Everything a training run needs. Field comments give the CLI flag where one exists."""

    model: str = "unet"  # --model
    trainer: str = "default"  # a Trainer subclass registered with register_trainer (nnU-Net's -tr)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = ""  # --data: dataset folder (nnU-Net raw layout)
    out: str = ""  # --out: run directory
    fold: str = "fold0"  # --fold: a split name in splits.json ("0" means "fold0"; "all": train on every case)
    iterations: int | None = None  # --iterations: total optimiser steps
    epochs: int | None = None  # --epochs: an epoch is iterations_per_epoch steps
    iterations_per_epoch: int | None = None  # default: one pass over the training samples (images or slices)
    batch_size: int = 8  # --batch-size (per process under DDP)
    input_size: list[int] = field(default_factory=lambda: [224, 224])  # --input-size
    lr: float = 1e-2  # --lr
    optimizer: Optimizer = "sgd"  # --optimizer
    momentum: float = 0.9
    weight_decay: float = 1e-4
    scheduler: Scheduler = "poly"  # --scheduler
    poly_power: float = 0.9
    min_lr: float = 0.0  # cosine floor
    warmup_iterations: int = 0
    loss: Loss = "dice_ce"  # --loss
    val_every: int = 0  # --val-every (iterations; 0 = per epoch, bounded to ~5 % of training: validation_interval)
    save_val_predictions: bool = False  # --save-val-predictions: RUN/validation/<case>.npz of the best checkpoint
    seed: int = 42  # --seed
    device: str = "auto"  # --device: auto | cpu | cuda | cuda:N | mps
    amp: Literal["none", "bf16", "fp16"] = "none"  # --amp: bf16 autocast on CUDA and CPU; fp16 (scaled) on CUDA
    grad_clip: float = 12.0  # max gradient norm (nnU-Net); 0 disables
    num_workers: int | None = None  # --num-workers; default: 0 on CPU, else CPUs per process - 1, <= 4 (data_workers)
    geometry: Geometry = "spacing"  # in-plane: "spacing" (reorient + resample + crop) or "resize" (papers' protocol)
    target_spacing: list[float] | None = None  # in-plane mm for "spacing"; default: dataset median
    foreground_prob: float = 0.33  # share of samples centred on a foreground voxel
    ct_window: tuple[float, float] = (0.5, 99.5)  # percentiles of foreground HU used to clip CT
    ct_clip_hu: tuple[float, float] | None = None  # fixed HU window instead (e.g. -125 275 as TransUNet's Synapse)
    slab_size: int | None = None  # adjacent slices per sample (SALSTM/LSTMSA); default from the model
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    channels_last: bool = False  # --channels-last
    compile: bool = False  # --compile
    deterministic: bool = False
    log_every: int = 10
    notes: str = ""

    def validate(self) -> None:
        if self.iterations is not None and self.epochs is not None:
            raise ConfigError("give either iterations or epochs, not both", option="epochs")
        for name in ("iterations", "epochs", "iterations_per_epoch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"must be >= 1, got {value}", option=name)
        for name in ("batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", option=name)
        for name in ("num_workers", "val_every", "warmup_iterations"):
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", option=name)
        for f in dataclasses.fields(self):  # nan / inf in any number: --lr nan would train on nan silently
            value = getattr(self, f.name)
            numbers = value if isinstance(value, (list, tuple)) else [value]
            if any(_is_number(v) and not math.isfinite(v) for v in numbers):
                raise ConfigError(f"must be finite, got {value}", option=f.name)
        if self.lr <= 0:
            raise ConfigError(f"must be > 0, got {self.lr}", option="lr")
        if not 0 <= self.seed < 2**32:  # numpy's seeds
            raise ConfigError(f"must be in 0 .. 2**32 - 1, got {self.seed}", option="seed")
        for name in ("weight_decay", "min_lr", "grad_clip", "momentum", "poly_power"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", option=name)
        if self.target_spacing is not None and min(self.target_spacing, default=1) <= 0:
            raise ConfigError(f"must be > 0, got {self.target_spacing}", option="target_spacing")
        a = self.augment
        pairs = [
            ("ct_window", self.ct_window, 0, 100, True),
            ("ct_clip_hu", self.ct_clip_hu, -math.inf, math.inf, True),
        ]
        pairs += [("augment.scale_range", a.scale_range, 0, math.inf, False)]
        pairs += [("augment.label_shift_range", a.label_shift_range, -math.inf, math.inf, False)]
        for name, pair, lowest, highest, strict in pairs:  # an inverted CT window clips every input to one value
            if pair is None:
                continue
            ordered = len(pair) == 2 and (pair[0] < pair[1] if strict else pair[0] <= pair[1])
            if not ordered or not lowest <= pair[0] <= pair[1] <= highest:
                bounds = "" if math.isinf(highest) else f" within {lowest:g} .. {highest:g}"
                raise ConfigError(
                    f"needs two numbers low {'<' if strict else '<='} high{bounds}, got {list(pair)}", option=name
                )
        for name in ("flip", "rot90", "rotate", "scale", "intensity", "noise", "label_shift"):
            if not 0 <= getattr(a, name) <= 1:
                raise ConfigError(f"a probability must be in [0, 1], got {getattr(a, name)}", option=f"augment.{name}")
        if len(self.input_size) not in (2, 3) or min(self.input_size) < 1:
            raise ConfigError(f"needs 2 (H W) or 3 (D H W) positive sizes, got {self.input_size}", option="input_size")
        if not 0 <= self.foreground_prob <= 1:
            raise ConfigError(f"must be in [0, 1], got {self.foreground_prob}", option="foreground_prob")
        if self.slab_size is not None and (self.slab_size < 1 or self.slab_size % 2 == 0):
            raise ConfigError(f"must be odd and >= 1, got {self.slab_size}", option="slab_size")
        for choice, allowed in (
            ("optimizer", ("sgd", "adam", "adamw")),
            ("scheduler", ("poly", "cosine", "constant")),
            ("loss", LOSSES),
            ("geometry", ("spacing", "resize")),
            ("amp", ("none", "bf16", "fp16")),
        ):
            if getattr(self, choice) not in allowed:
                raise ConfigError(f"must be one of {', '.join(allowed)}, got {getattr(self, choice)!r}", option=choice)

    def total_iterations(self, iterations_per_epoch: int) -> int:
        """Optimiser steps for the run (``epochs * iterations_per_epoch`` when epochs are given)."""
        if self.iterations is not None:
            return self.iterations
        return (self.epochs or 1) * iterations_per_epoch

    @staticmethod
    def derived_epochs(iterations: int, iterations_per_epoch: int) -> int:
        return math.ceil(iterations / iterations_per_epoch)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    for section in (d, d["augment"]):  # YAML has lists, not tuples
        section.update({k: list(v) for k, v in section.items() if isinstance(v, tuple)})
    return d


def _check_keys(cls: type, values: dict[str, Any], source: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {', '.join(sorted(names))}")


_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_types(cls: type, values: dict[str, Any], source: str, prefix: str = "") -> None:
    """Each value of the kind its field is annotated with (a recipe's ``iterations: abc`` is a user error, not a
    crash); ``None`` is left to ``validate``, and so are the values of ``Literal`` fields (only their kind, text, is
    checked here)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = values.get(f.name)
        if value is None or f.name in ("fold", "augment"):  # fold: names and numbers; augment: checked on its own
            continue
        hint = without_none(hints[f.name])
        origin = typing.get_origin(hint)
        if origin is Literal:
            hint = str
        if origin in (list, tuple):
            ok, what = isinstance(value, (list, tuple)) and all(map(_is_number, value)), "a list of numbers"
        elif dict in (hint, origin):
            ok, what = isinstance(value, dict), "a mapping"
        elif hint in _WORDS:
            ok, what = fits(value, hint), _WORDS[hint]
        else:
            continue
        if not ok:
            raise ConfigError(f"must be {what}, got {value!r} (in {source})", option=prefix + f.name)


def merge_config(base: TrainConfig, overrides: dict[str, Any], source: str = "overrides") -> TrainConfig:
    """A copy of ``base`` with ``overrides`` applied (``augment`` merged field by field)."""
    _check_keys(TrainConfig, overrides, source)
    _check_types(TrainConfig, overrides, source)
    values = dict(overrides)
    if "augment" in values:
        aug = values.pop("augment") or {}
        if not isinstance(aug, dict):
            raise ConfigError(f"must be a mapping, got {aug!r} (in {source})", option="augment")
        _check_keys(AugmentConfig, aug, f"{source} (augment)")
        _check_types(AugmentConfig, aug, source, prefix="augment.")
        for f in dataclasses.fields(AugmentConfig):  # YAML lists back to the tuple options (config_to_dict)
            if isinstance(f.default, tuple) and aug.get(f.name) is not None:
                aug[f.name] = tuple(aug[f.name])
        values["augment"] = dataclasses.replace(base.augment, **aug)
    for key in ("ct_window", "ct_clip_hu"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    if "fold" in values:
        values["fold"] = str(values["fold"])
    return dataclasses.replace(base, **values)


def load_run_config(path: str | Path) -> TrainConfig:
    """A run's resolved ``config.yaml`` (written whole, every field): a file missing fields was damaged (a kill while
    it was written, a truncation), and training on with defaults would overwrite the run's real settings."""
    values = _read_recipe(Path(path))
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in values]
    if missing:
        raise ConfigError(
            f"{path}: incomplete run config (missing {', '.join(missing)}); restore it, or pass the run's recipe "
            "with --config"
        )
    return merge_config(TrainConfig(), values, source=str(path))


def load_recipe(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Load a YAML recipe onto ``base`` (default config if None)."""
    path = Path(path)
    return merge_config(base or TrainConfig(), _read_recipe(path), source=str(path))


def _read_recipe(path: Path) -> dict[str, Any]:
    """The option: value mapping of a YAML recipe (``_base`` dropped); ConfigError naming the file otherwise."""
    import yaml

    if not path.exists():
        raise ConfigError(f"{path}: recipe not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (not UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of option: value")
    values.pop("_base", None)
    return values


def resolve_device(name: str):
    """``auto`` (CUDA when available, else CPU), or a torch device name checked against this machine."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"{name!r} is not a valid torch device (auto, cpu, cuda, cuda:N, mps)", option="device"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{name}: CUDA is not available on this machine", option="device")
    if device.type not in ("cpu", "cuda"):
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError):
            raise ConfigError(
                f"{name}: this machine or PyTorch build has no {device.type} device", option="device"
            ) from None
    return device
