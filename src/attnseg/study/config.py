"""The study file: which models to compare on which dataset, folds and seeds, with which training settings.

A study is a YAML mapping (see ``docs/architecture.md`` for the package levels; this is a level-2 workflow)::

    name: nuclei-comparison
    dataset: path/to/Dataset900_Nuclei    # relative paths resolve against the study file's folder
    folds: [0, 1]                          # as --fold takes them, or "all5" (fold0..fold4)
    seeds: [0]
    baseline: unet                         # a model entry's label
    protocol: strict                       # an attnseg evaluate protocol
    train: {iterations: 2000, batch_size: 8, input_size: [256, 256]}
    models:
      - name: unet
      - {name: mdsa_unet, label: mdsa_auto, model_kwargs: {n_win: auto}, train: {lr: 0.005}}
      - {name: msa2net, recipe: recipes/msa2net/synapse.yaml}

Every problem raises :class:`StudyError` with one line naming the key (``models[2].lr``, ``folds``, ...).
Each entry resolves to a full :class:`attnseg.config.TrainConfig` per (fold, seed): the entry's recipe, then the
shared ``train`` mapping, then the entry's ``train`` mapping, then the study's model, options, data, run
directory, fold and seed.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnseg.config import ConfigError, TrainConfig, load_recipe, merge_config
from attnseg.errors import AttnsegError

__all__ = ["StudyError", "ModelEntry", "StudyConfig", "load_study", "parse_study", "STUDY_KEYS", "ENTRY_KEYS"]

STUDY_KEYS: tuple[str, ...] = ("name", "dataset", "folds", "seeds", "baseline", "protocol", "train", "models")
ENTRY_KEYS: tuple[str, ...] = ("name", "label", "model_kwargs", "train", "recipe")
# TrainConfig fields the study sets itself; a ``train`` mapping may not set them.
STUDY_OWNED: dict[str, str] = {
    "model": "models[].name",
    "model_kwargs": "models[].model_kwargs",
    "data": "dataset",
    "out": "the study directory",
    "fold": "folds",
    "seed": "seeds",
}
ALL_FOLDS = {"all5": [f"fold{k}" for k in range(5)]}


class StudyError(AttnsegError, ValueError):
    """The study file (or study directory) is unusable; the message names the key and the problem."""


@dataclass
class ModelEntry:
    """One compared configuration.

    Attributes:
        name: the registered model name.
        label: the name of this entry in the results (defaults to ``name``).
        model_kwargs: options passed to the model factory.
        train: per-entry :class:`TrainConfig` overrides.
        recipe: absolute path of a recipe applied first, or None.
    """

    name: str
    label: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    recipe: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry as written to ``study.yaml`` (every key, recipe path absolute)."""
        return {
            "name": self.name,
            "label": self.label,
            "model_kwargs": copy.deepcopy(self.model_kwargs),
            "train": copy.deepcopy(self.train),
            "recipe": self.recipe,
        }


