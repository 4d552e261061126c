"""The canonical on-disk dataset format: nnU-Net v2's raw layout.

```
DATASET/
  dataset.json   channel_names, labels (name -> int), file_ending, numTraining
  imagesTr/CASE_0000.ext   one file per channel (RGB PNG: all three colours in the _0000 file)
  labelsTr/CASE.ext
  imagesTs/ labelsTs/      optional
  splits.json    named splits: {"fold0": {"train": [...], "val": [...]}, ..., "test": [...]}
```

When ``splits.json`` is absent, :func:`load_splits` writes five deterministic folds (seeded shuffle of the sorted
training case ids), and, if ``imagesTs``+``labelsTs`` exist, a ``test`` list of those cases.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnseg.errors import AttnsegError
from attnseg.io import write_json

__all__ = [
    "DatasetError",
    "MAX_LABEL_ID",
    "label_id_too_large",
    "Case",
    "DatasetInfo",
    "load_dataset",
    "load_splits",
    "split_shape_problem",
    "write_splits",
    "write_dataset_json",
    "default_folds",
]


# the model gets (max label id + 1) output channels, so ids far above the label count are a mistake
MAX_LABEL_ID = 1023


def label_id_too_large(name: str, ident: int) -> str:
    """The problem with a label id above :data:`MAX_LABEL_ID` (shared by the loader and check-data)."""
    return (
        f"label {name!r}: id {ident} is above {MAX_LABEL_ID}; the model would get id + 1 output channels "
        "(number the labels 0, 1, 2, ...)"
    )


class DatasetError(AttnsegError, ValueError):
    """The dataset folder does not follow the layout; the message names the file and the problem."""


@dataclass(frozen=True)
class Case:
    """One case: its channel files and (optional) label file."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None
    subset: str  # "Tr" or "Ts"


@dataclass
class DatasetInfo:
    """A parsed ``dataset.json`` plus the cases found on disk."""

    root: Path
    name: str
    channel_names: dict[int, str]
    labels: dict[str, int]
    file_ending: str
    cases: dict[str, Case] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_channel_files(self) -> int:
        """Files per case: one per channel, except RGB images, which keep their three colours in one file."""
        return 1 if self.is_rgb else self.num_channels

    @property
    def label_values(self) -> list[int]:
        return sorted(set(self.labels.values()))

    @property
    def num_classes(self) -> int:
        """Number of output channels for softmax training: max label + 1 (background included)."""
        return max(self.labels.values()) + 1

    @property
    def label_names(self) -> dict[int, str]:
        return {v: k for k, v in self.labels.items()}

    @property
    def is_rgb(self) -> bool:
        names = [n.strip().lower() for n in self.channel_names.values()]
        return names in (["rgb"], ["r", "g", "b"]) or (len(names) == 1 and names[0] in ("rgb", "color", "colour"))

    def channel_kind(self, index: int) -> str:
        """Normalisation scheme of a channel: ``ct``, ``rgb`` or ``zscore``."""
        name = self.channel_names[index].strip().lower()
        if name == "ct":
            return "ct"
        if self.is_rgb or name in ("r", "g", "b", "rgb"):
            return "rgb"
        return "zscore"

    def training_cases(self) -> list[str]:
        return sorted(c for c, v in self.cases.items() if v.subset == "Tr")

    def test_cases(self) -> list[str]:
        return sorted(c for c, v in self.cases.items() if v.subset == "Ts")


def write_dataset_json(
    root: str | os.PathLike,
    *,
    channel_names: Mapping[int | str, str],
    labels: Mapping[str, int],
    file_ending: str,
    num_training: int,
    name: str = "",
    description: str = "",
    num_test: int | None = None,
    **extra: Any,
) -> Path:
    """Write ``dataset.json`` (nnU-Net v2 keys plus optional extras such as licence and reference)."""
    if "background" not in labels or labels["background"] != 0:
        raise DatasetError(f"{root}: labels must map 'background' to 0")
    doc: dict[str, Any] = {
        "name": name or Path(root).name,
        "description": description,
        "channel_names": {str(k): v for k, v in channel_names.items()},
        "labels": dict(labels),
        "numTraining": int(num_training),
        "file_ending": file_ending,
    }
    if num_test is not None:
        doc["numTest"] = int(num_test)
    doc.update(extra)
    return write_json(Path(root) / "dataset.json", doc)


def _find_cases(root: Path, subset: str, file_ending: str, num_channels: int) -> dict[str, Case]:
    img_dir, lbl_dir = root / f"images{subset}", root / f"labels{subset}"
    if not img_dir.is_dir():
        return {}
    by_case: dict[str, dict[int, Path]] = {}
    for f in sorted(img_dir.iterdir()):
        name = f.name
        if name.startswith(".") or not name.endswith(file_ending):
            continue
        stem = name[: -len(file_ending)]
        case_id, sep, channel = stem.rpartition("_")
        if not sep or len(channel) != 4 or not channel.isdigit():
            raise DatasetError(f"{f}: image files must be named CASE_XXXX{file_ending} (4-digit channel suffix)")
        by_case.setdefault(case_id, {})[int(channel)] = f
    cases = {}
    for case_id, channels in by_case.items():
        expected = set(range(num_channels))
        if set(channels) != expected:
            raise DatasetError(
                f"{img_dir}: case {case_id!r} has channels {sorted(channels)}, dataset.json declares {sorted(expected)}"
            )
        label = lbl_dir / f"{case_id}{file_ending}"
        if subset == "Tr" and not label.exists():
            raise DatasetError(f"{label}: label file missing for training case {case_id!r}")
        cases[case_id] = Case(
            case_id=case_id,
            images=tuple(channels[c] for c in sorted(channels)),
            label=label if label.exists() else None,
            subset=subset,
        )
    return cases


