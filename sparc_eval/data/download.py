"""`sparc-eval data get`: fetch a dataset from its sources list, verify it, unpack it into the layout a card reads.

The sources list (sparc_eval/builtin/sources.yaml, or the file given with `--sources`) names, per dataset, the
files to fetch (URL, file name, size, checksums and how far those are trusted) and where each one goes. For
each file `get` then:

1. streams it into ROOT/.downloads/NAME.part with a progress bar, resuming an interrupted download with an
   HTTP Range request (a server that ignores the range restarts it from zero) and retrying a dropped
   connection `retries` times;
2. checks its size, and its sha256 / md5 when the list marks them verified, before anything is unpacked; a
   mismatch removes the download and stops with one line (exit 2);
3. unpacks it as hostile input (sparc_eval.data.archives) into a temporary folder beside its destination and
   renames the result into place, so a tree is either complete or absent.

Paths in a sources list are relative to ROOT and never lead outside it. Datasets that need a login (ImageNet,
Flickr30k) are listed with where to obtain them and the `data prepare` command that builds their layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from sparc_eval.builtin import HERE as BUILTIN_DIR
from sparc_eval.data.archives import UnpackLimits, move_into_place, staged, unpack
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import inside, read_yaml_mapping
from sparc_eval.schema import NonEmpty, StrictModel, validate

BUILTIN_SOURCES = BUILTIN_DIR / "sources.yaml"
DOWNLOADS = ".downloads"  # ROOT/.downloads holds partial and finished downloads until they are unpacked
_CHUNK = 1 << 20
_TIMEOUT_S = 60


def _relative(value: str) -> str:
    """A path inside ROOT as a sources list writes it: relative, no `..`, no backslashes."""
    path = PurePosixPath(value)
    if not value or "\\" in value or "\x00" in value or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{value!r} must be a relative path inside the data root (no '..', not absolute)")
    return value


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Md5 = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=200)]


class FileSource(StrictModel):
    name: FileName
    url: NonEmpty
    size: Annotated[int, Field(ge=0)] | None = None
    sha256: Sha256 | None = None
    md5: Md5 | None = None
    verified: bool = False
    checksum_source: str = ""
    unpack: str | None = None
    pick: dict[str, str] | None = None
    place: str | None = None

    @model_validator(mode="after")
    def _check(self) -> FileSource:
        if sum(x is not None for x in (self.unpack, self.pick, self.place)) > 1:
            raise ValueError(f"file {self.name!r} takes at most one of unpack, pick, place")
        for value in [self.unpack, self.place, *(self.pick or {}).values()]:
            if value is not None and value != ".":
                _relative(value)
        for member in self.pick or {}:
            _relative(member)
        if self.verified and not (self.sha256 or self.md5):
            raise ValueError(f"file {self.name!r} is marked verified but lists no sha256 or md5")
        return self


class BuildStep(StrictModel):
    kind: Literal["pascal-context"]
    images: FileName
    labels: FileName


class DatasetSource(StrictModel):
    description: str = ""
    homepage: str = ""
    license: str = ""
    files: list[FileSource] = Field(default_factory=list)
    includes: list[str] = Field(default_factory=list)
    build: BuildStep | None = None
    provides: list[str] = Field(default_factory=list)
    login: str | None = None
    prepare: str | None = None

    @model_validator(mode="after")
    def _check(self) -> DatasetSource:
        for value in self.provides:
            _relative(value)
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError("a dataset lists the same file name twice")
        if self.build is not None:
            missing = {self.build.images, self.build.labels} - set(names)
            if missing:
                raise ValueError(f"build step names file {sorted(missing)[0]!r}, which the dataset does not list")
        if not (self.files or self.includes or self.login):
            raise ValueError("a dataset needs files, includes or login")
        return self


class SourcesFile(StrictModel):
    version: Literal[1]
    datasets: dict[str, DatasetSource]


@dataclass(frozen=True)
class Sources:
    path: Path
    datasets: dict[str, DatasetSource]

    def expand(self, names: list[str]) -> list[str]:
        """The datasets `names` stand for, `includes` expanded, each once, in order."""
        out: list[str] = []

        def visit(name: str, trail: tuple[str, ...]) -> None:
            if name not in self.datasets:
                raise SparcEvalError(f"unknown dataset {name!r} in {self.path}; known: {', '.join(sorted(self.datasets))}")
            if name in trail:
                raise SparcEvalError(f"sources list {self.path}: dataset {name!r} includes itself")
            ds = self.datasets[name]
            for child in ds.includes:
                visit(child, (*trail, name))
            if (ds.files or ds.login) and name not in out:
                out.append(name)

        for name in names:
            visit(name, ())
        return out

    def provider_of(self, rel: str) -> str | None:
        """The dataset whose `provides` holds ROOT-relative path `rel` (or a folder above it)."""
        target = PurePosixPath(rel)
        for name, ds in self.datasets.items():
            for provided in ds.provides:
                path = PurePosixPath(provided)
                if target == path or path in target.parents:
                    return name
        return None

    def command(self, name: str, root: Path) -> str:
        """The command that gets dataset `name` into `root` (`data prepare ...` for a login-only dataset)."""
        ds = self.datasets[name]
        if ds.login:
            return (ds.prepare or f"see {ds.homepage}").replace("{root}", str(root))
        flag = "" if self.path == BUILTIN_SOURCES else f" --sources {self.path}"
        return f"sparc-eval data get {name} --root {root}{flag}"


def load_sources(path: str | os.PathLike | None = None) -> Sources:
    """The sources list at `path` (default: the one shipped with sparc-eval), validated strictly."""
    path = Path(path) if path is not None else BUILTIN_SOURCES
    raw = read_yaml_mapping(path, "sources list")
    parsed = validate(SourcesFile, raw, f"sources list {path}")
    bad = [name for name in parsed.datasets if not re.match(r"^[a-z0-9][a-z0-9._-]*$", name)]
    if bad:
        raise SparcEvalError(f"sources list {path}: dataset name {bad[0]!r} must be lower-case letters, digits, '.', '_', '-'")
    return Sources(path, dict(parsed.datasets))


# ------------------------------------------------------------------------------ downloading


class _Interrupted(Exception):
    """The connection dropped or timed out; the .part file keeps what arrived."""


@dataclass
class _Hashes:
    sha256: Any
    md5: Any

    @classmethod
    def of_prefix(cls, path: Path) -> _Hashes:
        hashes = cls(hashlib.sha256(), hashlib.md5())
        if path.exists():
            with open(path, "rb") as f:
                while block := f.read(_CHUNK):
                    hashes.update(block)
        return hashes

    def update(self, block: bytes) -> None:
        self.sha256.update(block)
        self.md5.update(block)


def _human(n: int | None) -> str:
    if n is None:
        return "unknown size"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (two `data get` runs never write the same .part file)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SparcEvalError(
                f"another sparc-eval process is downloading {path.with_suffix('')}; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while still held, so no other process is locking this file
            fcntl.flock(handle, fcntl.LOCK_UN)


def _request(url: str, start: int) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "sparc-eval data get"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=_TIMEOUT_S)  # noqa: S310 (URLs come from the sources list)


def _transfer(src: FileSource, part: Path, progress: Any, task: Any) -> None:
    """Append the rest of `src` to `part` (resuming at its current size); raises _Interrupted on a dropped link."""
    start = part.stat().st_size if part.exists() else 0
    if src.size is not None and start > src.size:
        part.unlink()
        start = 0
    try:
        response = _request(src.url, start)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start and src.size == start:
            return  # already complete
        if exc.code == 416 and start:
            part.unlink()
            return _transfer(src, part, progress, task)
        raise SparcEvalError(f"download of {src.name} from {src.url} failed: HTTP {exc.code} {exc.reason}") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Interrupted(f"could not connect ({reason})") from None
    with response:
        status = getattr(response, "status", 200)
        mode = "ab"
        if start and status == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != start:
                raise SparcEvalError(
                    f"server for {src.url} answered a resume at byte {start} with another range; delete {part} and retry"
                )
        elif start:
            mode, start = "wb", 0  # the server ignored the range: start again
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None and length.isdigit() else None
        if src.size is not None and total is not None and total != src.size:
            raise SparcEvalError(
                f"server for {src.name} announces {total} bytes but the sources list says {src.size}; "
                f"the file at {src.url} is not the one listed"
            )
        progress.update(task, total=src.size or total, completed=start)
        with open(part, mode) as out:
            while True:
                try:
                    block = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Interrupted(f"connection lost ({type(exc).__name__})") from None
                if not block:
                    break
                out.write(block)
                progress.update(task, advance=len(block))
        done = part.stat().st_size
        if total is not None and done < total:
            raise _Interrupted(f"connection closed after {done} of {total} bytes")


def fetch(src: FileSource, downloads: Path, *, retries: int = 3, wait_s: float = 1.0) -> Path:
    """The complete download of `src` in `downloads` (fetched or resumed as needed); checks are `verify`'s."""
    from sparc_eval.progress import make_progress

    final = downloads / src.name
    if final.is_file():
        return final
    part = downloads / f"{src.name}.part"
    with _lock(downloads / f"{src.name}.lock"), make_progress() as progress:
        task = progress.add_task(src.name, total=src.size, info=_human(src.size))
        attempt = 0
        while True:
            try:
                _transfer(src, part, progress, task)
                break
            except _Interrupted as exc:
                have = part.stat().st_size if part.exists() else 0
                if attempt >= retries:
                    raise SparcEvalError(
                        f"download of {src.name} from {src.url} stopped after {have} bytes ({exc}); "
                        "run the same command again to resume"
                    ) from None
                attempt += 1
                time.sleep(wait_s * 2 ** (attempt - 1))
        if not part.exists():
            part.touch()  # an empty file that the server sent as such
        os.replace(part, final)
    return final


