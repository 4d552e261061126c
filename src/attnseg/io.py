"""Atomic file writes: the one way attnseg writes a file.

Every file attnseg writes (checkpoints, run files, masks, overlays, ``summary.json``, ONNX graphs, benchmark records)
goes through :func:`atomic_write`: the content is written to a temporary file in the destination folder, which is
then renamed over the destination. A reader never sees a half-written file and a crash never leaves one behind.
``tempfile.mkstemp`` creates files with mode 0600; the final file gets the mode a plain ``open()`` would have given
it (0666 less the process umask, i.e. 0644 under umask 022), so run directories stay readable on a shared cluster.

Only the standard library and :mod:`attnseg.errors` are imported here, so every package may use it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attnseg.errors import AttnsegError

__all__ = [
    "atomic_write",
    "atomic_path",
    "atomic_paths",
    "write_text",
    "write_json",
    "default_mode",
    "default_dir_mode",
    "OutputPathError",
]


class OutputPathError(AttnsegError, OSError):
    """An output path that cannot be written: it is a folder, a file stands where its folder should be, or its folder
    does not take new files (read-only, no permission, no space)."""


def _umask() -> int:
    # os.umask can only be read by setting it; set it back at once (no thread of ours writes files meanwhile).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the umask."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """The mode ``os.mkdir`` gives a new folder: 0777 less the umask."""
    return 0o777 & ~_umask()


def _prepare(path: Path, suffix: str | None) -> Path:
    """Create ``path``'s folder and an empty temporary file next to it; the temporary path."""
    if path.is_dir():
        raise OutputPathError(f"{path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next(p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir())
        raise OutputPathError(f"{path}: cannot create its folder, {blocker} is a file") from None
    except OSError as exc:
        raise OutputPathError(f"{path}: cannot create its folder {path.parent} ({exc.strerror or exc})") from None
    tail = path.suffix if suffix is None else suffix
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{tail}", dir=path.parent)
    except OSError as exc:  # read-only or special file system, no permission, no space
        raise OutputPathError(f"{path}: cannot create a file in {path.parent} ({exc.strerror or exc})") from None
    os.close(fd)
    return Path(tmp_name)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an atomic write of ``path`` left behind when its process was killed (SIGKILL, a
    power cut: no ``finally`` ran); the paths removed. Only for destinations no other process is writing."""
    import glob

    path = Path(path)
    stale = [Path(p) for p in glob.glob(glob.escape(str(path.parent / f".{path.name}.")) + "*.tmp*")]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


@contextmanager
def atomic_paths(*paths: str | os.PathLike, suffix: str | None = None) -> Iterator[list[Path]]:
    """Yield a temporary path next to each of ``paths``; once all are written, they are synced to disk and then
    renamed over their destinations one right after the other; on failure all are deleted.

    Files that belong together (a checkpoint's weights and its training state) are replaced within microseconds of
    each other, so a crash almost never separates them, and never leaves a half-written file under its name.
    ``suffix``: see :func:`atomic_path`.
    """
    tmps: list[Path] = []
    try:
        for path in paths:
            tmps.append(_prepare(Path(path), suffix))
        yield list(tmps)
        for tmp in tmps:  # on disk before the renames, so a crash leaves the old file or the new one
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, default_mode())
        for tmp, path in zip(tmps, paths, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            if tmp.exists():
                tmp.unlink()


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on failure deleted.

    Args:
        path: the destination; its folder is created when missing.
        suffix: suffix of the temporary file (writers that pick the format from the name need the real one, e.g.
            ``.nii.gz``). Defaults to the destination's last suffix.
    """
    with atomic_paths(path, suffix=suffix) as (tmp,):
        yield tmp


def atomic_write(
    path: str | os.PathLike, content: str | bytes | Callable[[Path], Any], *, suffix: str | None = None
) -> Path:
    """Write ``content`` to ``path`` atomically and return ``path``.

    Args:
        path: the destination file.
        content: text (written as UTF-8), bytes, or a function ``write(tmp_path)`` that writes the file itself
            (``safetensors.torch.save_file``, ``torch.save``, an image writer, ...).
        suffix: suffix of the temporary file; see :func:`atomic_path`.
    """
    with atomic_path(path, suffix=suffix) as tmp:
        if isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            content(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text``."""
    return atomic_write(path, text)


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> Path:
    """Atomically write ``obj`` as indented JSON with a final newline."""
    dump_kwargs.setdefault("indent", 2)
    return atomic_write(path, json.dumps(obj, **dump_kwargs) + "\n")
