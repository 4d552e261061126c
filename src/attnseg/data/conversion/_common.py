"""Shared machinery of the dataset converters: staging, file discovery, mask reading, seeded splits.

Every converter writes into a hidden staging folder next to the destination (``.DST.tmp-XXXX``) and renames it into
place only after ``dataset.json`` and ``splits.json`` are written, so an interrupted or failed conversion never
leaves a folder that looks like a valid dataset. A failed conversion removes its staging folder.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from attnseg.data.io import NATURAL_2D_SUFFIXES, image_suffix
from attnseg.data.layout import DatasetError, write_dataset_json, write_splits
from attnseg.io import default_dir_mode

__all__ = [
    "ConversionReport",
    "SPLIT_SEED",
    "staged_output",
    "list_files",
    "find_dir",
    "descend_single",
    "find_pair_dirs",
    "pair_by_id",
    "read_rgb",
    "read_gray",
    "read_gray_image",
    "read_binary_mask",
    "save_png",
    "resize_pair",
    "seeded_partition",
    "check_splits",
    "check_destination",
    "finish_dataset",
    "run_parallel",
]

SPLIT_SEED = 42  # seed of every seeded split unless the user passes --seed (MALUNet's run seed)

# Files that official distributions ship next to the images; they are skipped, everything else must be an image.
_METADATA_SUFFIXES = (".txt", ".csv", ".json", ".md", ".cfg", ".xlsx", ".xls", ".pdf", ".xml", ".ini", ".yaml", ".yml")
_METADATA_NAMES = ("license", "licence", "attribution", "readme", "thumbs.db", "desktop.ini")

T = TypeVar("T")


@dataclass
class ConversionReport:
    """What a conversion wrote (returned by every converter and printed by the CLI)."""

    dataset: str
    root: Path
    num_training: int
    num_test: int
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> part -> number of cases
    notes: list[str] = field(default_factory=list)


def _is_metadata(path: Path) -> bool:
    name = path.name.lower()
    return name.startswith(".") or name.endswith(_METADATA_SUFFIXES) or any(name.startswith(m) for m in _METADATA_NAMES)


def list_files(
    folder: Path, suffixes: Sequence[str] = NATURAL_2D_SUFFIXES, *, skip: Callable[[Path], bool] | None = None
) -> list[Path]:
    """Image files of ``folder`` (sorted), skipping metadata files; any other file is an error naming it.

    Raises:
        DatasetError: a file that is neither an image of the expected type nor a known metadata file.
    """
    files = []
    for f in sorted(folder.iterdir()):
        if f.is_dir() or _is_metadata(f) or (skip is not None and skip(f)):
            continue
        if image_suffix(f) not in suffixes:
            raise DatasetError(
                f"{f}: not an image file (expected {', '.join(suffixes)}); remove it or move it out of {folder}"
            )
        files.append(f)
    return files


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find_dir(
    root: Path, *, include: Sequence[Sequence[str]], exclude: Sequence[str] = (), max_depth: int = 3
) -> Path | None:
    """The shallowest folder below ``root`` (not ``root`` itself) whose normalised name matches.

    Args:
        root: where to search.
        include: alternatives, each a group of fragments that must all occur in the lower-cased name with
            non-alphanumerics removed (e.g. ``[["training", "groundtruth"], ["train", "mask"]]``).
        exclude: fragments that disqualify a name.
        max_depth: how deep to look.
    """
    level = sorted(c for c in root.iterdir() if c.is_dir() and not c.name.startswith("."))
    for _ in range(max_depth):
        hits = []
        for d in level:
            n = _norm(d.name)
            if any(all(_norm(frag) in n for frag in group) for group in include) and not any(
                _norm(x) in n for x in exclude
            ):
                hits.append(d)
        if hits:
            return sorted(hits)[0]
        level = sorted(c for d in level for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
    return None


IMAGE_WORDS = ("input", "data", "image", "img")
MASK_WORDS = ("groundtruth", "gt", "mask", "label", "segmentation", "annotation")


def find_pair_dirs(root: Path, subset_words: Sequence[str], *, exclude: Sequence[str] = ()) -> tuple[Path, Path] | None:
    """The image and mask folders of one subset (e.g. ``["training", "train"]``), or None when absent.

    Recognises challenge-style sibling folders (``ISIC2018_Task1-2_Training_Input`` next to
    ``ISIC2018_Task1_Training_GroundTruth``, ``trainval-image``/``trainval-mask``) and the ``SUBSET/images`` +
    ``SUBSET/masks`` layout.

    Raises:
        DatasetError: an image folder without a mask folder (or the reverse).
    """
    images = find_dir(
        root, include=[[s, w] for s in subset_words for w in IMAGE_WORDS], exclude=[*MASK_WORDS, "superpixel", *exclude]
    )
    masks = find_dir(
        root, include=[[s, w] for s in subset_words for w in MASK_WORDS], exclude=[*exclude, "task2", "task3"]
    )  # ISIC 2018 attribute/classification ground truth
    if images is None and masks is None:
        parent = find_dir(root, include=[[s] for s in subset_words], exclude=list(exclude))
        if parent is None:
            return None
        images = find_dir(parent, include=[[w] for w in IMAGE_WORDS], exclude=list(MASK_WORDS), max_depth=1)
        masks = find_dir(parent, include=[[w] for w in MASK_WORDS], max_depth=1)
        if images is None and masks is None:
            return None
    if images is None or masks is None:
        found, kind = (masks, "image") if images is None else (images, "mask")
        raise DatasetError(f"{found}: found no matching {kind} folder for it under {root}")
    return descend_single(images), descend_single(masks)


def descend_single(folder: Path) -> Path:
    """Follow a chain of folders that hold exactly one sub-folder and no files (double-extracted archives)."""
    while True:
        entries = [e for e in folder.iterdir() if not e.name.startswith(".") and not _is_metadata(e)]
        if len(entries) == 1 and entries[0].is_dir():
            folder = entries[0]
        else:
            return folder


def pair_by_id(
    images: Iterable[Path],
    masks: Iterable[Path],
    *,
    mask_suffixes: Sequence[str] = ("",),
    image_id: Callable[[Path], str] | None = None,
) -> list[tuple[str, Path, Path]]:
    """Pair images with masks by identifier, never by list position (docs/models/malunet.md, B3).

    Args:
        images: image files.
        masks: mask files.
        mask_suffixes: stem endings removed from mask names to get the image id (e.g. ``"_segmentation"``).
        image_id: maps an image file to its id (default: the file name without extension).

    Raises:
        DatasetError: an image without a mask (naming the image and where the mask was expected), a mask without an
            image, or two files with one id.
    """
    from attnseg.data.io import strip_suffix

    image_id = image_id or (lambda p: strip_suffix(p))
    by_id: dict[str, Path] = {}
    for img in images:
        key = image_id(img)
        if key in by_id:
            raise DatasetError(f"{img}: two images share the id {key!r} (also {by_id[key].name})")
        by_id[key] = img
    mask_by_id: dict[str, Path] = {}
    mask_dir = None
    for m in masks:
        mask_dir = m.parent
        stem = strip_suffix(m)
        key = stem
        for suffix in sorted(mask_suffixes, key=len, reverse=True):
            if suffix and stem.lower().endswith(suffix.lower()):
                key = stem[: len(stem) - len(suffix)]
                break
        if key in mask_by_id:
            raise DatasetError(f"{m}: two masks share the id {key!r} (also {mask_by_id[key].name})")
        mask_by_id[key] = m
    missing = sorted(set(by_id) - set(mask_by_id))
    if missing:
        where = f" in {mask_dir}" if mask_dir else ""
        raise DatasetError(
            f"{by_id[missing[0]]}: no mask found{where} for image {missing[0]!r}"
            + (f" ({len(missing) - 1} more images without masks)" if len(missing) > 1 else "")
        )
    orphans = sorted(set(mask_by_id) - set(by_id))
    if orphans:
        raise DatasetError(
            f"{mask_by_id[orphans[0]]}: mask without an image (id {orphans[0]!r})"
            + (f" ({len(orphans) - 1} more)" if len(orphans) > 1 else "")
        )
    return [(k, by_id[k], mask_by_id[k]) for k in sorted(by_id)]


def _open(path: Path, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if mode == "L" and im.mode in ("I;16", "I;16B", "I", "F"):
                arr = np.asarray(im)
                return arr
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc})") from None


def _is_colour(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False  # read_gray names the problem


def read_rgb(path: Path) -> np.ndarray:
    """``[3, H, W]`` uint8 (gray or palette images are expanded to RGB)."""
    return np.moveaxis(_open(path, "RGB"), -1, 0)


def read_gray(path: Path) -> np.ndarray:
    """``[H, W]`` uint8 (colour images are converted to luminance); 16-bit, 32-bit and float grey images as stored."""
    return _open(path, "L")


def read_gray_image(path: Path) -> np.ndarray:
    """``[H, W]`` uint8, or uint16 for a 16-bit grey image (kept at full depth, never wrapped to 8 bits).

    Raises:
        DatasetError: a float or 32-bit grey image outside 0..65535 (PNG holds 8 or 16 bits).
    """
    arr = read_gray(path)
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.integer) and arr.size and 0 <= arr.min() and arr.max() <= 65535:
        return arr.astype(np.uint16)
    raise DatasetError(
        f"{path}: {arr.dtype} grey image; the converter writes 8- or 16-bit PNGs, so convert it to integers in "
        "0..65535 first"
    )


def read_binary_mask(path: Path, shape: tuple[int, int] | None = None, *, image: Path | None = None) -> np.ndarray:
    """A 0/1 uint8 mask: values > 127 are foreground (always for JPEG, which is lossy), or > 0 for lossless masks
    stored as 0/1 (16-bit masks: above half their maximum).

    Args:
        path: mask file (PNG/JPEG/...; a colour mask's pixel is its brightest channel, so pure red is foreground,
            as luminance (76) would not make it).
        shape: the image's ``(H, W)``; a mask of another size is an error.
        image: the image file, named in the size error.

    Raises:
        DatasetError: unreadable mask, or size differs from the image.
    """
    arr = _open(path, "RGB").max(axis=-1) if _is_colour(path) else read_gray(path)
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise DatasetError(
            f"{path}: mask size {arr.shape[1]}x{arr.shape[0]} (WxH) differs from image "
            f"{(image.name + ' ') if image else ''}size {shape[1]}x{shape[0]}"
        )
    top = int(arr.max(initial=0))
    lossy = path.suffix.lower() in (".jpg", ".jpeg")  # JPEG noise on an empty mask can reach 1: never read as 0/1
    threshold = 127 if lossy or (arr.dtype == np.uint8 and top > 1) else (0 if top <= 1 else top // 2)
    return (arr > threshold).astype(np.uint8)


def save_png(array: np.ndarray, path: Path) -> None:
    """Write ``[H, W]`` uint8 / uint16 or ``[3, H, W]`` uint8 as PNG (fast compression; the staging folder makes it
    atomic)."""
    from PIL import Image

    if array.dtype not in (np.uint8, np.uint16) or (array.ndim == 3 and array.dtype != np.uint8):
        raise TypeError(f"save_png takes uint8 [H, W] / [3, H, W] or uint16 [H, W], got {array.dtype} {array.shape}")
    arr = np.moveaxis(array, 0, -1) if array.ndim == 3 else array
    Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG", compress_level=1)


def resize_pair(image: np.ndarray, mask: np.ndarray, max_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Downscale so the longer side is at most ``max_size`` (image: antialiased bilinear; mask: area-weighted, then
    re-thresholded at 0.5, so masks stay binary). Smaller images are left as they are."""
    if not max_size:
        return image, mask
    h, w = mask.shape
    if max(h, w) <= max_size:
        return image, mask
    from PIL import Image

    scale = max_size / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if image.ndim == 3:
        img = Image.fromarray(np.ascontiguousarray(np.moveaxis(image, 0, -1))).resize(
            size, Image.BILINEAR, reducing_gap=None
        )
        out_img = np.moveaxis(np.asarray(img), -1, 0)
    elif image.dtype == np.uint16:  # PIL resizes 16-bit grey only as float ("F")
        out = np.asarray(Image.fromarray(image.astype(np.float32)).resize(size, Image.BILINEAR))
        out_img = np.clip(np.rint(out), 0, 65535).astype(np.uint16)
    else:
        out_img = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    soft = np.asarray(Image.fromarray(mask.astype(np.float32)).resize(size, Image.BOX))
    return out_img, (soft >= 0.5).astype(np.uint8)