def verify(src: FileSource, path: Path) -> str:
    """Check `path` against `src`; returns a sentence saying what was verified. A mismatch of the size, or of a
    checksum marked verified, removes the file and raises SparcEvalError (nothing has been unpacked yet)."""
    size = path.stat().st_size
    if src.size is not None and size != src.size:
        path.unlink()
        raise SparcEvalError(
            f"{src.name} is {size} bytes but the sources list says {src.size}; the download was removed and nothing was unpacked"
        )
    hashes = _Hashes.of_prefix(path)
    actual = {"sha256": hashes.sha256.hexdigest(), "md5": hashes.md5.hexdigest()}
    listed = {k: v for k, v in (("sha256", src.sha256), ("md5", src.md5)) if v}
    wrong = [k for k, v in listed.items() if actual[k] != v]
    if src.verified and wrong:
        path.unlink()
        raise SparcEvalError(
            f"{src.name} has {wrong[0]} {actual[wrong[0]]} but the sources list says {listed[wrong[0]]}; "
            "the download was removed and nothing was unpacked"
        )
    sized = f"size {size} bytes" + (" verified" if src.size is not None else " (no size listed to check)")
    if src.verified:
        return f"{src.name}: {sized}; {' and '.join(listed)} verified"
    if not listed:
        return f"{src.name}: {sized}; no checksum listed, so nothing else was verified (sha256 {actual['sha256']})"
    agree = "equals" if not wrong else "DIFFERS FROM"
    source = f" ({src.checksum_source})" if src.checksum_source else ""
    return (
        f"{src.name}: verified size only; its {' and '.join(listed)} {agree} the listed value{source}, "
        f"which sparc-eval has not verified and so does not enforce (sha256 {actual['sha256']})"
    )


