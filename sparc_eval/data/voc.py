"""VOCdevkit segmentation ("voc"): Pascal VOC layout, or Pascal Context 59 as mmsegmentation lays it out.

`root` is VOCdevkit/<year or name>. Layout "voc": JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
ImageSets/Segmentation/<split>.txt, labels 0..20 with 255 = ignore. Layout "context":
SegmentationClassContext/<id>.png, ImageSets/SegmentationContext/<split>.txt, labels 0..59 where 0 is
"unlabelled": reduced as mmseg's reduce_zero_label does (0 -> 255, k -> k-1), leaving 59 classes.
Label PNGs are read as index images (palette "P" or grey "L"), never converted to RGB.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from sparc_eval.data.common import (
    ImageDataset,
    open_image,
    read_lines,
    require_dir,
    require_images,
    require_nonempty,
    resolve,
)
from sparc_eval.data.layout import Need, file_need, folder_needs, readable
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import inside

IGNORE = 255
VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
CONTEXT59_CLASSES = (
    "aeroplane",
    "bag",
    "bed",
    "bedclothes",
    "bench",
    "bicycle",
    "bird",
    "boat",
    "book",
    "bottle",
    "building",
    "bus",
    "cabinet",
    "car",
    "cat",
    "ceiling",
    "chair",
    "cloth",
    "computer",
    "cow",
    "cup",
    "curtain",
    "dog",
    "door",
    "fence",
    "floor",
    "flower",
    "food",
    "grass",
    "ground",
    "horse",
    "keyboard",
    "light",
    "motorbike",
    "mountain",
    "mouse",
    "person",
    "plate",
    "platform",
    "pottedplant",
    "road",
    "rock",
    "sheep",
    "shelves",
    "sidewalk",
    "sign",
    "sky",
    "snow",
    "sofa",
    "table",
    "track",
    "train",
    "tree",
    "truck",
    "tvmonitor",
    "wall",
    "water",
    "window",
    "wood",
)
_LAYOUTS = {  # layout: (label folder, image-set folder, built-in classes, reduce_zero_label)
    "voc": ("SegmentationClass", "ImageSets/Segmentation", VOC_CLASSES, False),
    "context": ("SegmentationClassContext", "ImageSets/SegmentationContext", CONTEXT59_CLASSES, True),
}


class SegmentationDataset(ImageDataset):
    """Items {image, label: LongTensor [H,W] in [0, num_classes) or 255, image_id, path}; attr `classnames`."""

    def __init__(self, paths, label_paths, ids, classnames, reduce_zero_label, transform=None):
        super().__init__(paths, transform)
        self.label_paths = label_paths
        self.image_ids = ids
        self.classnames = list(classnames)
        self.reduce_zero_label = reduce_zero_label

    def read_label(self, index: int, size: tuple[int, int]) -> np.ndarray:
        path = self.label_paths[index]
        try:
            with Image.open(path) as img:
                mode, label_size = img.mode, img.size
                label = np.array(img) if mode in ("P", "L") else None
        except (OSError, SyntaxError, ValueError) as exc:
            raise SparcEvalError(f"label {path} does not decode ({' '.join(str(exc).split())})") from None
        if label is None:
            raise SparcEvalError(f"label {path} is a {mode} image; expected an index PNG (palette 'P' or grey 'L')")
        if label_size != size:
            raise SparcEvalError(f"label {path} is {label_size[0]}x{label_size[1]} but its image is {size[0]}x{size[1]}")
        label = label.astype(np.int64)
        if self.reduce_zero_label:
            label = np.where((label == 0) | (label == IGNORE), IGNORE, label - 1)
        bad = (label >= len(self.classnames)) & (label != IGNORE)
        if bad.any():
            value = int(label[bad][0]) + int(self.reduce_zero_label)
            raise SparcEvalError(
                f"label {path} holds value {value}, outside the {len(self.classnames)} classes (and not {IGNORE})"
            )
        return label

    def __getitem__(self, index: int) -> dict:
        image = open_image(self.paths[index])
        label = torch.from_numpy(self.read_label(index, image.size))
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": label, "image_id": self.image_ids[index], "path": str(self.paths[index])}


def voc_files(root: Path, split: str, layout: str) -> tuple[Path, Path]:
    """(split file, label folder) of `layout` under VOCdevkit/<name> `root`."""
    if layout not in _LAYOUTS:
        raise SparcEvalError(f"unknown voc layout {layout!r}; known: {', '.join(_LAYOUTS)}")
    label_dir, sets_dir, _, _ = _LAYOUTS[layout]
    return root / sets_dir / f"{split}.txt", root / label_dir


def voc_item_paths(root: Path, label_dir: Path, ids: list[str], split_file: Path) -> tuple[list[Path], list[Path]]:
    """The image and the label PNG of each id; an id names a file, never a path out of the tree."""
    what = f"split file {split_file}: image id"
    return [inside(root / "JPEGImages", f"{i}.jpg", what, follow_links=False) for i in ids], [
        inside(label_dir, f"{i}.png", what, follow_links=False) for i in ids
    ]


def layout_voc(root: Path, split: str, *, layout: str = "voc", classnames: str | None = None) -> list[Need]:
    """What "voc" reads (sparc_eval.data.layout): the split file, and the image and label of every id it lists."""
    split_file, label_dir = voc_files(root, split, layout)
    needs = [file_need(resolve(root, classnames), "class-name file")] if classnames else []
    needs.append(file_need(split_file, "split file"))
    if not readable(split_file):
        return [*needs, Need(root / "JPEGImages", "image folder", folder=True), Need(label_dir, "label folder", folder=True)]
    ids = [line.split()[0] for line in read_lines(split_file, "split file")]
    images, labels = voc_item_paths(root, label_dir, ids, split_file)
    return [*needs, *folder_needs(images), *folder_needs(labels, "label folder")]


def read_voc(
    root: Path,
    split: str,
    *,
    transform: Callable | None = None,
    layout: Literal["voc", "context"] = "voc",
    classnames: str | None = None,
) -> SegmentationDataset:
    """Options: `layout` ("voc" | "context"), `classnames` (file, one per line, index order; else built in)."""
    split_file, label_dir = voc_files(root, split, layout)
    _, _, names, reduce = _LAYOUTS[layout]
    if classnames:
        names = read_lines(resolve(root, classnames), "class-name file")
    require_dir(root / "JPEGImages", "image folder")
    ids = [line.split()[0] for line in read_lines(split_file, "split file")]
    require_nonempty(ids, split, split_file)
    paths, labels = voc_item_paths(root, label_dir, ids, split_file)
    require_images(paths, split_file)
    require_images(labels, split_file)
    return SegmentationDataset(paths, labels, ids, names, reduce, transform)


read_voc.layout = layout_voc  # type: ignore[attr-defined]
