"""Karpathy split JSON (dataset_coco.json, dataset_flickr30k.json, SynthScenes' dataset_synthscenes.json).

`root` is the folder the images hang off: for COCO, `filepath` ("val2014", "train2014") is joined under it;
Flickr30k entries have no `filepath`, so images are looked up in option `images_dir` (default: root).
Split "train" includes "restval", as in Karpathy's convention; "val" and "test" are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sparc_eval.data.common import (
    CaptionDataset,
    load_json,
    require_images,
    require_nonempty,
    resolve,
)
from sparc_eval.errors import SparcEvalError


def read_karpathy(
    root: Path, split: str, *, transform: Callable | None = None, annotation: str, images_dir: str = "."
) -> CaptionDataset:
    """Options: `annotation` (dataset_*.json, relative to root or absolute), `images_dir` (for entries without filepath)."""
    annotation = resolve(root, annotation, split)
    images_dir = resolve(root, images_dir)
    data = load_json(annotation)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise SparcEvalError(f"annotation file {annotation} is not a Karpathy split file (no 'images' list)")
    wanted = {"train", "restval"} if split == "train" else {split}
    paths, ids, captions = [], [], []
    for entry in data["images"]:
        if entry.get("split") not in wanted:
            continue
        folder = root / entry["filepath"] if entry.get("filepath") else images_dir
        paths.append(folder / entry["filename"])
        ids.append(int(entry.get("cocoid", entry.get("imgid"))))
        captions.append([s["raw"].strip() for s in entry.get("sentences", [])])
    require_nonempty(paths, split, annotation)
    require_images(paths, annotation)
    return CaptionDataset(paths, ids, captions, annotation, transform)