def load_dataset(root: str | os.PathLike) -> DatasetInfo:
    """Parse ``ROOT/dataset.json`` and index the cases on disk.

    Raises:
        DatasetError: missing/invalid dataset.json, badly named files, missing labels or channels.
    """
    root = Path(root)
    if root.name == "dataset.json" and root.is_file():
        root = root.parent  # the dataset's own file names its folder
    if not root.is_dir():
        raise DatasetError(
            f"{root}: is a file, not a dataset folder" if root.exists() else f"{root}: dataset folder not found"
        )
    meta_path = root / "dataset.json"
    if meta_path.is_dir():
        raise DatasetError(f"{meta_path}: is a folder; dataset.json must be a file (nnU-Net v2 raw layout)")
    if not meta_path.exists():
        raise DatasetError(f"{meta_path}: missing; a dataset folder needs dataset.json (nnU-Net v2 raw layout)")
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{meta_path}: invalid JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{meta_path}: cannot be read ({type(exc).__name__}: {exc})") from None
    for key in ("channel_names", "labels", "file_ending"):
        if key not in raw:
            raise DatasetError(f"{meta_path}: missing key {key!r}")
    try:
        channel_names = {int(k): str(v) for k, v in raw["channel_names"].items()}
        labels = {str(k): int(v) for k, v in raw["labels"].items()}
    except (TypeError, ValueError, AttributeError) as exc:
        raise DatasetError(f"{meta_path}: channel_names/labels must be objects with integer ids ({exc})") from None
    if sorted(channel_names) != list(range(len(channel_names))) or not channel_names:
        raise DatasetError(f"{meta_path}: channel_names keys must be 0..N-1, got {sorted(channel_names)}")
    if labels.get("background") != 0:
        raise DatasetError(f'{meta_path}: labels must contain "background": 0')
    too_large = sorted(n for n, v in labels.items() if v > MAX_LABEL_ID)
    if too_large:
        raise DatasetError(f"{meta_path}: {label_id_too_large(too_large[0], labels[too_large[0]])}")
    if len(set(labels.values())) != len(labels):
        raise DatasetError(f"{meta_path}: two label names share one value")
    file_ending = str(raw["file_ending"])
    info = DatasetInfo(
        root=root,
        name=str(raw.get("name", root.name)),
        channel_names=channel_names,
        labels=labels,
        file_ending=file_ending,
        raw=raw,
    )
    info.cases.update(_find_cases(root, "Tr", file_ending, info.num_channel_files))
    info.cases.update(_find_cases(root, "Ts", file_ending, info.num_channel_files))
    if not info.training_cases():
        raise DatasetError(f"{root / 'imagesTr'}: no training images ending in {file_ending!r}")
    return info


def default_folds(case_ids: Sequence[str], num_folds: int = 5, seed: int = 12345) -> dict[str, dict[str, list[str]]]:
    """Deterministic k-fold split of ``case_ids`` (sorted, then shuffled with ``seed``)."""
    ids = sorted(case_ids)
    random.Random(seed).shuffle(ids)
    k = min(num_folds, len(ids)) if len(ids) > 1 else 1
    folds = {}
    for f in range(k):
        val = sorted(ids[f::k]) if len(ids) > 1 else []
        train = sorted(set(ids) - set(val))
        folds[f"fold{f}"] = {"train": train, "val": val}
    return folds


def write_splits(root: str | os.PathLike, splits: Mapping[str, Any]) -> Path:
    return write_json(Path(root) / "splits.json", splits)


def split_shape_problem(name: str, split: Any) -> str | None:
    """What is wrong with the shape of one named split of ``splits.json`` (a list of case ids, or an object of such
    lists, e.g. ``{"train": [...], "val": [...]}``), or None."""
    parts = {"": split} if isinstance(split, list) else split
    if not isinstance(parts, dict) or not all(
        isinstance(m, list) and all(isinstance(c, str) for c in m) for m in parts.values()
    ):
        return f"split {name!r} must be a list of case ids or an object of such lists"
    return None


def load_splits(info: DatasetInfo, *, write_if_missing: bool = True) -> dict[str, Any]:
    """Read ``splits.json`` (validating its shape and case ids), or create the default folds."""
    path = info.root / "splits.json"
    if path.exists():
        try:
            splits = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: invalid JSON ({exc})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
        if not isinstance(splits, dict):
            raise DatasetError(f"{path}: must be an object of named splits, found a {type(splits).__name__}")
        known = set(info.cases)
        for name, split in splits.items():
            problem = split_shape_problem(name, split)
            if problem:
                raise DatasetError(f"{path}: {problem}")
            members = split if isinstance(split, list) else [c for part in split.values() for c in part]
            unknown = sorted(set(members) - known)
            if unknown:
                raise DatasetError(f"{path}: split {name!r} names cases not in the dataset: {unknown[:5]}")
        return splits
    splits: dict[str, Any] = default_folds(info.training_cases())
    test = info.test_cases()
    if test:
        splits["test"] = test
    if write_if_missing:
        write_splits(info.root, splits)
    return splits
