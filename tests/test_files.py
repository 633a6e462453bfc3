"""features.files: whole-or-nothing writes."""
from __future__ import annotations

import os

import pytest

from features.files import atomic_write, atomic_write_json


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write(path, "one")
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]
    atomic_write_json(path, {"k": 1})
    assert path.read_text() == '{"k": 1}\n'


def test_skip_unchanged_leaves_an_equal_file_alone_and_writes_a_different_one(tmp_path):
    path = tmp_path / "config.yaml"
    atomic_write(path, "a: 1\n", skip_unchanged=True)  # absent: written
    inode = os.stat(path).st_ino
    atomic_write(path, "a: 1\n", skip_unchanged=True)
    assert os.stat(path).st_ino == inode  # not replaced
    atomic_write(path, "a: 1\n")
    assert os.stat(path).st_ino != inode  # without the flag the file is always rewritten
    inode = os.stat(path).st_ino
    atomic_write(path, "a: 2\n", skip_unchanged=True)
    assert path.read_text() == "a: 2\n" and os.stat(path).st_ino != inode


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    atomic_write(path, "old")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        atomic_write(path, "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
