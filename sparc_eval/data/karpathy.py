"""Karpathy split JSON (dataset_coco.json, dataset_flickr30k.json, SynthScenes' dataset_synthscenes.json).

`root` is the folder the images hang off: for COCO, `filepath` ("val2014", "train2014") is joined under it;
Flickr30k entries have no `filepath`, so images are looked up in option `images_dir` (default: root).
Split "train" includes "restval", as in Karpathy's convention; "val" and "test" are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sparc_eval.data.annotations import check_karpathy
from sparc_eval.data.common import (
    CaptionDataset,
    load_json,
    require_images,
    require_nonempty,
    resolve,
)
from sparc_eval.data.layout import Need, file_need, folder_needs, readable
from sparc_eval.fileio import inside


def karpathy_entries(root: Path, data: dict, split: str, images_dir: Path, annotation: Path) -> list[tuple[Path, dict]]:
    """(image path, entry) of each image of `split` ("train" includes "restval"): `filepath/filename` under root,
    or `filename` under `images_dir` for entries without a filepath; a path leading outside is refused."""
    wanted = {"train", "restval"} if split == "train" else {split}
    out = []
    for entry in data["images"]:
        if entry.get("split") not in wanted:
            continue
        base, rel = (
            (root, Path(entry["filepath"], entry["filename"])) if entry.get("filepath") else (images_dir, entry["filename"])
        )
        out.append((inside(base, rel, f"annotation file {annotation}: image {entry['filename']!r}", follow_links=False), entry))
    return out


def layout_karpathy(root: Path, split: str, *, annotation: str, images_dir: str = ".") -> list[Need]:
    """What "karpathy" reads (sparc_eval.data.layout): the split file and the images of `split` it lists."""
    path = resolve(root, annotation, split)
    data = load_json(path) if readable(path) else None
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        return [
            file_need(path, "annotation file"),
            *folder_needs(p for p, _ in karpathy_entries(root, data, split, resolve(root, images_dir), path)),
        ]
    return [file_need(path, "annotation file"), Need(root, "image root", folder=True)]


def read_karpathy(
    root: Path, split: str, *, transform: Callable | None = None, annotation: str, images_dir: str = "."
) -> CaptionDataset:
    """Options: `annotation` (dataset_*.json, relative to root or absolute), `images_dir` (for entries without filepath)."""
    annotation = resolve(root, annotation, split)
    images_dir = resolve(root, images_dir)
    data = load_json(annotation)
    check_karpathy(annotation, data)
    paths, ids, captions = [], [], []
    for path, entry in karpathy_entries(root, data, split, images_dir, annotation):
        paths.append(path)
        ids.append(int(entry.get("cocoid", entry.get("imgid"))))
        captions.append([s["raw"].strip() for s in entry.get("sentences", [])])
    require_nonempty(paths, split, annotation)
    require_images(paths, annotation)
    return CaptionDataset(paths, ids, captions, annotation, transform)


read_karpathy.layout = layout_karpathy  # type: ignore[attr-defined]
