"""LVIS v1 JSON ("lvis"): COCO-like instances whose images carry `coco_url` and federated labels.

The image file name is the last part of `coco_url` (SynthScenes' instances files have `file_name`
instead, used when `coco_url` is absent); all images lie in `root`. Items are those of "coco-instances"
plus the image's `neg_category_ids` (verified absent) and `not_exhaustive_category_ids`, which LVIS's
federated evaluation needs. `lvis_api` is the `lvis.LVIS` object; categories keep "frequency" (r/c/f).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sparc_eval.data.coco import InstancesDataset
from sparc_eval.data.common import require_file, require_nonempty, resolve
from sparc_eval.errors import SparcEvalError


def read_lvis(
    root: Path, split: str, *, transform: Callable | None = None, annotation: str, masks: bool = False
) -> InstancesDataset:
    """Options: `annotation` (lvis_v1_{split}.json), `masks` (decode instance masks into items)."""
    from lvis import LVIS

    annotation = require_file(resolve(root, annotation, split), "annotation file")
    logging.getLogger("lvis.lvis").setLevel(logging.WARNING)
    try:
        api = LVIS(str(annotation))
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise SparcEvalError(f"annotation file {annotation} is not LVIS JSON ({type(exc).__name__}: {exc})") from None
    data = api.dataset
    require_nonempty(data["images"], split, annotation)
    names = []
    for img in data["images"]:
        url = img.get("coco_url") or img.get("file_name")
        if not url:
            raise SparcEvalError(f"image {img.get('id')} in {annotation} has neither coco_url nor file_name")
        names.append(url.rstrip("/").rsplit("/", 1)[-1])
    ds = InstancesDataset(
        root,
        annotation,
        data,
        names,
        api.ann_to_mask,
        transform=transform,
        masks=bool(masks),
        extra_keys=("neg_category_ids", "not_exhaustive_category_ids"),
    )
    ds.lvis_api = api
    return ds


# The LVIS API is optional ({import name: sparc-eval extra}); a card reading LVIS stops before any work without it.
read_lvis.requires = {"lvis": "lvis"}  # type: ignore[attr-defined]
