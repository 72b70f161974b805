"""Checks of annotation files before a reader trusts them: COCO (captions, instances), LVIS, Karpathy.

Each check walks the parsed JSON once and raises a SparcEvalError whose one sentence names the file and the
offending entry: a wrong type or missing key (`id`, `file_name`, `category_id`, `caption`, ...), a duplicate
image or annotation id, a reference to an image or category that is not listed, a bbox that is not four finite
numbers or lies outside its image, and an image file name that would lead outside the images folder. A reader
that calls its check first never meets a KeyError, a TypeError or a NaN later.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import inside

COCO_KINDS = ("captions", "instances", "lvis")
# Real COCO and LVIS boxes overrun their image by rounding (x + w = 640.01 on a 640-wide image): allowed up to this.
BOX_TOLERANCE_PX = 1.0
_LVIS_FREQUENCIES = ("r", "c", "f")


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool) and value != ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _list_of_dicts(path: Path, data: dict, key: str) -> list[dict]:
    items = data[key]
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise SparcEvalError(f"annotation file {path}: {key}[{i}] is {item!r}, not an object")
    return items


def _unique_ids(path: Path, items: list[dict], what: str) -> dict[Any, dict]:
    by_id: dict[Any, dict] = {}
    for i, item in enumerate(items):
        if not _is_id(item.get("id")):
            raise SparcEvalError(f"annotation file {path}: {what} #{i} has id {item.get('id')!r}, not an integer or string")
        if item["id"] in by_id:
            raise SparcEvalError(f"annotation file {path}: {what} id {item['id']!r} is listed twice")
        by_id[item["id"]] = item
    return by_id


def check_coco(path: Path, data: Any, kind: str, root: Path | None = None) -> None:
    """Validate a COCO `kind` ("captions", "instances" or "lvis") file; `root` is the images folder that each
    `file_name` must stay inside (LVIS images found through `coco_url` are checked by the LVIS reader)."""
    keys = ("images", "annotations") + (("categories",) if kind != "captions" else ())
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in keys):
        raise SparcEvalError(f"annotation file {path} is not COCO {kind} JSON (needs lists {', '.join(keys)})")
    images = _unique_ids(path, _list_of_dicts(path, data, "images"), "image")
    for image_id, img in images.items():
        name = img.get("file_name")
        needs_name = kind != "lvis" or not img.get("coco_url")
        if needs_name and (not isinstance(name, str) or not name):
            raise SparcEvalError(f"annotation file {path}: image {image_id!r} has file_name {name!r}, not a file name")
        if needs_name and root is not None:
            inside(root, name, f"annotation file {path}: file_name of image {image_id!r}", follow_links=False)
        if kind == "lvis" and img.get("coco_url") is not None and not isinstance(img["coco_url"], str):
            raise SparcEvalError(f"annotation file {path}: image {image_id!r} has coco_url {img['coco_url']!r}, not a string")
        if kind != "captions":
            for key in ("width", "height"):
                if not _is_positive_int(img.get(key)):
                    raise SparcEvalError(
                        f"annotation file {path}: image {image_id!r} has {key} {img.get(key)!r}, not a positive integer"
                    )
    categories: dict[Any, dict] = {}
    if kind != "captions":
        categories = _unique_ids(path, _list_of_dicts(path, data, "categories"), "category")
        for cat_id, cat in categories.items():
            if not isinstance(cat.get("name"), str) or not cat["name"].strip():
                raise SparcEvalError(f"annotation file {path}: category {cat_id!r} has name {cat.get('name')!r}, not a string")
            if kind == "lvis" and cat.get("frequency", "f") not in _LVIS_FREQUENCIES:
                raise SparcEvalError(
                    f"annotation file {path}: category {cat_id!r} has frequency {cat.get('frequency')!r}, not one of r, c, f"
                )
        if kind == "lvis":
            for image_id, img in images.items():
                for key in ("neg_category_ids", "not_exhaustive_category_ids"):
                    ids = img.get(key, [])
                    if (
                        not isinstance(ids, list)
                        or any(c not in categories for c in ids if _is_id(c))
                        or not all(map(_is_id, ids))
                    ):
                        raise SparcEvalError(
                            f"annotation file {path}: image {image_id!r} has {key} {ids!r}, not a list of listed category ids"
                        )
    annotations = _unique_ids(path, _list_of_dicts(path, data, "annotations"), "annotation")
    for ann_id, ann in annotations.items():
        if not _is_id(ann.get("image_id")) or ann["image_id"] not in images:
            raise SparcEvalError(
                f"annotation file {path}: annotation {ann_id!r} refers to image id {ann.get('image_id')!r}, which is not listed"
            )
        if kind == "captions":
            if not isinstance(ann.get("caption"), str):
                raise SparcEvalError(
                    f"annotation file {path}: annotation {ann_id!r} has caption {ann.get('caption')!r}, not a string"
                )
            continue
        if not _is_id(ann.get("category_id")) or ann["category_id"] not in categories:
            raise SparcEvalError(
                f"annotation file {path}: annotation {ann_id!r} has category_id {ann.get('category_id')!r}, outside the listed categories"
            )
        _check_box(path, ann_id, ann.get("bbox"), images[ann["image_id"]])
        if ann.get("iscrowd", 0) not in (0, 1) or isinstance(ann.get("iscrowd"), bool):
            raise SparcEvalError(f"annotation file {path}: annotation {ann_id!r} has iscrowd {ann.get('iscrowd')!r}, not 0 or 1")
        if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
            raise SparcEvalError(
                f"annotation file {path}: annotation {ann_id!r} has area {ann['area']!r}, not a finite number >= 0"
            )
        if "segmentation" in ann and not isinstance(ann["segmentation"], (list, dict)):
            raise SparcEvalError(
                f"annotation file {path}: annotation {ann_id!r} has segmentation {ann['segmentation']!r}, not polygons or RLE"
            )


def _check_box(path: Path, ann_id: Any, box: Any, image: dict) -> None:
    if not isinstance(box, list) or len(box) != 4 or not all(map(_is_number, box)):
        raise SparcEvalError(f"annotation file {path}: annotation {ann_id!r} has bbox {box!r}, not 4 finite numbers [x, y, w, h]")
    x, y, w, h = box
    if w < 0 or h < 0:
        raise SparcEvalError(f"annotation file {path}: annotation {ann_id!r} has bbox {box!r} with a negative width or height")
    tol, width, height = BOX_TOLERANCE_PX, image["width"], image["height"]
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise SparcEvalError(
            f"annotation file {path}: annotation {ann_id!r} has bbox {box!r} outside its {width}x{height} image {image['id']!r}"
        )


def check_karpathy(path: Path, data: Any) -> None:
    """Validate a Karpathy split file: an `images` list whose entries have a split, a file name, an id (cocoid or
    imgid, unique) and sentences with a `raw` string each; `filepath`, when present, a string."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise SparcEvalError(f"annotation file {path} is not a Karpathy split file (no 'images' list)")
    seen: set[Any] = set()
    for i, entry in enumerate(_list_of_dicts(path, data, "images")):
        where = f"annotation file {path}: images[{i}]"
        if not isinstance(entry.get("split"), str):
            raise SparcEvalError(f"{where} has split {entry.get('split')!r}, not a string")
        if not isinstance(entry.get("filename"), str) or not entry["filename"]:
            raise SparcEvalError(f"{where} has filename {entry.get('filename')!r}, not a file name")
        if entry.get("filepath") is not None and not isinstance(entry["filepath"], str):
            raise SparcEvalError(f"{where} has filepath {entry['filepath']!r}, not a string")
        image_id = entry.get("cocoid", entry.get("imgid"))
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise SparcEvalError(f"{where} has id {image_id!r} (cocoid or imgid), not an integer")
        if image_id in seen:
            raise SparcEvalError(f"annotation file {path}: image id {image_id} is listed twice")
        seen.add(image_id)
        sentences = entry.get("sentences", [])
        if not isinstance(sentences, list) or not all(isinstance(s, dict) and isinstance(s.get("raw"), str) for s in sentences):
            raise SparcEvalError(f"{where} has sentences that are not objects with a 'raw' string")
