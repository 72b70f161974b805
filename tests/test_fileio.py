"""Atomic writes: all or nothing, and files that others can read (published leaderboards, records)."""

from __future__ import annotations

import os
import stat

import pytest

from sparc_eval.fileio import atomic_path, write_json_atomic, write_text_atomic


def test_written_file_has_the_umask_mode_not_mkstemps_owner_only(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask
    assert 0o666 & ~umask != 0o600  # else the check above could not tell the two apart


def test_failure_leaves_neither_file_nor_temporary(tmp_path):
    write_json_atomic(tmp_path / "r.json", {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "r.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert (tmp_path / "r.json").read_text() == '{\n  "v": 1\n}\n'  # the old content survives
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new.json"):
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
