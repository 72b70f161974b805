"""LVIS v1 JSON ("lvis"): COCO-like instances whose images carry `coco_url` and federated labels.

LVIS v1 images are the COCO 2017 images, left in their two COCO folders: `root` is the COCO folder
(DATA/coco) and each image is found through its `coco_url`, whose last two parts name the folder and the
file (".../train2017/000000391895.jpg" -> root/train2017/000000391895.jpg; LVIS v1 val draws from both
train2017 and val2017). No copy or link farm is needed. An image without `coco_url` (SynthScenes' instances
files) is its `file_name` under `root`. Items are those of "coco-instances" plus the image's
`neg_category_ids` (verified absent) and `not_exhaustive_category_ids`, which LVIS's federated evaluation
needs. `lvis_api` is the `lvis.LVIS` object; categories keep "frequency" (r/c/f).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from sparc_eval.data.annotations import check_coco
from sparc_eval.data.coco import InstancesDataset
from sparc_eval.data.common import load_json, require_file, require_nonempty, resolve
from sparc_eval.data.layout import Need, file_need, folder_needs, readable
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import inside

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a folder or file name from a coco_url: never '..' or a path


def lvis_image_paths(root: Path, annotation: Path, images: list[dict]) -> list[Path]:
    """The file of each image: root/<folder>/<file> from its coco_url, else its file_name under root."""
    paths = []
    for img in images:
        url = img.get("coco_url") if isinstance(img, dict) else None
        if url:
            parts = [p for p in urlparse(str(url)).path.split("/") if p]
            if len(parts) < 2 or not all(_PART.match(p) and ".." not in p for p in parts[-2:]):
                raise SparcEvalError(
                    f"image {img.get('id')} in {annotation} has coco_url {url!r}, which does not end in <folder>/<file>"
                )
            paths.append(root / parts[-2] / parts[-1])
        elif isinstance(img, dict) and img.get("file_name"):
            paths.append(
                inside(root, img["file_name"], f"file_name of image {img.get('id')} in {annotation}", follow_links=False)
            )
        else:
            raise SparcEvalError(
                f"image {img.get('id') if isinstance(img, dict) else img!r} in {annotation} has neither coco_url nor file_name"
            )
    return paths


def layout_lvis(root: Path, split: str, *, annotation: str, **_: object) -> list[Need]:
    """What "lvis" reads (sparc_eval.data.layout): the JSON and the COCO images it names, folder by folder."""
    path = resolve(root, annotation, split)
    data = load_json(path) if readable(path) else None
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        return [file_need(path, "annotation file"), *folder_needs(lvis_image_paths(root, path, data["images"]))]
    return [file_need(path, "annotation file"), Need(root, "COCO image root", folder=True)]


def read_lvis(
    root: Path, split: str, *, transform: Callable | None = None, annotation: str, masks: bool = False
) -> InstancesDataset:
    """Options: `annotation` (lvis_v1_{split}.json), `masks` (decode instance masks into items)."""
    from lvis import LVIS

    annotation = require_file(resolve(root, annotation, split), "annotation file")
    data = load_json(annotation)
    check_coco(annotation, data, "lvis", root)  # before the LVIS API indexes it: one line instead of a KeyError

    class _CheckedLVIS(LVIS):  # the LVIS API on the JSON already read and checked, not a second read of the file
        def _load_json(self, _path: str) -> dict:
            return data

    logging.getLogger("lvis.lvis").setLevel(logging.WARNING)
    api = _CheckedLVIS(str(annotation))
    require_nonempty(data["images"], split, annotation)
    ds = InstancesDataset(
        lvis_image_paths(root, annotation, data["images"]),
        annotation,
        data,
        api.ann_to_mask,
        transform=transform,
        masks=bool(masks),
        extra_keys=("neg_category_ids", "not_exhaustive_category_ids"),
    )
    ds.lvis_api = api
    return ds


# The LVIS API is optional ({import name: sparc-eval extra}); a card reading LVIS stops before any work without it.
read_lvis.requires = {"lvis": "lvis"}  # type: ignore[attr-defined]
read_lvis.layout = layout_lvis  # type: ignore[attr-defined]
