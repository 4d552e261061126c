"""glibc malloc settings for training and inference processes: keep freed tensor memory for the next step.

glibc's malloc serves a request above its mmap threshold with a fresh ``mmap`` and hands the free top of its heap back
to the kernel once it exceeds the trim threshold. Both thresholds start small (128 KiB) and follow the program: each
freed mmapped block raises the mmap threshold to its size (at most 32 MiB on 64-bit) and the trim threshold to twice
that. A training step allocates and frees the same tens to hundreds of MB of activations every step, so with these
defaults much of it goes back to the kernel at the end of a step and comes back as zero-filled pages in the next one:
14-112 thousand minor page faults per training step for unet, MDSA-UNet, MALUNet and MSA2Net at batch 2-8 on CPU,
and none once the memory stays in the heap, which made the steps 1.08-1.10x faster (``benchmarks/allocator.py``).
PyTorch's CPU performance guide reaches the same end by preloading jemalloc or tcmalloc; this module does it
in-process with ``mallopt``.

:func:`tune_allocator` fixes the mmap threshold at 32 MiB (glibc's maximum; larger blocks still come from ``mmap``
and go back when freed) and the trim threshold at 1 GiB, so up to 1 GiB of freed heap stays resident for reuse. The
``attnseg`` command line calls it at start; ``ATTNSEG_MALLOC_TUNING=0`` keeps glibc's defaults. On other C libraries
(musl, macOS, Windows) it does nothing.

Only the standard library is imported here.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

from attnseg.errors import AttnsegError

__all__ = ["ENV_VAR", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_allocator"]

ENV_VAR = "ATTNSEG_MALLOC_TUNING"
MMAP_THRESHOLD = 32 << 20  # bytes; glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 1 << 30  # bytes of free heap top kept before any is returned to the kernel

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, <malloc.h>
_M_MMAP_THRESHOLD = -3
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def _enabled() -> bool:
    value = os.environ.get(ENV_VAR, "1").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise AttnsegError(f"environment variable {ENV_VAR}={value!r}: expected one of {', '.join(_ON + _OFF)}")


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc's soname on every Linux architecture
    except OSError:
        return None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return libc


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds for this process (and processes forked from it later).

    Args:
        mmap_threshold: bytes from which a request gets its own ``mmap``; at most 32 MiB.
        trim_threshold: bytes of free heap top kept before returning memory to the kernel.

    Returns:
        True if both settings took effect; False when ``ATTNSEG_MALLOC_TUNING`` is off or the C library is not glibc.

    Raises:
        AttnsegError: ``ATTNSEG_MALLOC_TUNING`` holds something other than an on/off word.
        ValueError: a threshold glibc refuses (negative, or an mmap threshold above 32 MiB).
    """
    if not _enabled():
        return False
    if not 0 <= mmap_threshold <= MMAP_THRESHOLD:
        raise ValueError(f"mmap_threshold must be in [0, {MMAP_THRESHOLD}] bytes, got {mmap_threshold}")
    if not 0 <= trim_threshold < 2**31:
        raise ValueError(f"trim_threshold must be in [0, 2**31) bytes, got {trim_threshold}")
    libc = _glibc()
    if libc is None:
        return False
    # the trim threshold first: setting either one switches off glibc's dynamic adjustment of both
    if libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) != 1 or libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) != 1:
        raise RuntimeError(f"glibc mallopt refused mmap_threshold={mmap_threshold}, trim_threshold={trim_threshold}")
    return True