# ------------------------------------------------------------------------------ installing


def _present(root: Path, ds: DatasetSource) -> bool:
    return bool(ds.provides) and all((root / p).exists() for p in ds.provides)


def _stage_file(
    src: FileSource, path: Path, root: Path, stack: contextlib.ExitStack, *, keep: bool, limits: UnpackLimits
) -> list[tuple[Path, Path]]:
    """Unpack (or copy) one downloaded file into temporary folders beside its destinations; returns the
    (staged path, destination) pairs to rename into place once every file of the dataset has been staged."""
    if src.place is not None:
        dest = inside(root, src.place, f"place of {src.name}")
        if not keep:
            return [(path, dest)]
        import shutil

        tmp = stack.enter_context(staged(dest))
        shutil.copyfile(path, tmp / src.name)
        return [(tmp / src.name, dest)]
    if src.unpack is not None:
        into = root if src.unpack == "." else inside(root, src.unpack, f"unpack folder of {src.name}")
        tmp = stack.enter_context(staged(into / src.name))
        unpack(path, tmp, limits=limits)
        return [(entry, into / entry.name) for entry in sorted(tmp.iterdir())]
    if src.pick is not None:
        wanted = {PurePosixPath(member): target for member, target in src.pick.items()}
        tmp = stack.enter_context(staged(root / src.name))
        unpack(path, tmp, limits=limits, select=lambda rel: rel if rel in wanted else None)
        pairs = []
        for member, target in wanted.items():
            got = tmp.joinpath(*member.parts)
            if not got.is_file():
                raise SparcEvalError(f"archive {path} has no member {str(member)!r}; nothing was installed")
            pairs.append((got, inside(root, target, f"pick target of {src.name}")))
        return pairs
    return []


