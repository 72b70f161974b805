"""Box AP (sparc_eval.metrics.detection) on toy cases worked out by hand, and against the LVIS API."""

from __future__ import annotations

import numpy as np
import pytest

from sparc_eval.metrics.detection import coco_box_metrics, coco_per_category_ap, frequency_group_ap, lvis_box_metrics

# COCO interpolates precision at 101 recall levels 0, 0.01, ..., 1.
N_RECALL = 101


def _gt(images: list[int], anns: list[tuple[int, int, list[float]]], cats: dict[int, str | None], lvis: bool = False) -> dict:
    """Ground truth with annotations (image, category, xywh); with `lvis`, every absent category is a verified negative."""
    present = {i: {c for img, c, _ in anns if img == i} for i in images}
    return {
        "images": [
            {
                "id": i,
                "width": 100,
                "height": 100,
                **(
                    {"neg_category_ids": [c for c in cats if c not in present[i]], "not_exhaustive_category_ids": []}
                    if lvis
                    else {}
                ),
            }
            for i in images
        ],
        "annotations": [
            {"id": k, "image_id": img, "category_id": c, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            for k, (img, c, box) in enumerate(anns, start=1)
        ],
        "categories": [{"id": c, "name": f"c{c}", **({"frequency": f} if f else {})} for c, f in cats.items()],
    }


def _det(image: int, cat: int, box: list[float], score: float) -> dict:
    return {"image_id": image, "category_id": cat, "bbox": box, "score": score}


# One category, two objects. Ranked detections: GT1 exactly, a miss, then a box around GT2 with IoU
# 0.625, so the third detection is a hit at IoU thresholds 0.50-0.60 and a false positive from 0.65 on.
GT1, GT2 = [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 10.0, 10.0]
LOOSE2 = [50.0, 50.0, 10.0, 16.0]  # contains GT2: IoU = 100 / 160 = 0.625
MISS = [80.0, 0.0, 10.0, 10.0]
PARTIAL_DETS = [_det(1, 1, GT1, 0.9), _det(1, 1, MISS, 0.8), _det(1, 1, LOOSE2, 0.7)]
# Matched third detection: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> interpolated 1 up to recall
# 0.50 (51 levels) and 2/3 above (50 levels). Unmatched: 1 up to 0.50 and 0 above.
AP_HIT = (51 * 1.0 + 50 * 2 / 3) / N_RECALL
AP_MISS = 51 / N_RECALL
# IoU thresholds 0.50, 0.55, ..., 0.95: the first three (<= 0.625) match the third detection.
AP_PARTIAL = (3 * AP_HIT + 7 * AP_MISS) / 10


def test_perfect_detections_score_one_and_empty_area_ranges_are_none():
    gt = _gt([1, 2], [(1, 1, GT1), (1, 2, GT2), (2, 1, [0.0, 0.0, 40.0, 40.0])], {1: None, 2: None})
    dets = [_det(a["image_id"], a["category_id"], a["bbox"], 1.0) for a in gt["annotations"]]
    m = coco_box_metrics(gt, dets)
    for name in ("AP", "AP50", "AP75", "APs", "APm"):  # 10x10 is small (< 32^2), 40x40 medium
        assert m[name] == pytest.approx(1.0, abs=1e-12), name
    assert m["APl"] is None  # no ground truth above 96^2
    assert m["APr"] is m["APc"] is m["APf"] is None  # plain COCO categories carry no frequency


def test_hand_computed_partial_case():
    gt = _gt([1], [(1, 1, GT1), (1, 1, GT2)], {1: "f"})
    m = coco_box_metrics(gt, PARTIAL_DETS)
    assert m["AP50"] == pytest.approx(AP_HIT, abs=1e-12)
    assert m["AP75"] == pytest.approx(AP_MISS, abs=1e-12)
    assert m["AP"] == pytest.approx(AP_PARTIAL, abs=1e-12)
    assert AP_PARTIAL == pytest.approx(0.6039604, abs=1e-7)
    # The official LVIS evaluation agrees where labels are exhaustive.
    lv = lvis_box_metrics(_gt([1], [(1, 1, GT1), (1, 1, GT2)], {1: "f"}, lvis=True), PARTIAL_DETS)
    assert lv["AP"] == pytest.approx(AP_PARTIAL, abs=1e-12)
    assert lv["APf"] == pytest.approx(AP_PARTIAL, abs=1e-12)


def _grouped_case(lvis: bool) -> tuple[dict, list[dict]]:
    # cat 1 (r): perfect. cat 2 (c): missed. cat 3 (f): perfect. cat 4 (f): the partial case.
    # cat 5 (c): no ground truth anywhere, only a false positive: it has no AP and changes nothing.
    anns = [(1, 1, GT1), (2, 2, GT1), (2, 3, GT2), (3, 4, GT1), (3, 4, GT2)]
    gt = _gt([1, 2, 3], anns, {1: "r", 2: "c", 3: "f", 4: "f", 5: "c"}, lvis=lvis)
    dets = [_det(1, 1, GT1, 0.9), _det(2, 3, GT2, 0.9), _det(2, 5, GT1, 0.99)]
    dets += [{**d, "image_id": 3, "category_id": 4} for d in PARTIAL_DETS]
    return gt, dets


def test_frequency_groups_average_per_category_ap():
    gt, dets = _grouped_case(lvis=False)
    _, per_category = coco_per_category_ap(gt, dets)
    assert per_category == pytest.approx({1: 1.0, 2: 0.0, 3: 1.0, 4: AP_PARTIAL}, abs=1e-12)
    m = coco_box_metrics(gt, dets)
    assert m["APr"] == pytest.approx(1.0, abs=1e-12)
    assert m["APc"] == 0.0
    assert m["APf"] == pytest.approx((1.0 + AP_PARTIAL) / 2, abs=1e-12)
    assert m["AP"] == pytest.approx((1.0 + 0.0 + 1.0 + AP_PARTIAL) / 4, abs=1e-12)
    # Official LVIS evaluation on the same exhaustive labels: the same groups.
    lv = lvis_box_metrics(*_grouped_case(lvis=True))
    for name in ("AP", "APr", "APc", "APf"):
        assert lv[name] == pytest.approx(m[name], abs=1e-12), name


def test_group_without_ground_truth_is_none():
    assert frequency_group_ap(
        {1: 0.5, 2: 0.7}, [{"id": 1, "frequency": "c"}, {"id": 2, "frequency": "c"}, {"id": 3, "frequency": "r"}]
    ) == {"APr": None, "APc": pytest.approx(0.6), "APf": None}


def test_lvis_is_federated_where_coco_is_not():
    # Image 2 has no label for category 1 and does not list it as a verified negative: LVIS ignores the
    # (otherwise false-positive) detection there, COCOeval counts it.
    gt = _gt([1, 2], [(1, 1, GT1), (2, 2, GT1)], {1: "f", 2: "f"}, lvis=True)
    gt["images"][1]["neg_category_ids"] = []
    dets = [_det(2, 1, GT2, 0.95), _det(1, 1, GT1, 0.9), _det(2, 2, GT1, 0.9)]
    assert lvis_box_metrics(gt, dets)["AP"] == pytest.approx(1.0, abs=1e-12)
    coco = coco_box_metrics(gt, dets)["AP"]
    assert coco == pytest.approx((0.5 + 1.0) / 2, abs=1e-12)  # cat 1: precision 1/2 at recall 1
    # Category 1 on image 1 labelled but not exhaustively: an unmatched detection there is no false positive.
    extra = dets + [_det(1, 1, MISS, 0.99)]
    assert lvis_box_metrics(gt, extra)["AP"] == pytest.approx(0.75, abs=1e-12)
    gt["images"][0]["not_exhaustive_category_ids"] = [1]
    assert lvis_box_metrics(gt, extra)["AP"] == pytest.approx(1.0, abs=1e-12)


def test_no_detections_scores_zero_where_there_is_ground_truth():
    gt = _gt([1, 2], [(1, 1, GT1), (2, 2, [0.0, 0.0, 40.0, 40.0])], {1: "r", 2: "f", 3: "c"}, lvis=True)
    expected = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": 0.0, "APl": None, "APr": 0.0, "APc": None, "APf": 0.0}
    assert coco_box_metrics(gt, []) == expected
    assert lvis_box_metrics(gt, []) == expected
    # The same as what the official LVIS evaluation gives when every detection is of an unlabelled category.
    junk = [_det(1, 3, GT1, 0.5)]
    assert {k: v for k, v in lvis_box_metrics(gt, junk).items()} == expected


def test_lvis_needs_lvis_format_ground_truth():
    gt = _gt([1], [(1, 1, GT1)], {1: "f"})  # no neg_category_ids
    with pytest.raises(ValueError, match="neg_category_ids"):
        lvis_box_metrics(gt, [_det(1, 1, GT1, 1.0)])
    gt = _gt([1], [(1, 1, GT1)], {1: None}, lvis=True)
    with pytest.raises(ValueError, match="frequency"):
        lvis_box_metrics(gt, [_det(1, 1, GT1, 1.0)])


def test_lvis_runs_on_this_numpy_and_leaves_it_as_it_was():
    had_alias = hasattr(np, "float")
    gt = _gt([1], [(1, 1, GT1)], {1: "f"}, lvis=True)
    assert lvis_box_metrics(gt, [_det(1, 1, GT1, 1.0)])["AP"] == pytest.approx(1.0, abs=1e-12)
    assert hasattr(np, "float") == had_alias
