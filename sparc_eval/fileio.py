"""Atomic writes and content hashes shared by every module that writes user-visible files, and the one bounded
reader of the YAML cards and JSON records users hand to sparc-eval (size limit, UTF-8, no YAML aliases)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sparc_eval.errors import SparcEvalError

# Temporaries older than this process and not owned by a live process on this host belong to an interrupted write.
_PROCESS_START = time.time()
# A temporary of a process on another host (shared file system) is left alone for this long.
_FOREIGN_TEMP_AGE_S = 24 * 3600


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# mkstemp creates files readable by the owner only; published files (leaderboards, records) get the usual mode.
_FILE_MODE = 0o666 & ~_umask()


def inside(root: str | os.PathLike, relative: str | os.PathLike, what: str, *, follow_links: bool = True) -> Path:
    """`root / relative`, refused with one line naming `what` and the value when it leads outside `root`.

    Every path built from input (a card's name, a manifest entry, a record's samples_file, an artifact name)
    goes through here. Neither an absolute value nor a `../` escapes. With `follow_links` (what sparc-eval
    writes or trusts: records, artifacts, cards) both sides are resolved, so a link inside the root does not
    escape either. Dataset files are read with `follow_links=False`: a data tree whose images are links to
    another disk is a user's own layout (archives with links are refused when unpacked, data/archives.py).
    The returned path is `root / relative` as given.
    """
    text = os.fspath(relative) if isinstance(relative, (str, os.PathLike)) else None
    if not isinstance(text, str) or not text or "\x00" in text:
        raise SparcEvalError(f"{what} {relative!r} is not a usable relative path")
    if follow_links:
        base = Path(root).resolve()
        target = (base / text).resolve()
    else:
        base = Path(os.path.abspath(root))
        target = Path(os.path.normpath(base / text))
    if target != base and base not in target.parents:
        raise SparcEvalError(f"{what} {text!r} leads outside {root}")
    return Path(root) / text


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def _owner_tag() -> str:
    """`HOST-PID` of this process, as temporaries are named (host name reduced to letters, digits and -)."""
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


def _may_still_be_written(owner: str) -> bool:
    """Whether the process named by a temporary's owner tag may still be writing it: a live process on this host,
    or any process on another host (a shared file system: its liveness cannot be seen from here)."""
    host, _, pid = owner.rpartition("-")
    if not pid.isdigit():
        return False  # not a tag this module wrote
    if host != _owner_tag().rpartition("-")[0]:
        return True
    return int(pid) != os.getpid() and _pid_alive(int(pid))


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove `.NAME.*.tmp` siblings of `path` that an interrupted write left: older than this process and not
    named after a process that may still be writing (alive on this host; on another host, younger than a day).
    Returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        owner = candidate.name[: -len(".tmp")].rsplit(".", 1)[-1]
        try:
            mtime = candidate.lstat().st_mtime
            if mtime >= _PROCESS_START or (_may_still_be_written(owner) and time.time() - mtime < _FOREIGN_TEMP_AGE_S):
                continue
            shutil.rmtree(candidate) if candidate.is_dir() and not candidate.is_symlink() else candidate.unlink()
        except FileNotFoundError:
            continue  # another process cleaned it first
        removed.append(candidate)
    return removed


def glob_escape(name: str) -> str:
    """`name` with glob metacharacters escaped, for Path.glob."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def temporary_sibling(path: Path, *, folder: bool = False) -> Path:
    """A new private `.NAME.XXXX.HOST-PID.tmp` file (or folder) beside `path`, after removing stale ones of earlier runs."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        options = {"dir": path.parent, "prefix": f".{path.name}.", "suffix": f".{_owner_tag()}.tmp"}
        if folder:
            return Path(tempfile.mkdtemp(**options))
        fd, tmp = tempfile.mkstemp(**options)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    return Path(tmp)


def write_error(path: str | os.PathLike, exc: OSError) -> SparcEvalError:
    """The one-line error for a write of `path` that failed (disk full, no permission, a file where a folder is)."""
    return SparcEvalError(f"could not write {path}: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Readers never see a half-written file, and a failure leaves nothing behind; the temporaries of a write
    that was killed are removed by the next write of the same file.
    """
    path = Path(path)
    tmp_path = temporary_sibling(path)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    except OSError as exc:  # a full disk or a permission, named by the file the user asked for, not its temporary
        raise write_error(path, exc) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_files_atomic(folder: str | os.PathLike, texts: Mapping[str, str]) -> dict[str, Path]:
    """Write several files into `folder` all together or not at all: every temporary is written first (a full
    disk or any error removes them all and replaces nothing), then each is renamed onto its name. Only a kill
    between those renames, a few system calls, can leave a mix of old and new files."""
    folder = Path(folder)
    temps: dict[str, Path] = {}
    try:
        for name, text in texts.items():
            temps[name] = temporary_sibling(folder / name)
            temps[name].write_text(text, encoding="utf-8")
            os.chmod(temps[name], _FILE_MODE)
        for name, tmp in temps.items():
            os.replace(tmp, folder / name)
    except OSError as exc:
        raise write_error(folder / name, exc) from None
    finally:
        for tmp in temps.values():
            if tmp.exists():
                tmp.unlink()
    return {name: folder / name for name in texts}


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Bounds on what sparc-eval reads from user files: a card is a few hundred bytes, a record a few kB (the
# per-sample rows live in their own file), so these leave room while refusing a file meant to exhaust memory.
CARD_MAX_BYTES = 1 << 20  # 1 MiB
RECORD_MAX_BYTES = 64 << 20  # 64 MiB


def read_text_bounded(path: str | os.PathLike, kind: str, max_bytes: int) -> str:
    """The UTF-8 text of `path`, or one SparcEvalError naming it: missing, a folder, unreadable, too big, not UTF-8."""
    from sparc_eval.errors import SparcEvalError

    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise SparcEvalError(f"{kind} {path} does not exist") from None
    except IsADirectoryError:
        raise SparcEvalError(f"{kind} {path} is a folder, not a file") from None
    except OSError as exc:
        raise SparcEvalError(f"{kind} {path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise SparcEvalError(f"{kind} {path} is larger than the {max_bytes // (1 << 20)} MiB a {kind} may take")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SparcEvalError(f"{kind} {path} is not UTF-8 text (byte {exc.start})") from None


def _yaml_loader() -> type:
    """yaml.SafeLoader without aliases (a 600-byte alias bomb expands to gigabytes) and without duplicate keys
    (YAML would silently keep the last one)."""
    import yaml
    from yaml.constructor import ConstructorError

    class CardLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
            if self.check_event(yaml.AliasEvent):
                raise ConstructorError(None, None, "YAML aliases (*name) are not allowed", self.peek_event().start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
            seen: set = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: the base class reports it
                    break
                if duplicate:
                    raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return CardLoader


def read_yaml_mapping(path: str | os.PathLike, kind: str, max_bytes: int = CARD_MAX_BYTES) -> dict[str, Any]:
    """The top-level mapping of a YAML file (a task or checkpoint card), read within bounds (see read_text_bounded,
    _yaml_loader); every failure is one SparcEvalError naming the file."""
    import yaml

    from sparc_eval.errors import SparcEvalError

    text = read_text_bounded(path, kind, max_bytes)
    try:
        raw = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SparcEvalError(f"{kind} {path} is not valid YAML: {problem}{where}") from None
    except RecursionError:
        raise SparcEvalError(f"{kind} {path} nests too deeply to be a {kind}") from None
    if not isinstance(raw, dict):
        raise SparcEvalError(f"{kind} {path} must be a YAML mapping of keys to values")
    return raw


def read_json_object(path: str | os.PathLike, kind: str, max_bytes: int = RECORD_MAX_BYTES) -> dict[str, Any]:
    """The top-level object of a JSON file (a result record), read within bounds; one SparcEvalError naming the file.
    NaN / Infinity literals parse (as floats) so that the record's own checks can name the key that holds one."""
    from sparc_eval.errors import SparcEvalError

    text = read_text_bounded(path, kind, max_bytes)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SparcEvalError(f"{kind} {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise SparcEvalError(f"{kind} {path} nests too deeply to be a {kind}") from None
    if not isinstance(raw, dict):
        raise SparcEvalError(f"{kind} {path} is not a JSON object")
    return raw
