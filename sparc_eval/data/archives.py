"""Unpacking downloaded archives (zip, tar, tar.gz / .tgz / .tar.bz2 / .tar.xz) as hostile input.

Every member is checked before a byte of it is written, and the whole archive is refused (one
SparcEvalError naming the archive and the member) when any member:

- would land outside the target folder: an absolute path, a drive letter, or a `..` component;
- is a symbolic link, a hard link, a device file or a FIFO (no official archive of a dataset sparc-eval
  fetches holds one, so links are refused whatever they point at, including targets inside the tree);
- is encrypted (zip), or its name is not valid text;
- takes the total unpacked size over `limits.max_bytes`, or the ratio of unpacked bytes to archive bytes
  over `limits.max_ratio` (a decompression bomb), counted on the bytes actually produced, not on the sizes the
  headers claim; a zip member that inflates past its declared size is refused as well.

Unpacking goes into a fresh temporary folder beside the destination (`staging`), which the caller renames
into place only when everything succeeded; on any refusal or error the temporary folder is removed, so
nothing is left behind and nothing outside the destination is ever written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import temporary_sibling

_CHUNK = 1 << 20


@dataclass(frozen=True)
class UnpackLimits:
    """Bounds on what one archive may unpack to. The defaults admit the largest archive sparc-eval fetches
    (COCO train2017.zip: 19.3 GB of JPEGs that do not compress; LVIS and COCO annotation zips inflate about 4x)."""

    max_bytes: int = 64 * 1024**3
    max_ratio: float = 100.0
    max_members: int = 2_000_000


def member_path(name: str, archive: Path) -> PurePosixPath | None:
    """The safe relative path of archive member `name` (None for the archive's own root entry "." or "./"),
    or a SparcEvalError when it is absolute or climbs out with `..`."""
    if "\x00" in name:
        raise SparcEvalError(f"archive {archive}: member {name!r} has a NUL byte in its name; nothing was unpacked")
    text = name.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise SparcEvalError(f"archive {archive}: member {name!r} has an absolute path; nothing was unpacked")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SparcEvalError(f"archive {archive}: member {name!r} would land outside the target folder; nothing was unpacked")
    return PurePosixPath(*parts) if parts else None


class _Budget:
    """Counts unpacked bytes against the limits (the total, and the ratio to the archive's own size)."""

    def __init__(self, archive: Path, limits: UnpackLimits):
        self.archive = archive
        self.limits = limits
        self.total = 0
        self.members = 0
        self.cap = min(limits.max_bytes, int(max(archive.stat().st_size, 1) * limits.max_ratio))

    def member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise SparcEvalError(
                f"archive {self.archive} holds more than {self.limits.max_members} members; refused, nothing was unpacked"
            )

    def add(self, n: int, name: str) -> None:
        self.total += n
        if self.total > self.cap:
            raise SparcEvalError(
                f"archive {self.archive} unpacks to more than {self.cap} bytes at member {name!r} "
                f"(bounds: {self.limits.max_bytes} bytes in all, {self.limits.max_ratio:g}x the archive's size); "
                "refused as a decompression bomb, nothing was unpacked"
            )


def _copy_stream(src, dest: Path, budget: _Budget, name: str, declared: int | None) -> None:
    written = 0
    with open(dest, "xb") as out:
        while block := src.read(_CHUNK):
            written += len(block)
            if declared is not None and written > declared:
                raise SparcEvalError(
                    f"archive {budget.archive}: member {name!r} inflates past its declared size of {declared} bytes; "
                    "refused, nothing was unpacked"
                )
            budget.add(len(block), name)
            out.write(block)


def _write_member(staging: Path, rel: PurePosixPath) -> Path:
    dest = staging.joinpath(*rel.parts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def _unpack_zip(archive: Path, staging: Path, budget: _Budget, select: Callable[[PurePosixPath], PurePosixPath | None]) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SparcEvalError(f"archive {archive} is not a readable zip file ({exc})") from None
    with zf:
        infos = zf.infolist()
        checked = []
        for info in infos:  # check every member before writing any
            budget.member()
            rel = member_path(info.filename, archive)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise SparcEvalError(
                    f"archive {archive}: member {info.filename!r} is a symbolic link; refused, nothing was unpacked"
                )
            # Zips written without Unix file types (Windows tools, Python's writestr) carry no S_IFMT bits.
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise SparcEvalError(
                    f"archive {archive}: member {info.filename!r} is not a regular file; refused, nothing was unpacked"
                )
            if info.flag_bits & 0x1:
                raise SparcEvalError(f"archive {archive}: member {info.filename!r} is encrypted; refused, nothing was unpacked")
            checked.append((info, rel))
        for info, rel in checked:
            if rel is None:
                continue
            target = select(rel)
            if target is None:
                continue
            if info.is_dir():
                staging.joinpath(*target.parts).mkdir(parents=True, exist_ok=True)
                continue
            try:
                with zf.open(info) as src:
                    _copy_stream(src, _write_member(staging, target), budget, info.filename, info.file_size)
            except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise SparcEvalError(
                    f"archive {archive}: member {info.filename!r} is corrupt ({exc}); nothing was unpacked"
                ) from None


def _unpack_tar(archive: Path, staging: Path, budget: _Budget, select: Callable[[PurePosixPath], PurePosixPath | None]) -> None:
    try:
        # Stream mode reads members in order without an index, so a 6 GB tar is read once.
        tf = tarfile.open(archive, mode="r|*")
    except (tarfile.TarError, OSError) as exc:
        raise SparcEvalError(f"archive {archive} is not a readable tar or zip file ({exc})") from None
    with tf:
        try:
            for member in tf:
                budget.member()
                rel = member_path(member.name, archive)
                if member.issym() or member.islnk():
                    kind = "symbolic" if member.issym() else "hard"
                    raise SparcEvalError(
                        f"archive {archive}: member {member.name!r} is a {kind} link to {member.linkname!r}; "
                        "refused, nothing was unpacked"
                    )
                if not (member.isfile() or member.isdir()):
                    raise SparcEvalError(
                        f"archive {archive}: member {member.name!r} is a device, FIFO or other special file; "
                        "refused, nothing was unpacked"
                    )
                if rel is None:
                    continue
                target = select(rel)
                if target is None:
                    continue
                if member.isdir():
                    staging.joinpath(*target.parts).mkdir(parents=True, exist_ok=True)
                    continue
                src = tf.extractfile(member)
                _copy_stream(src, _write_member(staging, target), budget, member.name, member.size)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            if isinstance(exc, FileExistsError):
                raise SparcEvalError(f"archive {archive} holds member {exc.filename!r} twice; nothing was unpacked") from None
            raise SparcEvalError(f"archive {archive} is corrupt or truncated ({exc}); nothing was unpacked") from None


def unpack(
    archive: str | os.PathLike,
    staging: str | os.PathLike,
    *,
    limits: UnpackLimits = UnpackLimits(),
    select: Callable[[PurePosixPath], PurePosixPath | None] | None = None,
) -> int:
    """Unpack `archive` into the empty folder `staging`; returns the bytes unpacked.

    `select(relative member path)` returns where (relative to staging) a member goes, or None to skip it;
    by default every member keeps its own path. Raises SparcEvalError on any unsafe member, leaving
    whatever was written in `staging` for the caller to remove (see `staged`).
    """
    archive, staging = Path(archive), Path(staging)
    budget = _Budget(archive, limits)
    choose = select or (lambda rel: rel)

    def checked_select(rel: PurePosixPath) -> PurePosixPath | None:
        target = choose(rel)
        return None if target is None else member_path(str(target), archive)

    if _is_zip(archive):
        _unpack_zip(archive, staging, budget, checked_select)
    else:
        _unpack_tar(archive, staging, budget, checked_select)
    return budget.total


@contextlib.contextmanager
def staged(beside: Path) -> Iterator[Path]:
    """A fresh temporary folder beside `beside` (one file system, so renames out of it are atomic), removed on
    exit with the folders made to hold it when they are left empty; temporaries a killed run left beside the same
    path are removed first (fileio.temporary_sibling)."""
    made = [p for p in (beside.parent, *beside.parent.parents) if not p.exists()]
    folder = temporary_sibling(beside, folder=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for parent in made:  # innermost first
            with contextlib.suppress(OSError):
                parent.rmdir()


def move_into_place(src: Path, dest: Path, *, replace: bool = False) -> None:
    """Rename `src` onto `dest`. A folder onto an existing folder merges entry by entry (COCO's 2014 and 2017
    annotation zips share `annotations/`); an existing file is replaced only when `replace`."""
    if not dest.exists() and not dest.is_symlink():
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        return
    if src.is_dir() and dest.is_dir() and not dest.is_symlink():
        for child in sorted(src.iterdir()):
            move_into_place(child, dest / child.name, replace=replace)
        return
    if not replace:
        raise SparcEvalError(f"{dest} already exists; pass --force to replace it")
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    else:
        dest.unlink()
    os.replace(src, dest)
