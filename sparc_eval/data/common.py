"""Pieces every reader shares: path resolution, loud file checks, image decoding, the caption dataset.

Every failure is a SparcEvalError whose one sentence names the file at fault.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from sparc_eval.errors import SparcEvalError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def resolve(root: Path, value: str | os.PathLike, split: str | None = None) -> Path:
    """An option path: absolute as given, else relative to `root`; '{split}' in it is replaced by the split."""
    text = str(value)
    if split is not None:
        text = text.replace("{split}", split)
    path = Path(text).expanduser()
    return path if path.is_absolute() else root / path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise SparcEvalError(f"{what} {path} does not exist")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise SparcEvalError(f"{what} {path} does not exist")
    return path


def load_json(path: Path, what: str = "annotation file") -> Any:
    require_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparcEvalError(f"{what} {path} is not valid JSON ({exc})") from None


def read_lines(path: Path, what: str) -> list[str]:
    require_file(path, what)
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def require_images(paths: Iterable[Path], source: Path | str) -> None:
    """Every path must be an existing file; each folder is listed once (fast on 100k-image folders)."""
    listing: dict[Path, set[str]] = {}
    missing: list[Path] = []
    for path in paths:
        folder = path.parent
        if folder not in listing:
            listing[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
        if path.name not in listing[folder]:
            missing.append(path)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SparcEvalError(f"{source} refers to image {missing[0]}, which does not exist{more}")


def require_nonempty(items: list, split: str, source: Path | str) -> None:
    if not items:
        raise SparcEvalError(f"split {split!r} of {source} holds no images")


def open_image(path: Path) -> Image.Image:
    """Decode an image file to RGB, or raise a SparcEvalError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split())
        raise SparcEvalError(f"image {path} does not decode ({reason})") from None


class ImageDataset(Dataset):
    """Base: a list of image paths and the model's `transform` (PIL -> tensor), applied when given."""

    def __init__(self, paths: list[Path], transform: Callable | None = None) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Any:
        img = open_image(self.paths[index])
        return self.transform(img) if self.transform is not None else img


class CaptionDataset(ImageDataset):
    """Images with their captions (Karpathy splits, COCO captions): items {image, image_id, captions, path}.

    `captions_per_image` is the smallest caption count of any image (real Karpathy COCO has a few images
    with 6 or 7 captions; items keep all of them).
    """

    def __init__(
        self, paths: list[Path], image_ids: list[int], captions: list[list[str]], source: Path, transform: Callable | None = None
    ) -> None:
        super().__init__(paths, transform)
        self.image_ids = image_ids
        self.captions = captions
        for path, caps in zip(paths, captions):
            if not caps:
                raise SparcEvalError(f"{source} has no caption for image {path}")
        self.captions_per_image = min(len(c) for c in captions)

    def __getitem__(self, index: int) -> dict:
        return {
            "image": self.load(index),
            "image_id": self.image_ids[index],
            "captions": self.captions[index],
            "path": str(self.paths[index]),
        }


def group_by(items: Iterable[dict], key: str) -> dict[Any, list[dict]]:
    out: dict[Any, list[dict]] = defaultdict(list)
    for item in items:
        out[item[key]].append(item)
    return out
