"""Atomic writes: the file is whole or absent, never half-written, and gets the mode open() would give it."""

from __future__ import annotations

import os
import stat

import pytest

from attnseg.io import atomic_write, default_dir_mode, default_mode, write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_0644_under_umask_022(tmp_path, umask_022):
    text = atomic_write(tmp_path / "a" / "b.txt", "hello")
    data = atomic_write(tmp_path / "c.bin", b"\x00\x01")
    made = atomic_write(tmp_path / "d.npz", lambda tmp: tmp.write_bytes(b"x"))
    assert [_mode(p) for p in (text, data, made)] == [0o644] * 3
    assert text.read_text() == "hello" and data.read_bytes() == b"\x00\x01" and made.read_bytes() == b"x"
    assert default_mode() == 0o644 and default_dir_mode() == 0o755


def test_mode_follows_a_stricter_umask(tmp_path):
    old = os.umask(0o077)
    try:
        assert _mode(write_json(tmp_path / "s.json", {"a": 1})) == 0o600
    finally:
        os.umask(old)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_json(tmp_path / "summary.json", {"version": 1})

    def explode(tmp):
        tmp.write_text('{"version": 2, "trunc')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(target, explode)
    assert target.read_text() == '{\n  "version": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_temporary_keeps_the_real_suffix_for_format_sniffing_writers(tmp_path):
    seen = []
    atomic_write(tmp_path / "mask.nii.gz", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"")), suffix=".nii.gz")
    assert seen[0].endswith(".nii.gz") and seen[0] != "mask.nii.gz"


def test_a_converted_dataset_folder_gets_a_plain_mkdir_mode(tmp_path, umask_022):
    from attnseg.data.conversion._common import staged_output

    with staged_output(tmp_path / "Dataset001_X") as stage:
        (stage / "dataset.json").write_text("{}")
    assert _mode(tmp_path / "Dataset001_X") == 0o755 and _mode(tmp_path / "Dataset001_X" / "dataset.json") == 0o644
