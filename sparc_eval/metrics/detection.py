"""Box AP for detection: pure functions of COCO-format ground truth and COCO-format results.

`coco_box_metrics` runs pycocotools' COCOeval; `lvis_box_metrics` runs the official LVIS evaluation
(`lvis` package), which is *federated*: a category is scored on an image only where it is annotated
or listed in the image's `neg_category_ids`, and unmatched detections of a category in
`not_exhaustive_category_ids` are not counted as false positives. pycocotools knows none of this,
so only `lvis_box_metrics` gives LVIS numbers on LVIS data.

Inputs (plain dicts, as in the JSON files):
  gt          {"images": [{"id", ...}], "annotations": [{"id" (> 0), "image_id", "category_id", "bbox" xywh,
              "area", "iscrowd"}], "categories": [{"id", "frequency" ("r"|"c"|"f", optional for COCO)}]}
  detections  [{"image_id", "category_id", "bbox" xywh, "score"}]
Output: {AP, AP50, AP75, APs, APm, APl, APr, APc, APf}; a value with nothing to average over
(no ground truth in that area range or frequency group) is None.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
FREQUENCY_METRICS = {"APr": "r", "APc": "c", "APf": "f"}
# COCOeval.stats[0:6] in order.
_COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _defined(value: float) -> float | None:
    """Both evaluators report -1 where there is nothing to average."""
    return None if value < 0 else float(value)


def _coco_index(dataset: dict[str, Any]):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints; stdout may carry --json output
        coco.createIndex()
    return coco


def coco_per_category_ap(
    gt: dict[str, Any], detections: list[dict[str, Any]]
) -> tuple[dict[str, float | None], dict[int, float]]:
    """COCOeval's summary AP values and each category's AP (IoU 0.50:0.95, all areas, 100 detections).

    A category's AP is the mean of COCOeval's precision array over IoU thresholds and recall
    levels; categories without (non-crowd) ground truth have no AP and are left out.
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = _coco_index(copy.deepcopy(gt))
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
    else:  # loadRes cannot take an empty list; an empty result set is scored as it is
        coco_dt = _coco_index({"images": gt["images"], "categories": gt["categories"], "annotations": []})
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    summary = {name: _defined(v) for name, v in zip(_COCO_STATS, evaluator.stats)}
    area_all = evaluator.params.areaRngLbl.index("all")
    # precision: [iou thresholds, recall levels, categories, area ranges, max-detection settings]
    precision = evaluator.eval["precision"][:, :, :, area_all, -1]
    per_category = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k]
        if (p > -1).any():
            per_category[int(cat_id)] = float(p[p > -1].mean())
    return summary, per_category


def frequency_group_ap(per_category: dict[int, float], categories: list[dict[str, Any]]) -> dict[str, float | None]:
    """APr / APc / APf: the mean per-category AP over the categories of each LVIS frequency group.

    Only categories with an AP (i.e. with ground truth) count; a group with none is None, and so is
    every group when the categories carry no `frequency` field (plain COCO).
    """
    frequency = {int(c["id"]): c.get("frequency") for c in categories}
    out: dict[str, float | None] = {}
    for name, group in FREQUENCY_METRICS.items():
        aps = [ap for cat_id, ap in per_category.items() if frequency.get(cat_id) == group]
        out[name] = float(np.mean(aps)) if aps else None
    return out


def coco_box_metrics(gt: dict[str, Any], detections: list[dict[str, Any]]) -> dict[str, float | None]:
    """COCO box AP (pycocotools COCOeval, 100 detections per image and category) plus APr / APc / APf."""
    summary, per_category = coco_per_category_ap(gt, detections)
    return {**summary, **frequency_group_ap(per_category, gt["categories"])}


@contextlib.contextmanager
def _lvis_runtime() -> Iterator[None]:
    """Run the `lvis` package (0.5.3, its latest release) on current NumPy, quietly.

    lvis calls `np.float`, an alias NumPy 1.24 removed; it is restored for the duration of the call
    only. lvis also logs a warning for every in-memory result list; those logs are silenced here.
    """
    logger = logging.getLogger("lvis")
    level = logger.level
    added_alias = not hasattr(np, "float")
    if added_alias:
        np.float = float  # type: ignore[attr-defined]
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
        if added_alias:
            del np.float  # type: ignore[attr-defined]


def lvis_box_metrics(gt: dict[str, Any], detections: list[dict[str, Any]]) -> dict[str, float | None]:
    """Official federated LVIS box AP (lvis.LVISEval, 300 detections per image), incl. APr / APc / APf.

    `gt` must be LVIS-format: every image has `neg_category_ids` and `not_exhaustive_category_ids`,
    every category a `frequency`.
    """
    for image in gt["images"]:
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if key not in image:
                raise ValueError(f"image {image.get('id')!r} has no {key!r}; LVIS evaluation needs LVIS-format ground truth")
    for cat in gt["categories"]:
        if cat.get("frequency") not in ("r", "c", "f"):
            raise ValueError(
                f"category {cat.get('id')!r} has frequency {cat.get('frequency')!r}; LVIS evaluation needs r, c or f"
            )
    if not detections:
        # lvis.LVISResults cannot load an empty list. Without detections the federated filters have
        # nothing to act on and LVISEval reduces to COCOeval on non-crowd ground truth (lvis has no crowd
        # regions): precision 0 for every category with ground truth.
        plain = {**gt, "annotations": [{**a, "iscrowd": 0} for a in gt["annotations"]]}
        return coco_box_metrics(plain, [])

    from lvis import LVIS, LVISEval, LVISResults

    with tempfile.TemporaryDirectory() as tmp, _lvis_runtime():
        path = os.path.join(tmp, "gt.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(gt, f)
        lvis_gt = LVIS(path)
        evaluator = LVISEval(lvis_gt, LVISResults(lvis_gt, copy.deepcopy(detections)), iou_type="bbox")
        evaluator.run()
        results = evaluator.get_results()
    return {name: _defined(results[name]) for name in METRIC_NAMES}
