"""Atomic writes: all or nothing, and files that others can read (published leaderboards, records)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparc_eval import fileio
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import atomic_path, inside, write_files_atomic, write_json_atomic, write_text_atomic


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


# ------------------------------------------------------------------------------ leftovers of killed writes


def _aged(path, seconds=3600, folder=False):
    """Create `path` (a file, or a folder) dated `seconds` ago."""
    if not path.exists():
        path.mkdir() if folder else path.write_text("half written")
    old = time.time() - seconds
    os.utime(path, (old, old))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # exited and reaped: no process has this id (until the system reuses it)


def test_a_killed_writes_temporary_is_removed_by_the_next_write_of_the_same_file(tmp_path):
    host = fileio._owner_tag().rpartition("-")[0]
    _aged(tmp_path / f".r.json.abc123.{host}-{_dead_pid()}.tmp")
    _aged(tmp_path / f".r.json.def456.{host}-{_dead_pid()}.tmp", folder=True)
    other_file = _aged(tmp_path / f".other.json.abc123.{host}-{_dead_pid()}.tmp")
    write_json_atomic(tmp_path / "r.json", {"v": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["r.json", other_file.name])  # only r.json's were its


def test_temporaries_that_may_still_be_written_are_kept(tmp_path):
    host = fileio._owner_tag().rpartition("-")[0]
    live = _aged(tmp_path / f".r.json.abc123.{host}-{os.getppid()}.tmp")  # our parent process is alive
    foreign = _aged(tmp_path / ".r.json.abc123.otherhost-12345.tmp", seconds=600)  # another host's writer
    fresh = tmp_path / f".r.json.abc123.{host}-{_dead_pid()}.tmp"  # younger than this process
    fresh.write_text("x")
    write_text_atomic(tmp_path / "r.json", "done")
    assert {live.name, foreign.name, fresh.name} <= {p.name for p in tmp_path.iterdir()}
    _aged(foreign, seconds=2 * 24 * 3600)  # a day later it is taken for abandoned
    write_text_atomic(tmp_path / "r.json", "again")
    assert not foreign.exists() and live.exists()


def test_write_files_atomic_replaces_all_files_or_none(tmp_path, monkeypatch):
    write_files_atomic(tmp_path, {"a.md": "old a", "b.csv": "old b"})
    real_write_text = Path.write_text

    def full_disk_on_b(self, text, *args, **kwargs):
        if self.name.startswith(".b.csv."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk_on_b)
    with pytest.raises(SparcEvalError, match=r"could not write .*b\.csv: No space left on device"):
        write_files_atomic(tmp_path, {"a.md": "new a", "b.csv": "new b"})
    monkeypatch.undo()
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.md": "old a", "b.csv": "old b"}


@pytest.mark.parametrize("relative", ["../x", "/etc/passwd", "a/../../x", "", "a\x00b", 5, None])
def test_inside_refuses_what_leads_outside_or_is_no_path(tmp_path, relative):
    with pytest.raises(SparcEvalError, match="card name"):
        inside(tmp_path, relative, "card name")


def test_inside_follows_links_and_accepts_what_stays(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    with pytest.raises(SparcEvalError, match="leads outside"):
        inside(tmp_path / "root", "out/secret", "entry")
    assert inside(tmp_path / "root", "a/../b.json", "entry") == tmp_path / "root" / "a/../b.json"
    assert inside(tmp_path / "root", "sub/c.json", "entry") == tmp_path / "root" / "sub" / "c.json"


def test_inside_without_following_links_accepts_a_linked_data_tree_but_no_dot_dot(tmp_path):
    """Dataset files are read lexically: images linked to another disk are the user's layout, '..' still escapes."""
    (tmp_path / "disk").mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "a.png").symlink_to(tmp_path / "disk" / "a.png")
    assert inside(tmp_path / "root", "a.png", "image", follow_links=False) == tmp_path / "root" / "a.png"
    with pytest.raises(SparcEvalError, match="leads outside"):
        inside(tmp_path / "root", "a.png", "image")
    for escaping in ("../disk/a.png", "sub/../../disk/a.png", str(tmp_path / "disk" / "a.png")):
        with pytest.raises(SparcEvalError, match="image .* leads outside"):
            inside(tmp_path / "root", escaping, "image", follow_links=False)