def seeded_partition(ids: Sequence[str], fractions: Sequence[float], seed: int) -> list[list[str]]:
    """Split ids (sorted, then shuffled with ``random.Random(seed)``) into parts of the given fractions.

    Part sizes are ``round(n * f)`` for all but the last part, which takes the rest; each returned part is sorted.
    """
    ordered = sorted(ids)
    random.Random(seed).shuffle(ordered)
    parts, start = [], 0
    for f in fractions[:-1]:
        k = int(round(len(ordered) * f))
        parts.append(sorted(ordered[start : start + k]))
        start += k
    parts.append(sorted(ordered[start:]))
    return parts


def check_splits(splits: Mapping[str, Any], known: set[str]) -> None:
    """Internal consistency: every id exists, and no split uses a case in two of its parts."""
    for name, split in splits.items():
        if isinstance(split, list):
            parts = {"test": split}
        else:
            parts = split
        seen: dict[str, str] = {}
        for part, ids in parts.items():
            unknown = set(ids) - known
            if unknown:
                raise AssertionError(f"split {name!r}/{part}: unknown cases {sorted(unknown)[:3]}")
            for cid in ids:
                if cid in seen:
                    raise AssertionError(f"split {name!r}: {cid!r} is in both {seen[cid]} and {part}")
                seen[cid] = part


