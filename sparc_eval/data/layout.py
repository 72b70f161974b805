"""What a reader will read: the files and folders of one split, as the layout doctor lists them.

A reader may carry a `layout` attribute: a function `layout(root, split, **the reader's options) -> list[Need]`
that names every file and folder the reader opens for that split, computing image paths with the same helper
the reader itself uses (so the two cannot drift). It reads index files (annotation JSON, split lists) when they
exist, to list the images they refer to; a missing index file is itself a Need, and the images behind it are
then known only as their folder. `sparc-eval data check --task NAME` calls it (sparc_eval.tasks.doctor).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Need:
    """One file or folder a reader opens. For a folder, `files` are the names inside it the split reads (None:
    the folder as a whole, e.g. because the index that names its files is missing)."""

    path: Path
    what: str
    folder: bool = False
    files: tuple[str, ...] | None = None

    def missing(self) -> list[str]:
        """Names of what is absent: [path] when the file or folder itself is, else the absent `files`."""
        if not (self.path.is_dir() if self.folder else self.path.is_file()):
            return [str(self.path)]
        if not self.files:
            return []
        present = set(os.listdir(self.path))
        return [name for name in self.files if name not in present]


def file_need(path: Path, what: str) -> Need:
    return Need(path, what)


def folder_needs(paths: Iterable[Path], what: str = "image folder") -> list[Need]:
    """One folder Need per parent folder of `paths`, listing the file names read in it (first-seen order)."""
    by_folder: dict[Path, list[str]] = {}
    for path in paths:
        by_folder.setdefault(path.parent, []).append(path.name)
    return [Need(folder, what, folder=True, files=tuple(dict.fromkeys(names))) for folder, names in by_folder.items()]


def readable(path: Path) -> bool:
    """Whether an index file is there to be read (the layout then lists what it names)."""
    return path.is_file()
