"""COCO captions and instances JSON ("coco-captions", "coco-instances").

`root` is the images folder (e.g. coco/val2017, or SynthScenes' images/); option `annotation` is the JSON,
relative to root or absolute, with "{split}" replaced by the split (SynthScenes:
annotation="../coco/annotations/instances_{split}.json"). Every annotation must refer to a listed
image and a listed category, and every image file must exist, when the dataset is opened.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sparc_eval.data.annotations import check_coco
from sparc_eval.data.common import (
    CaptionDataset,
    ImageDataset,
    group_by,
    load_json,
    open_image,
    require_images,
    require_nonempty,
    resolve,
)
from sparc_eval.data.layout import Need, file_need, folder_needs, readable
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import inside


def _load(root: Path, split: str, annotation_option: str, fmt: str, keys: tuple[str, ...]) -> tuple[Path, dict]:
    annotation = resolve(root, annotation_option, split)
    data = load_json(annotation)
    check_coco(annotation, data, fmt[5:], root)  # types, required keys, ids, boxes: before anything trusts them
    require_nonempty(data["images"], split, annotation)
    return annotation, data


def coco_image_paths(root: Path, data: dict) -> list[Path]:
    """The image file of each entry of the JSON's `images`: its `file_name` under the images folder `root` (a name
    leading outside it is refused, so neither the reader nor the layout doctor looks outside)."""
    return [inside(root, img["file_name"], f"file_name of image {img.get('id')}", follow_links=False) for img in data["images"]]


def layout_coco(root: Path, split: str, *, annotation: str, **_: object) -> list[Need]:
    """What "coco-captions" / "coco-instances" read (sparc_eval.data.layout): the JSON and the images it lists."""
    path = resolve(root, annotation, split)
    data = load_json(path) if readable(path) else None
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        return [file_need(path, "annotation file"), *folder_needs(coco_image_paths(root, data))]
    return [file_need(path, "annotation file"), Need(root, "image folder", folder=True)]


def _check_refs(annotation: Path, data: dict, categories: bool) -> None:
    image_ids = {img["id"] for img in data["images"]}
    category_ids = {c["id"] for c in data["categories"]} if categories else set()  # a captions file's are not read
    for ann in data["annotations"]:
        if ann["image_id"] not in image_ids:
            raise SparcEvalError(
                f"annotation {ann.get('id')} in {annotation} refers to image id {ann['image_id']}, which is not listed"
            )
        if categories and ann["category_id"] not in category_ids:
            raise SparcEvalError(
                f"annotation {ann.get('id')} in {annotation} has category id {ann['category_id']}, outside the listed categories"
            )


def read_coco_captions(root: Path, split: str, *, transform: Callable | None = None, annotation: str) -> CaptionDataset:
    """Option: `annotation` (captions_*.json, relative to root or absolute; '{split}' is replaced by the split)."""
    annotation, data = _load(root, split, annotation, "coco-captions", ("images", "annotations"))
    _check_refs(annotation, data, categories=False)
    by_image = group_by(data["annotations"], "image_id")
    paths = coco_image_paths(root, data)
    require_images(paths, annotation)
    captions = [[a["caption"].strip() for a in by_image.get(img["id"], [])] for img in data["images"]]
    return CaptionDataset(paths, [img["id"] for img in data["images"]], captions, annotation, transform)


class InstancesDataset(ImageDataset):
    """Images with instance annotations: items {image, image_id, width, height, boxes [N,4] xywh, category_ids, iscrowd, path}
    (+ masks uint8 [N,H,W] when opened with masks=True, + the image's `extra_keys` fields)."""

    def __init__(
        self,
        paths: list[Path],
        annotation: Path,
        data: dict,
        ann_to_mask: Callable,
        *,
        transform=None,
        masks=False,
        extra_keys=(),
    ):
        _check_refs(annotation, data, categories=True)
        require_images(paths, annotation)
        super().__init__(paths, transform)
        self.annotation = annotation
        self.images = data["images"]
        self.image_ids = [img["id"] for img in self.images]
        self.categories = data["categories"]
        self._anns = group_by(data["annotations"], "image_id")
        self._ann_to_mask = ann_to_mask
        self._masks = masks
        self._extra_keys = extra_keys

    def __getitem__(self, index: int) -> dict:
        info, anns = self.images[index], self._anns.get(self.image_ids[index], [])
        image = open_image(self.paths[index])
        if image.size != (info["width"], info["height"]):
            raise SparcEvalError(
                f"image {self.paths[index]} is {image.size[0]}x{image.size[1]} but {self.annotation} says {info['width']}x{info['height']}"
            )
        if self.transform is not None:
            image = self.transform(image)
        item = {
            "image": image,
            "image_id": info["id"],
            "width": info["width"],
            "height": info["height"],
            "boxes": torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4),
            "category_ids": torch.tensor([a["category_id"] for a in anns], dtype=torch.long),
            "iscrowd": torch.tensor([a.get("iscrowd", 0) for a in anns], dtype=torch.long),
            "path": str(self.paths[index]),
        }
        if self._masks:
            masks = [self._ann_to_mask(a) for a in anns]
            item["masks"] = torch.from_numpy(
                np.stack(masks).astype(np.uint8) if masks else np.zeros((0, info["height"], info["width"]), np.uint8)
            )
        for key in self._extra_keys:
            item[key] = list(info.get(key, []))
        return item


def read_coco_instances(
    root: Path, split: str, *, transform: Callable | None = None, annotation: str, masks: bool = False
) -> InstancesDataset:
    """Options: `annotation` (instances_*.json), `masks` (decode instance masks into items)."""
    from pycocotools.coco import COCO

    annotation, data = _load(root, split, annotation, "coco-instances", ("images", "annotations", "categories"))
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    ds = InstancesDataset(
        coco_image_paths(root, data),
        annotation,
        data,
        coco.annToMask,
        transform=transform,
        masks=bool(masks),
    )
    ds.coco = coco
    return ds


read_coco_captions.layout = layout_coco  # type: ignore[attr-defined]
read_coco_instances.layout = layout_coco  # type: ignore[attr-defined]
