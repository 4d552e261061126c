"""attnseg.allocator: glibc keeps freed tensor memory for reuse once tuned; the switch and its errors."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

import attnseg.allocator as allocator
from attnseg.errors import AttnsegError

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# In a fresh process: where a 30 MB and a 40 MB tensor come from (glibc's mallinfo2: heap arena vs mmapped bytes).
_PROBE = """
import ctypes, json, sys
import torch
if sys.argv[1] == "tuned":
    from attnseg.allocator import tune_allocator
    assert tune_allocator()
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
def grew(mb):
    before = libc.mallinfo2()
    t = torch.ones(mb << 18)  # mb MiB of float32, kept alive while measured
    after = libc.mallinfo2()
    return {"heap": (after.arena - before.arena) >> 20, "mmap": (after.hblkhd - before.hblkhd) >> 20}, t
small, keep = grew(30)
large, keep2 = grew(40)
print(json.dumps({"30": small, "40": large}))
"""


def _probe(mode: str) -> dict[str, dict[str, int]]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=_env(None))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env(value: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != allocator.ENV_VAR}
    if value is not None:
        env[allocator.ENV_VAR] = value
    return env


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tensors_up_to_32_mib_come_from_the_heap_once_tuned() -> None:
    # glibc's defaults give a 30 MB block its own mmap, unmapped when freed and page-faulted anew the next time (the
    # cause this module fixes); tuned, it comes from the heap and stays there. 40 MB is above glibc's ceiling: mmap.
    default, tuned = _probe("default"), _probe("tuned")
    assert default["30"]["mmap"] >= 30 and default["30"]["heap"] == 0, default
    assert tuned["30"]["heap"] >= 30 and tuned["30"]["mmap"] == 0, tuned
    assert tuned["40"]["mmap"] >= 40, tuned


def test_the_switch_and_its_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc() -> None:
        raise AssertionError("mallopt must not be reached")

    monkeypatch.setattr(allocator, "_glibc", no_libc)
    for off in ("0", "off", "False", " no "):
        monkeypatch.setenv(allocator.ENV_VAR, off)
        assert allocator.tune_allocator() is False
    monkeypatch.setenv(allocator.ENV_VAR, "maybe")
    with pytest.raises(AttnsegError, match=r"ATTNSEG_MALLOC_TUNING='maybe': expected one of 1, true"):
        allocator.tune_allocator()
    monkeypatch.setenv(allocator.ENV_VAR, "1")
    with pytest.raises(ValueError, match="mmap_threshold must be in"):
        allocator.tune_allocator(mmap_threshold=64 << 20)
    with pytest.raises(ValueError, match="trim_threshold must be in"):
        allocator.tune_allocator(trim_threshold=-1)


def test_other_c_libraries_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(allocator.ENV_VAR, raising=False)
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("", ""))
    assert allocator._glibc() is None
    assert allocator.tune_allocator() is False


def test_the_command_line_tunes_at_start_and_names_a_bad_switch() -> None:
    run = [sys.executable, "-m", "attnseg.cli.main", "--version"]
    bad = subprocess.run(run, capture_output=True, text=True, env=_env("maybe"))
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1, bad.stderr
    assert lines[0].startswith("error: environment variable ATTNSEG_MALLOC_TUNING='maybe'")
    ok = subprocess.run(run, capture_output=True, text=True, env=_env("0"))
    assert ok.returncode == 0 and ok.stdout.startswith("attnseg "), ok.stderr
