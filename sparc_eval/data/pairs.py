"""Image-text pairs for training ("pairs"): CSV or JSONL with columns `image` and `caption`.

`root` is the .csv / .jsonl file itself, or a folder holding `{split}.jsonl` or `{split}.csv`. Image
paths are relative to the pairs file's folder (or absolute). One row per (image, caption).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from sparc_eval.data.common import ImageDataset, require_images, require_nonempty
from sparc_eval.errors import SparcEvalError


class PairsDataset(ImageDataset):
    """Items {image, caption, path}; attrs `image_paths` and `captions`."""

    def __init__(self, paths: list[Path], captions: list[str], transform=None) -> None:
        super().__init__(paths, transform)
        self.image_paths = paths
        self.captions = captions

    def __getitem__(self, index: int) -> dict:
        return {"image": self.load(index), "caption": self.captions[index], "path": str(self.paths[index])}


def _rows(path: Path) -> list[dict]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if path.suffix == ".csv":
                return list(csv.DictReader(f))
            return [json.loads(line) for line in f if line.strip()]
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as exc:
        raise SparcEvalError(f"pairs file {path} does not parse ({exc})") from None


def read_pairs(root: Path, split: str, *, transform: Callable | None = None) -> PairsDataset:
    """No options; `root` is a pairs file or a folder with {split}.jsonl / {split}.csv."""
    if root.is_dir():
        candidates = [root / f"{split}.jsonl", root / f"{split}.csv"]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise SparcEvalError(f"pairs folder {root} has no {split}.jsonl or {split}.csv")
        path = found[0]
    elif root.suffix in (".csv", ".jsonl"):
        path = root
    else:
        raise SparcEvalError(f"pairs file {root} is neither .csv nor .jsonl")
    paths, captions = [], []
    for n, row in enumerate(_rows(path), start=2 if path.suffix == ".csv" else 1):
        if not isinstance(row, dict) or not row.get("image") or row.get("caption") is None:
            raise SparcEvalError(f"pairs file {path}, line {n}: needs non-empty columns 'image' and 'caption'")
        if not isinstance(row["image"], str) or not isinstance(row["caption"], str) or "\x00" in row["image"]:
            raise SparcEvalError(f"pairs file {path}, line {n}: 'image' and 'caption' must be strings")
        paths.append(path.parent / row["image"])
        captions.append(str(row["caption"]))
    require_nonempty(paths, split, path)
    require_images(paths, path)
    return PairsDataset(paths, captions, transform)
