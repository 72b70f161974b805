"""ImageFolder with a class-name file ("imagefolder"): root/{split}/<class folder>/<image>.

The class-name file (option `classnames`, default root/classnames.txt) lists one class per line in label
order. A line is either the class name, whose folder is the name with spaces as underscores
("red circle" -> red_circle/), or "<folder><TAB><class name>" (ImageNet: "n01440764<TAB>tench").
Every folder of the split must belong to a class; a class may have no folder (no images in this split).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sparc_eval.data.common import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    read_lines,
    require_dir,
    require_nonempty,
    resolve,
)
from sparc_eval.data.layout import Need, file_need
from sparc_eval.errors import SparcEvalError


class ImageFolderDataset(ImageDataset):
    """Items {image, label, path}; attrs `classnames` (label order) and `targets` (label of each item)."""

    def __init__(self, paths: list[Path], targets: list[int], classnames: list[str], transform=None) -> None:
        super().__init__(paths, transform)
        self.targets = targets
        self.classnames = classnames

    def __getitem__(self, index: int) -> dict:
        return {"image": self.load(index), "label": self.targets[index], "path": str(self.paths[index])}


def read_classnames(path: Path) -> tuple[list[str], list[str]]:
    """(folder names, class names) from a class-name file."""
    folders, names = [], []
    for line in read_lines(path, "class-name file"):
        folder, _, name = line.partition("\t")
        name = name.strip() or folder
        folders.append(folder.strip() if "\t" in line else name.replace(" ", "_"))
        names.append(name)
    if len(set(folders)) != len(folders):
        raise SparcEvalError(f"class-name file {path} lists a class twice")
    return folders, names


def layout_imagefolder(root: Path, split: str, *, classnames: str | None = None) -> list[Need]:
    """What "imagefolder" reads (sparc_eval.data.layout): the class-name file and the split's class folders."""
    return [
        file_need(resolve(root, classnames or "classnames.txt"), "class-name file"),
        Need(root / split, "split folder", folder=True),
    ]


def read_imagefolder(
    root: Path, split: str, *, transform: Callable | None = None, classnames: str | None = None
) -> ImageFolderDataset:
    """Option: `classnames` (file, relative to root or absolute; default root/classnames.txt)."""
    names_file = resolve(root, classnames or "classnames.txt")
    folders, names = read_classnames(names_file)
    split_dir = require_dir(root / split, "split folder")
    label_of = {folder: i for i, folder in enumerate(folders)}
    paths, targets = [], []
    for sub in sorted(split_dir.iterdir()):
        if sub.name.startswith("."):
            continue
        if not sub.is_dir():
            raise SparcEvalError(f"{sub} is a file where split folder {split_dir} should hold only class folders")
        if sub.name not in label_of:
            raise SparcEvalError(f"class folder {sub} is not listed in class-name file {names_file}")
        for path in sorted(sub.iterdir()):
            if path.name.startswith("."):
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise SparcEvalError(f"{path} is not an image file (extensions read: {', '.join(IMAGE_EXTENSIONS)})")
            paths.append(path)
            targets.append(label_of[sub.name])
    require_nonempty(paths, split, split_dir)
    return ImageFolderDataset(paths, targets, names, transform)


read_imagefolder.layout = layout_imagefolder  # type: ignore[attr-defined]
