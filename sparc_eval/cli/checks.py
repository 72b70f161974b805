"""Option checks every command runs before any work: ranges, seeds, folders to read and folders to write.

Each failure is a SparcEvalError naming the option and its value (one line, exit code 2), so that a bad
`--num-workers` or an `--out` that is a file is found in the first second, not after an hour of training.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from sparc_eval.errors import SparcEvalError
from sparc_eval.schema import MAX_SEED

MIB = 1 << 20


def at_least(option: str, value: int | float | None, minimum: int | float) -> None:
    """`value` >= `minimum` (None: the option was not given)."""
    if value is not None and not value >= minimum:
        raise SparcEvalError(f"{option} must be at least {minimum}, got {value}")


def workers(option: str, value: int | None) -> None:
    """DataLoader worker processes: 0 (the main process) up to four per CPU; past that a typo forks thousands."""
    between(option, value, 0, 4 * (os.cpu_count() or 1))


def between(option: str, value: int | float | None, low: int | float, high: int | float) -> None:
    if value is not None and not low <= value <= high:
        raise SparcEvalError(f"{option} must be between {low} and {high}, got {value}")


def finite(option: str, value: float | None, *, minimum: float | None = None) -> None:
    """A finite number (NaN and inf refused), at least `minimum` when given."""
    if value is None:
        return
    if not math.isfinite(value):
        raise SparcEvalError(f"{option} must be a finite number, got {value}")
    if minimum is not None:
        at_least(option, value, minimum)


def seed(option: str, value: int) -> None:
    between(option, value, 0, MAX_SEED)


def one_of(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SparcEvalError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


def existing_folder(option: str, path: Path) -> None:
    """A folder to read: it must exist and be a folder."""
    if not path.exists():
        raise SparcEvalError(f"{option} {path} does not exist")
    if not path.is_dir():
        raise SparcEvalError(f"{option} {path} is a file, not a folder")


def existing_file(option: str, path: Path) -> None:
    if not path.exists():
        raise SparcEvalError(f"{option} {path} does not exist")
    if path.is_dir():
        raise SparcEvalError(f"{option} {path} is a folder, not a file")


def data_folder(option: str, path: Path) -> None:
    """A folder that is read and may be filled on first use (--data-dir): never a file; created later if missing."""
    if path.exists() and not path.is_dir():
        raise SparcEvalError(f"{option} {path} is a file, not a folder")
    if not path.exists():
        _writable_ancestor(option, path)


def output_folder(option: str, path: Path, *, free_mib: int = 0, must_not_exist: bool = False) -> None:
    """A folder the command will write into: not a file, creatable and writable, with `free_mib` MiB free."""
    if path.exists() and not path.is_dir():
        raise SparcEvalError(f"{option} {path} is a file, not a folder")
    if must_not_exist and path.exists():
        raise SparcEvalError(f"{option} {path} already exists; choose another or remove it")
    ancestor = _writable_ancestor(option, path)
    if free_mib:
        free(option, ancestor, free_mib)


def output_file(option: str, path: Path, *, free_mib: int = 0) -> None:
    """A file the command will write: not a folder, in a folder that is (or can be made) writable."""
    if path.is_dir():
        raise SparcEvalError(f"{option} {path} is a folder, not a file")
    ancestor = _writable_ancestor(option, path.parent)
    if free_mib:
        free(option, ancestor, free_mib)


def free(option: str, path: Path, need_mib: int) -> None:
    """At least `need_mib` MiB free on the file system of `path` (an existing folder)."""
    try:
        available = shutil.disk_usage(path).free
    except OSError:
        return  # a file system that cannot say: the writers' own errors name the path if it fills up
    if available < need_mib * MIB:
        raise SparcEvalError(
            f"{option} {path}: only {available / MIB:.0f} MiB free on its file system, this command needs about {need_mib} MiB"
        )


def _writable_ancestor(option: str, path: Path) -> Path:
    """The nearest existing folder at or above `path`, which must be a writable folder (so `path` can be made)."""
    current = path.absolute()
    while not current.exists():
        if current.parent == current:
            break
        current = current.parent
    if not current.is_dir():
        raise SparcEvalError(f"{option} {path}: {current} is a file, so the folder cannot be made")
    if not os.access(current, os.W_OK | os.X_OK):
        raise SparcEvalError(f"{option} {path}: {current} is not writable")
    return current