def _remove_downloads(paths: Any, downloads: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        downloads.rmdir()


@dataclass
class GetReport:
    dataset: str
    status: Literal["installed", "present", "login"]
    lines: list[str]


def get_dataset(
    name: str,
    root: str | os.PathLike,
    sources: Sources,
    *,
    force: bool = False,
    keep_archives: bool = False,
    retries: int = 3,
    limits: UnpackLimits = UnpackLimits(),
) -> GetReport:
    """Fetch, verify and install one dataset of `sources` (already expanded: no `includes`) under `root`."""
    root = Path(root)
    ds = sources.datasets[name]
    if ds.login:
        return GetReport(name, "login", [f"{ds.login.strip()}: {sources.command(name, root)}"])
    if _present(root, ds) and not force:
        where = ", ".join(str(root / p) for p in ds.provides[:3])
        return GetReport(name, "present", [f"{name} is already in place ({where}); --force fetches it again"])
    if not force:
        partial = [p for p in ds.provides if (root / p).exists()]
        if partial:
            raise SparcEvalError(
                f"{root / partial[0]} exists but {name} is not complete there; move it away or pass --force to replace it"
            )
    if root.exists() and not root.is_dir():
        raise SparcEvalError(f"--root {root} is a file, not a folder")
    downloads = root / DOWNLOADS
    lines, paths = [], {}
    try:
        for src in ds.files:
            path = fetch(src, downloads, retries=retries)
            lines.append(verify(src, path))
            paths[src.name] = path
    except SparcEvalError:
        with contextlib.suppress(OSError):
            downloads.rmdir()  # kept only while it holds a partial download to resume
        raise
    try:
        if ds.build is not None:
            from sparc_eval.data.prepare import build_pascal_context

            build_pascal_context(paths[ds.build.images], paths[ds.build.labels], root, force=force, limits=limits)
        with contextlib.ExitStack() as stack:
            moves = [
                m for src in ds.files for m in _stage_file(src, paths[src.name], root, stack, keep=keep_archives, limits=limits)
            ]
            for staged_path, dest in moves:
                move_into_place(staged_path, dest, replace=force)
    except SparcEvalError:
        if not keep_archives:  # a refused archive is not kept either: nothing is left behind
            _remove_downloads(paths.values(), downloads)
        raise
    if not keep_archives:
        _remove_downloads(paths.values(), downloads)
    lines.append(f"{name}: installed under {root} ({', '.join(ds.provides) or 'see the sources list'})")
    return GetReport(name, "installed", lines)