def check_destination(dst: Path, overwrite: bool, src: Path | None) -> None:
    """Fail early when ``dst`` is unusable: not empty (without ``overwrite``), a file, or inside ``src``."""
    if src is not None:
        s, d = src.resolve(), dst.resolve()
        if d == s or s in d.parents:
            raise DatasetError(f"{dst}: the destination must not be inside the source folder {src}")
        if d in s.parents:  # --overwrite would delete the source with the old destination
            raise DatasetError(f"{dst}: the destination must not contain the source folder {src}")
    if dst.exists() and not dst.is_dir():
        raise DatasetError(f"{dst}: exists and is not a folder")
    existing = next((p for p in dst.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise DatasetError(f"{dst}: {existing} exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise DatasetError(f"{dst}: folder exists and is not empty; choose a new destination or pass --overwrite")


@contextmanager
def staged_output(dst: Path, *, overwrite: bool = False, src: Path | None = None) -> Iterator[Path]:
    """Yield a staging folder next to ``dst``; on success it replaces ``dst``, on failure it is deleted.

    Raises:
        DatasetError: ``dst`` exists and is not empty (without ``overwrite``), or lies inside ``src``.
    """
    dst = Path(dst)
    check_destination(dst, overwrite, src)
    created = [p for p in dst.parents if not p.exists()]  # deepest first; removed again if the conversion fails
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    except OSError as exc:
        _remove_empty(created)
        raise DatasetError(f"{dst}: cannot create the destination folder ({exc.strerror or exc})") from None
    os.chmod(stage, default_dir_mode())  # mkdtemp makes 0700; the dataset gets a plain mkdir's mode
    try:
        yield stage
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            os.replace(dst, old / "previous")  # rename, so the swap below is immediate
            os.replace(stage, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, dst)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_empty(created)
        raise
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty: the parents a failed conversion created."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def run_parallel(func: Callable[[T], Any], items: Sequence[T], workers: int = 1) -> list[Any]:
    """``[func(x) for x in items]``, in threads when ``workers > 1`` (image codecs release the GIL)."""
    if workers <= 1 or len(items) < 2:
        return [func(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(func, items))


def finish_dataset(
    root: Path,
    *,
    dataset: str,
    channel_names: Mapping[int, str],
    labels: Mapping[str, int],
    file_ending: str,
    training: Sequence[str],
    test: Sequence[str],
    splits: dict[str, Any],
    split_notes: Mapping[str, str],
    description: str,
    reference: str,
    conversion: dict[str, Any],
    notes: Sequence[str] = (),
    **extra: Any,
) -> ConversionReport:
    """Write ``dataset.json`` and ``splits.json`` into the staging folder and build the report."""
    check_splits(splits, set(training) | set(test))
    write_dataset_json(
        root,
        channel_names=channel_names,
        labels=labels,
        file_ending=file_ending,
        num_training=len(training),
        num_test=len(test),
        name=dataset,
        description=description,
        reference=reference,
        splits_info=dict(split_notes),
        conversion=conversion,
        **extra,
    )
    write_splits(root, splits)
    sizes = {}
    for name, split in splits.items():
        if isinstance(split, dict):
            sizes[name] = {part: len(ids) for part, ids in split.items()}
        else:
            sizes[name] = {"cases": len(split)}
    return ConversionReport(
        dataset=dataset, root=root, num_training=len(training), num_test=len(test), splits=sizes, notes=list(notes)
    )
