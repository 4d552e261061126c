"""Uploads of ``attnseg serve``: the file type from its content, size limits, and a zipped DICOM series unpacked safely.

No name the client sends becomes a path: an upload is stored as ``upload.<ext>`` (the extension of the type its
bytes show) in a server-made folder, and the files of a zip as ``series/00000.dcm``, ``series/00001.dcm``, ... Zip
members are still checked, and an archive is refused when a member is an absolute path, climbs out of the archive
with ``..``, is a symbolic link or encrypted, or when there are too many members or they unpack to too many bytes
(a zip bomb). The client's name is kept only for messages and download names (:func:`display_name`).
"""

from __future__ import annotations

import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from attnseg.errors import AttnsegError

__all__ = [
    "UploadError",
    "ZipLimits",
    "display_name",
    "download_stem",
    "extract_dicom_zip",
    "sniff",
    "SUFFIXES",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
GZIP_SIGNATURE = b"\x1f\x8b"
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive's end record
SUFFIXES = {"png": ".png", "jpeg": ".jpg", "nifti-gz": ".nii.gz", "nifti": ".nii", "zip": ".zip"}
SNIFF_BYTES = 548  # enough for a NIfTI-2 header's magic
ACCEPTED = "a PNG or JPEG image, a NIfTI volume (.nii, .nii.gz) or a zipped DICOM series (.zip)"


class UploadError(AttnsegError):
    """An upload the server refuses; ``status`` is the HTTP status the page gets with the message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ZipLimits:
    """How much a zipped series may unpack to: members, bytes per member and in all, and the compression ratio."""

    max_members: int = 10_000
    max_member_bytes: int = 256 * 2**20
    max_total_bytes: int = 4 * 2**30
    max_ratio: float = 200.0  # uncompressed / compressed size, for members above 1 MiB


def display_name(name: str | None) -> str:
    """The client's file name for messages: its last path part, printable characters only, at most 80 of them."""
    base = re.split(r"[\\/]", name or "")[-1]
    clean = "".join(c for c in base if c.isprintable()).strip()
    return clean[:80] or "upload"


def download_stem(name: str) -> str:
    """A download's file-name stem from the client's name (``ct 01.nii.gz`` -> ``ct_01``): letters, digits, ``_-.``."""
    stem = display_name(name)
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".zip"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._")
    return stem[:60] or "upload"


def sniff(head: bytes) -> str | None:
    """The upload type its first bytes show (``png``, ``jpeg``, ``nifti-gz``, ``nifti``, ``zip``), or None.

    A gzip stream is taken for a compressed NIfTI; nibabel reads its header next and refuses anything else.
    """
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if head.startswith(GZIP_SIGNATURE):
        return "nifti-gz"
    if head[:4] in ZIP_SIGNATURES:
        return "zip"
    # NIfTI-1: sizeof_hdr 348 and magic "n+1" at byte 344; NIfTI-2: 540 and "n+2" at byte 4 (either byte order)
    size = head[:4]
    if size in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c") and head[344:347] in (b"n+1", b"ni1"):
        return "nifti"
    if size in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") and head[4:7] in (b"n+2", b"ni2"):
        return "nifti"
    return None


def _escapes(member: str) -> bool:
    """True for a member name that is absolute or whose ``..`` parts climb above the archive's root."""
    name = member.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return True
    depth = 0
    for part in PurePosixPath(name).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _skipped(member: str) -> bool:
    """Members that are no slice: macOS resource forks, hidden files, a DICOMDIR index."""
    parts = PurePosixPath(member.replace("\\", "/")).parts
    hidden = any((p.startswith(".") and p not in (".", "..")) or p == "__MACOSX" for p in parts)
    return hidden or (bool(parts) and parts[-1].upper() == "DICOMDIR")


def extract_dicom_zip(archive: Path, dest: Path, shown: str, limits: ZipLimits = ZipLimits()) -> int:
    """Unpack the DICOM files (``DICM`` at byte 128) of ``archive`` into ``dest`` as ``00000.dcm``, ... and return
    how many there are. Every member is checked before the first byte is written.

    Raises:
        UploadError: an unreadable or unsafe archive (``shown`` names it), one without DICOM files; too large: 413.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UploadError(f"{shown}: not a readable zip archive ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise UploadError(f"{shown}: {len(infos)} members; at most {limits.max_members} are unpacked", 413)
        total = 0
        files = []
        for info in infos:
            if _escapes(info.filename):
                raise UploadError(f"{shown}: member {info.filename!r} points outside the archive; refused")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UploadError(f"{shown}: member {info.filename!r} is a symbolic link; refused")
            if info.flag_bits & 0x1:
                raise UploadError(f"{shown}: member {info.filename!r} is encrypted; zip the series without a password")
            if info.is_dir() or _skipped(info.filename):
                continue
            if info.file_size > limits.max_member_bytes:
                raise UploadError(
                    f"{shown}: member {info.filename!r} unpacks to {info.file_size} bytes "
                    f"(limit {limits.max_member_bytes})",
                    413,
                )
            if info.file_size > 2**20 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise UploadError(
                    f"{shown}: member {info.filename!r} is compressed more than {limits.max_ratio:g}:1 "
                    "(a zip bomb?); refused",
                    413,
                )
            total += info.file_size
            files.append(info)
        if total > limits.max_total_bytes:
            raise UploadError(f"{shown}: unpacks to {total} bytes (limit {limits.max_total_bytes})", 413)
        dest.mkdir(parents=True, exist_ok=False)
        count = 0
        for info in files:
            target = dest / f"{count:05d}.dcm"  # a server-made name; the member's name is never a path
            try:
                written = _copy_member(zf, info, target, limits.max_member_bytes, shown)
            except UploadError:
                target.unlink(missing_ok=True)
                raise
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
                target.unlink(missing_ok=True)
                raise UploadError(f"{shown}: member {info.filename!r} cannot be unpacked ({exc})") from None
            if written is None:
                target.unlink(missing_ok=True)  # not a DICOM file (no DICM preamble): left out
            else:
                count += 1
    if count == 0:
        raise UploadError(f"{shown}: holds no DICOM file (none has the 'DICM' marker at byte 128); zip one series")
    return count


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, limit: int, shown: str) -> int | None:
    """Copy one member to ``target``, counting the bytes really unpacked; None when it is no DICOM file."""
    written = 0
    with zf.open(info) as src, open(target, "xb") as out:
        head = src.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            return None
        out.write(head)
        written = len(head)
        while chunk := src.read(2**20):
            written += len(chunk)
            if written > min(limit, info.file_size):  # the header's size is not trusted
                raise UploadError(
                    f"{shown}: member {info.filename!r} unpacks to more than its stated size; refused", 413
                )
            out.write(chunk)
    return written