@dataclass
class StudyConfig:
    """A parsed, validated study.

    Attributes:
        name: the study's name.
        dataset: absolute path of the dataset folder (nnU-Net raw layout).
        folds: split names in ``splits.json`` (``fold0``, ...).
        seeds: training seeds.
        baseline: the label of the reference entry.
        protocol: the evaluation protocol (:data:`attnseg.metrics.PROTOCOLS`).
        train: shared :class:`TrainConfig` overrides.
        models: the compared entries, in file order.
    """

    name: str
    dataset: str
    folds: list[str]
    seeds: list[int]
    baseline: str
    protocol: str
    train: dict[str, Any]
    models: list[ModelEntry]

    def entry(self, label: str) -> ModelEntry:
        """The entry called ``label``."""
        for e in self.models:
            if e.label == label:
                return e
        raise StudyError(f"baseline: {label!r} is not a model label ({', '.join(m.label for m in self.models)})")

    def train_config(self, entry: ModelEntry, fold: str, seed: int, out: str | os.PathLike = "") -> TrainConfig:
        """The full training configuration of ``entry`` for one fold and seed.

        Raises:
            StudyError: a recipe or ``train`` key that is not a TrainConfig field, or an invalid value.
        """
        index = self.models.index(entry)
        where = f"models[{index}] ({entry.label})"
        try:
            cfg = load_recipe(entry.recipe) if entry.recipe else TrainConfig()
        except ConfigError as exc:
            raise StudyError(f"models[{index}].recipe: {exc}") from None
        cfg = _merge(cfg, self.train, "train", f" (in {where})")
        cfg = _merge(cfg, entry.train, f"models[{index}].train", "")
        kwargs = dict(cfg.model_kwargs) if cfg.model == entry.name else {}
        kwargs.update(entry.model_kwargs)
        cfg = merge_config(
            cfg,
            {
                "model": entry.name,
                "model_kwargs": kwargs,
                "data": self.dataset,
                "out": str(out),
                "fold": fold,
                "save_val_predictions": True,  # the runner scores the validation split from them
            },
        )
        cfg.seed = int(seed)
        try:
            cfg.validate()
        except ConfigError as exc:
            raise StudyError(f"{where}: {exc}") from None
        except TypeError as exc:  # e.g. iterations: "many"
            raise StudyError(f"{where}: a training option has the wrong type ({exc})") from None
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The study as written to ``study.yaml`` (absolute paths, folds as split names)."""
        return {
            "name": self.name,
            "dataset": self.dataset,
            "folds": list(self.folds),
            "seeds": list(self.seeds),
            "baseline": self.baseline,
            "protocol": self.protocol,
            "train": copy.deepcopy(self.train),
            "models": [m.to_dict() for m in self.models],
        }


def _merge(cfg: TrainConfig, values: dict[str, Any], source: str, context: str) -> TrainConfig:
    """``merge_config`` with its ConfigError turned into a StudyError naming the study key."""
    try:
        return merge_config(cfg, values, source=source)
    except ConfigError as exc:
        text = str(exc)
        for prefix, key in ((f"{source} (augment): ", f"{source}.augment"), (f"{source}: ", source)):
            if text.startswith(prefix):
                raise StudyError(f"{key}: {text[len(prefix) :]}{context}") from None
        raise StudyError(f"{source}: {text}{context}") from None
    except (TypeError, ValueError) as exc:  # e.g. augment: 3, ct_window: 5
        raise StudyError(f"{source}: a value has the wrong form ({exc}){context}") from None


def _unknown(values: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in values:
        if key not in allowed:
            path = f"{where}.{key}" if where else str(key)
            raise StudyError(f"{path}: unknown key; allowed: {', '.join(allowed)}")


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(f"{key}: must be a mapping, got {type(value).__name__}")
    return dict(value)


def _check_train_keys(values: dict[str, Any], where: str) -> None:
    import dataclasses

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in values:
        if key in STUDY_OWNED:
            raise StudyError(f"{where}.{key}: set by the study ({STUDY_OWNED[key]}), not by a train mapping")
        if key not in fields:
            raise StudyError(f"{where}.{key}: not a training option (TrainConfig field)")


def _folds(value: Any) -> list[str]:
    if value is None:
        return list(ALL_FOLDS["all5"])
    if isinstance(value, str) and value in ALL_FOLDS:
        return list(ALL_FOLDS[value])
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)) or str(item).strip() == "":
            raise StudyError(f'folds: {item!r} is not a fold (give 0, 1, ..., split names, or "all5")')
        name = str(item).strip()
        name = f"fold{name}" if name.isdigit() else name
        if name == "all":
            raise StudyError('folds: "all" trains on every case and leaves nothing to compare on; give folds')
        if name in out:
            raise StudyError(f"folds: {name} is given twice")
        out.append(name)
    if not out:
        raise StudyError("folds: no fold given")
    return out


def _seeds(value: Any) -> list[int]:
    items = [0] if value is None else (value if isinstance(value, list) else [value])
    out: list[int] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise StudyError(f"seeds: {item!r} is not an integer")
        if not 0 <= item < 2**32:
            raise StudyError(f"seeds: {item} is outside 0 .. 2**32 - 1")
        if item in out:
            raise StudyError(f"seeds: {item} is given twice")
        out.append(int(item))
    if not out:
        raise StudyError("seeds: no seed given")
    return out


def _resolve(path: Any, base: Path, key: str) -> str:
    if not isinstance(path, str) or not path.strip():
        raise StudyError(f"{key}: must be a path")
    p = Path(path).expanduser()
    return str((p if p.is_absolute() else base / p).resolve())


def _entry(raw: Any, index: int, base: Path) -> ModelEntry:
    from attnseg.models.registry import UnknownModelError, model_info

    where = f"models[{index}]"
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise StudyError(f"{where}: must be a mapping with a name, got {raw!r}")
    _unknown(raw, ENTRY_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise StudyError(f"{where}.name: required (a registered model name)")
    try:
        model_info(name)
    except UnknownModelError as exc:
        raise StudyError(f"{where}.name: {exc}") from None
    label = raw.get("label", name)
    if not isinstance(label, str) or not label or "/" in label or label.startswith("."):
        raise StudyError(f"{where}.label: {label!r} must be a non-empty name without '/'")
    train = _mapping(raw.get("train"), f"{where}.train")
    _check_train_keys(train, f"{where}.train")
    recipe = raw.get("recipe")
    if recipe is not None:
        recipe = _resolve(recipe, base, f"{where}.recipe")
        if not Path(recipe).is_file():
            raise StudyError(f"{where}.recipe: {recipe} not found")
    return ModelEntry(
        name=name,
        label=label,
        model_kwargs=_mapping(raw.get("model_kwargs"), f"{where}.model_kwargs"),
        train=train,
        recipe=recipe,
    )


def parse_study(
    raw: Any, base: str | os.PathLike, *, default_name: str = "study", check_dataset: bool = True
) -> StudyConfig:
    """Validate a study mapping.

    Args:
        raw: the parsed YAML.
        base: the folder relative paths (dataset, recipes) resolve against.
        default_name: the name when the mapping has none.
        check_dataset: read the dataset and its ``splits.json`` (written with the default 5 folds when missing)
            and check every fold is in it.

    Returns:
        The :class:`StudyConfig`.

    Raises:
        StudyError: naming the key and the problem.
    """
    from attnseg.metrics import PROTOCOLS

    base = Path(base)
    if not isinstance(raw, dict):
        raise StudyError("a study file must be a mapping of key: value")
    _unknown(raw, STUDY_KEYS, "")
    if "dataset" not in raw:
        raise StudyError("dataset: required (a dataset folder in the nnU-Net raw layout)")
    dataset = _resolve(raw["dataset"], base, "dataset")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise StudyError(f"name: {name!r} must be a non-empty string")
    protocol = str(raw.get("protocol", "strict")).lower()
    if protocol not in PROTOCOLS:
        raise StudyError(f"protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    train = _mapping(raw.get("train"), "train")
    _check_train_keys(train, "train")
    models_raw = raw.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise StudyError("models: required (a list of model entries)")
    models = [_entry(m, i, base) for i, m in enumerate(models_raw)]
    seen: dict[str, int] = {}
    for i, m in enumerate(models):
        if m.label in seen:
            raise StudyError(
                f"models[{i}].label: {m.label!r} is also the label of models[{seen[m.label]}]; give each entry "
                "its own label"
            )
        seen[m.label] = i
    baseline = raw.get("baseline", models[0].label)
    if baseline not in seen:
        raise StudyError(f"baseline: {baseline!r} is not a model label ({', '.join(seen)})")
    study = StudyConfig(
        name=name,
        dataset=dataset,
        folds=_folds(raw.get("folds")),
        seeds=_seeds(raw.get("seeds")),
        baseline=str(baseline),
        protocol=protocol,
        train=train,
        models=models,
    )
    for entry in study.models:  # every key and value is checked before anything is trained
        study.train_config(entry, study.folds[0], study.seeds[0])
    if check_dataset:
        _check_folds(study)
    return study


def _check_folds(study: StudyConfig) -> None:
    from attnseg.data.layout import DatasetError, load_dataset, load_splits

    try:
        info = load_dataset(study.dataset)
        splits = load_splits(info, write_if_missing=True)
    except DatasetError as exc:
        raise StudyError(f"dataset: {exc}") from None
    available = [k for k, v in splits.items() if isinstance(v, dict)]
    for fold in study.folds:
        if fold not in available:
            raise StudyError(
                f"folds: {fold} is not in {Path(study.dataset) / 'splits.json'} (available: {', '.join(available)})"
            )


def load_study(path: str | os.PathLike, *, check_dataset: bool = True) -> StudyConfig:
    """Read and validate a study file; relative paths resolve against its folder.

    Raises:
        StudyError: unreadable file, invalid YAML, or any invalid key (named).
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StudyError(f"{path}: study file not found") from None
    except UnicodeDecodeError:
        raise StudyError(f"{path}: not a YAML text file (not UTF-8)") from None
    except OSError as exc:
        raise StudyError(f"{path}: cannot read the study file ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise StudyError(f"{path}: invalid YAML ({problem})") from None
    return parse_study(raw, path.resolve().parent, default_name=path.stem, check_dataset=check_dataset)
