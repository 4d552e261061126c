"""The run directory: the one module that knows its file names, reads and writes them.

``attnseg train --out RUN`` creates::

    RUN/config.yaml                 the resolved recipe (``attnseg train --config RUN/config.yaml`` reproduces the run)
    RUN/plan.json                   the preprocessing plan (:class:`attnseg.data.preprocess.Plan`)
    RUN/model.json                  how to rebuild the network through the registry (name, channels, kwargs, labels)
    RUN/split.json                  the training and validation cases of the fold
    RUN/log.csv                     one row per logged iteration
    RUN/train_summary.json          final and best validation Dice
    RUN/tensorboard/                TensorBoard events
    RUN/checkpoints/NAME.safetensors  weights (``best`` on validation, ``last``), unwrapped from DDP / compile
    RUN/checkpoints/NAME_state.pt     training state: iteration, optimiser, scheduler, grad scaler, RNG, world size;
                                      loadable with ``torch.load(weights_only=True)``
    RUN/validation/CASE.npz         with ``--save-val-predictions``: the ``best`` checkpoint's label map of each
                                    validation case on the case's own grid (``labels``) and the ``iteration`` that made
                                    it, as nnU-Net keeps its fold's validation predictions

Training, inference, export and evaluation go through :class:`RunDir`; no other module spells these names. The
names above are reserved: :func:`refuse_reserved` stops any other command (export, evaluate, bench) from writing over
them, while writing other files into a run directory stays allowed. Every file is written atomically
(:func:`attnseg.io.atomic_write`).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from attnseg.errors import AttnsegError
from attnseg.io import atomic_paths, atomic_write, write_json, write_text
from attnseg.kinds import describe, fits

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from attnseg.data.preprocess import Plan

__all__ = ["RunDir", "RunError", "unwrap", "refuse_reserved", "RESERVED_FILES", "RESERVED_DIRS", "CHECKPOINTS"]

CONFIG, PLAN, MODEL, SPLIT, LOG, SUMMARY = (
    "config.yaml",
    "plan.json",
    "model.json",
    "split.json",
    "log.csv",
    ("train_summary.json"),
)
TENSORBOARD, CHECKPOINT_DIR, VALIDATION = "tensorboard", "checkpoints", "validation"
PENDING = ".pending"  # validation/.pending/: the latest validation's label maps, until it proves best or not
RESERVED_FILES = (CONFIG, PLAN, MODEL, SPLIT, LOG, SUMMARY)
RESERVED_DIRS = (TENSORBOARD, CHECKPOINT_DIR, VALIDATION)
CHECKPOINTS = ("best", "last")
# model.json: the kind of each field the trainer writes (the registry then checks the model's own options)
_MODEL_FIELDS: dict[str, Any] = {
    "name": str,
    "in_channels": int,
    "num_classes": int,
    "kwargs": Mapping[str, Any],
    "slab_size": int,
    "spatial_dims": Literal[2, 3],
    "dataset": str,
    "label_names": Mapping[str, str],
}


class RunError(AttnsegError, ValueError):
    """A run directory is incomplete or inconsistent, or a command would overwrite one of its files."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / ``torch.compile`` wrappers (what checkpoints store)."""
    from torch import nn

    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _looks_like_run(folder: Path) -> bool:
    return (folder / MODEL).is_file() and (folder / PLAN).is_file()


def refuse_reserved(path: str | os.PathLike, option: str) -> None:
    """Raise :class:`RunError` if writing ``path`` would replace a file of a run directory.

    Args:
        path: the file a command is about to write.
        option: the command-line option that named it, for the message.
    """
    path = Path(path).absolute()
    for folder in (path.parent, path.parent.parent):
        if not _looks_like_run(folder):
            continue
        inside = path.relative_to(folder).parts
        if (len(inside) == 1 and inside[0] in RESERVED_FILES) or inside[0] in RESERVED_DIRS:
            raise RunError(
                f"{option} {path}: would overwrite {'/'.join(inside)} of the run directory {folder}; "
                f"choose another name (run files: {', '.join(RESERVED_FILES + RESERVED_DIRS)})"
            )


class RunDir:
    """A training run's directory.

    Args:
        path: the folder (created by :meth:`create`, read by the other methods).

    Example:
        >>> run = RunDir("runs/malunet_isic18")
        >>> build = run.read_model()            # {"name": "malunet", "in_channels": 3, ...}
        >>> run.load_weights(model, "best")
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------------ file names
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD

    def checkpoint_paths(self, name: str) -> tuple[Path, Path]:
        """``(weights, state)`` paths of checkpoint ``name`` (``best`` or ``last``)."""
        d = self.path / CHECKPOINT_DIR
        return d / f"{name}.safetensors", d / f"{name}_state.pt"

    def has_checkpoint(self, name: str) -> bool:
        return all(p.exists() for p in self.checkpoint_paths(name))

    # ----------------------------------------------------------------------------------------------------- write
    def write_run_files(
        self, *, config: Mapping[str, Any], plan: Plan, build: Mapping[str, Any], split: Mapping[str, Any]
    ) -> None:
        """Write ``config.yaml``, ``plan.json``, ``model.json`` and ``split.json`` (before the first step)."""
        import yaml

        write_text(self.path / CONFIG, yaml.safe_dump(dict(config), sort_keys=False))
        write_text(self.path / PLAN, plan.to_json())
        write_json(self.path / MODEL, dict(build))
        write_json(self.path / SPLIT, dict(split))

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json(self.path / SUMMARY, dict(summary))

    def save_checkpoint(
        self,
        name: str,
        model: nn.Module | Mapping[str, Any],
        state: Mapping[str, Any],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Write the weights (a module's, unwrapped, or a state dict) and the training state of checkpoint ``name``.

        The state records the weights file's SHA-256 (``weights_sha256``): :meth:`checkpoint_problem` finds a
        weights file that is truncated, corrupt or from another save than its state.
        """
        import hashlib

        import torch
        from safetensors.torch import save
        from torch import nn

        weights_path, state_path = self.checkpoint_paths(name)
        tensors = unwrap(model).state_dict() if isinstance(model, nn.Module) else model
        weights = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        data = save(weights, metadata=dict(metadata or {}))
        state = {**state, "weights_sha256": hashlib.sha256(data).hexdigest()}
        with atomic_paths(weights_path, state_path) as (weights_tmp, state_tmp):  # replaced together
            weights_tmp.write_bytes(data)
            torch.save(state, state_tmp)

    def write_log(self, history: Sequence[Mapping[str, Any]], *, append: bool) -> None:
        """``log.csv`` from ``history`` (rows of scalars): append its last row, or rewrite the whole file.

        Appending is the common case (same columns as the file); a new column (the first validation) or a resumed
        run rewrites the file, atomically.
        """
        fields = self.log_fields(history)
        if append and self.log_path.exists():
            with open(self.log_path, "a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=fields).writerow(history[-1])
            return

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
                writer.writerows(history)

        atomic_write(self.log_path, write)

    @staticmethod
    def log_fields(history: Sequence[Mapping[str, Any]]) -> list[str]:
        """Columns of ``log.csv``: ``iteration`` first, then the others sorted."""
        return sorted({k for row in history for k in row}, key=lambda k: (k != "iteration", k))

    def stage_validation(self, case: str, labels: np.ndarray, iteration: int) -> None:
        """Keep the label map the model of ``iteration`` predicts for validation case ``case`` (on the case's grid)
        until :meth:`settle_validation` knows whether that model is the new ``best``."""
        import numpy as np

        path = self.path / VALIDATION / PENDING / f"{case}.npz"
        atomic_write(path, lambda tmp: np.savez_compressed(tmp, labels=labels, iteration=np.int64(iteration)))

    def settle_validation(self, cases: Sequence[str], *, best: bool) -> None:
        """Make the staged label maps of ``cases`` the ``best`` checkpoint's validation predictions, or drop them.

        Each file carries the iteration that made it, and :meth:`validation_prediction` accepts a file only when
        that iteration is the ``best`` checkpoint's, so a process killed anywhere between the two steps never
        leaves a prediction that a later reader would take for the checkpoint's.
        """
        pending = self.path / VALIDATION / PENDING
        for case in cases:
            staged = pending / f"{case}.npz"
            if best and staged.exists():
                os.replace(staged, self.path / VALIDATION / f"{case}.npz")
            else:
                staged.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------------------ read
    def checkpoint_iteration(self, name: str) -> int:
        """The training iteration checkpoint ``name`` was written at (from its weights' metadata, no tensor read)."""
        from safetensors import safe_open

        path = self.require_checkpoint(name)
        with safe_open(str(path), framework="pt") as fh:
            return int((fh.metadata() or {}).get("iteration", -1))

    def validation_prediction(self, case: str, checkpoint: str = "best") -> np.ndarray | None:
        """The label map checkpoint ``checkpoint`` predicted for validation case ``case`` during training, or
        ``None`` when the run did not keep one (no ``--save-val-predictions``) or kept one of another iteration."""
        import numpy as np

        path = self.path / VALIDATION / f"{case}.npz"
        if not path.is_file():
            return None
        with np.load(path) as doc:
            if int(doc["iteration"]) != self.checkpoint_iteration(checkpoint):
                return None
            return doc["labels"]

    def read_model(self) -> dict[str, Any]:
        """``model.json``: ``name``, ``in_channels``, ``num_classes``, ``kwargs``, ``slab_size``, ``spatial_dims``,
        ``label_names``; raises :class:`RunError` naming the file when it is missing or broken."""
        doc = self._read_json(MODEL)
        missing = [k for k in ("name", "in_channels", "num_classes") if k not in doc]
        if missing:
            raise RunError(
                f"{self.path / MODEL}: missing {', '.join(missing)}; it does not describe a model (was it overwritten?)"
            )
        for key, hint in _MODEL_FIELDS.items():
            if key in doc and not fits(doc[key], hint):
                raise RunError(f"{self.path / MODEL}: {key!r} must be {describe(hint)}, got {doc[key]!r}")
        return doc

    def read_plan(self) -> Plan:
        from attnseg.data.preprocess import Plan

        self._require(PLAN)
        try:
            return Plan.from_json((self.path / PLAN).read_text(encoding="utf-8"))
        except (ValueError, TypeError, KeyError) as exc:  # UnicodeDecodeError is a ValueError
            raise RunError(f"{self.path / PLAN}: not a preprocessing plan ({exc})") from None

    def read_log(self, up_to_iteration: int | None = None) -> list[dict[str, Any]]:
        """Rows of ``log.csv`` (strings, as csv gives them), optionally only up to an iteration (resume)."""
        if not self.log_path.exists():
            return []
        with open(self.log_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return [r for r in rows if up_to_iteration is None or int(r["iteration"]) <= up_to_iteration]

    def load_weights(self, model: nn.Module, name: str) -> nn.Module:
        """Load checkpoint ``name``'s weights into ``model`` (strict).

        Raises:
            RunError: the checkpoint is missing, unreadable (corrupt, truncated) or does not fit ``model``.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load

        path = self.require_checkpoint(name)
        try:
            weights = load(path.read_bytes())
        except SafetensorError as exc:
            raise RunError(
                f"{path}: checkpoint {name!r} cannot be read, the file is corrupt or truncated ({exc})"
            ) from None
        try:
            unwrap(model).load_state_dict(weights, strict=True)
        except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
            detail = " ".join(str(exc).split())
            raise RunError(
                f"{path}: checkpoint {name!r} does not fit the network model.json describes ({detail[:300]})"
            ) from None
        return model

    def load_state(self, name: str) -> dict[str, Any]:
        """The training state of checkpoint ``name``; :class:`RunError` when it is missing or unreadable."""
        import pickle

        import torch

        path = self.checkpoint_paths(name)[1]
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise RunError(f"{path}: missing; checkpoint {name!r} has no training state") from None
        except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
            raise RunError(
                f"{path}: training state of {name!r} cannot be read, the file is corrupt or truncated ({exc})"
            ) from None

    def checkpoint_problem(self, name: str) -> str | None:
        """What is wrong with checkpoint ``name`` (missing or unreadable files, weights that are not the ones its
        state recorded), or ``None`` when it is complete."""
        import hashlib

        weights_path, _ = self.checkpoint_paths(name)
        if not weights_path.is_file():
            return f"{weights_path}: missing"
        try:
            state = self.load_state(name)
        except RunError as exc:
            return str(exc)
        recorded = state.get("weights_sha256")
        if recorded is not None and hashlib.sha256(weights_path.read_bytes()).hexdigest() != recorded:
            return f"{weights_path}: corrupt or truncated (its SHA-256 is not the one its training state recorded)"
        return None

    def require_checkpoint(self, name: str) -> Path:
        """The weights file of checkpoint ``name``, or a :class:`RunError` saying what to do."""
        self._require(MODEL)
        weights = self.checkpoint_paths(name)[0]
        if not weights.exists():
            other = "last" if name == "best" else "best"
            if self.checkpoint_paths(other)[0].exists():
                hint = f" (this run has {other!r}: use --checkpoint {other})"
            else:
                hint = " (the run has no checkpoint yet: was training stopped before its first save?)"
            raise RunError(f"{weights}: checkpoint {name!r} not found{hint}")
        return weights

    def _require(self, name: str) -> Path:
        path = self.path / name
        if not path.is_file():
            raise RunError(f"{path}: missing; is {self.path} a run directory written by `attnseg train`?")
        return path

    def _read_json(self, name: str) -> dict[str, Any]:
        path = self._require(name)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise RunError(f"{path}: expected a JSON object")
        return doc
