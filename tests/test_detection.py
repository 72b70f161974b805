"""OWL-ViT detection heads, matching and losses on hand-worked boxes; the runner's ground truth, records and errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparc_eval.errors import SparcEvalError
from sparc_eval.tasks.detection import DetectionRunner, GroundTruth, Params, pad_to_square, samples_to_coco
from sparc_eval.tasks.detection_head import (
    FOCAL_PRIOR,
    LossWeights,
    OwlHead,
    Target,
    box_bias,
    detection_losses,
    hungarian_match,
    match_cost,
    top_k_detections,
)

L1_ONLY = LossWeights(cls=0.0, l1=1.0, giou=0.0, focal_alpha=0.25, focal_gamma=2.0)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# ------------------------------------------------------------------------------------------ head


def test_box_bias_is_the_grid_cell_prior():
    prior = torch.sigmoid(box_bias(2, 3))
    # Row-major over a 2 (rows) x 3 (columns) grid: centres at x = 1/6, 1/2, 5/6 and y = 1/4, 3/4; one-cell size.
    expected = [[x, y, 1 / 3, 1 / 2] for y in (0.25, 0.75) for x in (1 / 6, 0.5, 5 / 6)]
    assert torch.allclose(prior, torch.tensor(expected), atol=1e-6)


def test_head_starts_from_prior_boxes_and_the_models_zero_shot_logits():
    torch.manual_seed(0)
    head = OwlHead(dim=8, grid_h=2, grid_w=2, init_logit_scale=20.0)
    patches = torch.randn(1, 4, 8)
    queries = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    logits, boxes = head(patches, queries)
    assert torch.allclose(boxes[0], torch.sigmoid(box_bias(2, 2)), atol=1e-6)
    cosine = torch.nn.functional.normalize(patches[0], dim=-1) @ queries.T
    assert torch.allclose(logits[0], 20.0 * cosine + _logit(FOCAL_PRIOR), atol=1e-5)
    # A patch orthogonal to every query starts at the focal prior.
    ortho = torch.zeros(1, 4, 8)
    ortho[..., 0] = 1.0
    q = torch.zeros(2, 8)
    q[0, 1] = q[1, 2] = 1.0
    assert torch.allclose(torch.sigmoid(head(ortho, q)[0]), torch.full((1, 4, 2), FOCAL_PRIOR), atol=1e-6)


def test_head_refuses_another_patch_grid():
    head = OwlHead(dim=8, grid_h=2, grid_w=2)
    with pytest.raises(ValueError, match="2x2"):
        head(torch.randn(1, 9, 8), torch.randn(1, 8))


# ------------------------------------------------------------------------------------------ matching


def _boxes(*cx: float) -> torch.Tensor:
    return torch.tensor([[c, 0.5, 0.1, 0.1] for c in cx])


def test_hungarian_matching_is_optimal_not_greedy():
    # L1 costs (cx only): A-T1 0.1, A-T2 0.2, B-T1 0.2, B-T2 0.5, C-T1 0.4, C-T2 0.7.
    # Greedy takes A-T1 then B-T2 (0.6); the optimum is A-T2 + B-T1 (0.4).
    preds = _boxes(0.5, 0.2, 0.0)[None]
    target = Target(torch.tensor([0, 0]), _boxes(0.4, 0.7))
    logits = torch.zeros(1, 3, 1)
    ((rows, cols),) = hungarian_match(logits, preds, [target], L1_ONLY)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}


def test_class_cost_decides_between_identical_boxes():
    # Both patches predict the same box; patch 0 is confident of class 1, patch 1 of class 0.
    preds = _boxes(0.5, 0.5)[None]
    logits = torch.tensor([[[-4.0, 4.0], [4.0, -4.0]]])
    target = Target(torch.tensor([0, 1]), _boxes(0.5, 0.5))
    w = LossWeights(cls=1.0, l1=1.0, giou=1.0, focal_alpha=0.25, focal_gamma=2.0)
    ((rows, cols),) = hungarian_match(logits, preds, [target], w)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}


def test_focal_class_cost_by_hand():
    # p = 0.5: pos = 0.25 * 0.5^2 * ln 2, neg = 0.75 * 0.5^2 * ln 2.
    w = LossWeights(cls=1.0, l1=0.0, giou=0.0, focal_alpha=0.25, focal_gamma=2.0)
    cost = match_cost(torch.zeros(1, 1), _boxes(0.5), Target(torch.tensor([0]), _boxes(0.5)), w)
    assert cost.item() == pytest.approx((0.25 - 0.75) * 0.25 * math.log(2), abs=1e-6)


def test_image_without_targets_matches_nothing():
    ((rows, cols),) = hungarian_match(
        torch.zeros(1, 3, 2), _boxes(0.1, 0.5, 0.9)[None], [Target(torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))], L1_ONLY
    )
    assert rows.numel() == cols.numel() == 0


# ------------------------------------------------------------------------------------------ losses


def test_each_loss_by_hand():
    # One image, two patches, one class; patch 0 is matched to the one target.
    logits = torch.tensor([[[2.0], [-1.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])
    target = Target(torch.tensor([0]), torch.tensor([[0.6, 0.5, 0.2, 0.4]]))
    w = LossWeights(cls=2.0, l1=5.0, giou=2.0, focal_alpha=0.25, focal_gamma=2.0)
    losses = detection_losses(logits, boxes, [target], [(torch.tensor([0]), torch.tensor([0]))], w)

    # L1 in cxcywh: |0.5-0.6| + 0 + 0 + |0.2-0.4|.
    assert losses["l1"].item() == pytest.approx(0.3, abs=1e-6)
    # xyxy (0.4,0.4,0.6,0.6) vs (0.5,0.3,0.7,0.7): intersection 0.1*0.2, union 0.04+0.08-0.02,
    # enclosing 0.3*0.4: gIoU = 0.2 - (0.12-0.10)/0.12.
    assert losses["giou"].item() == pytest.approx(1 - (0.2 - 0.02 / 0.12), abs=1e-6)
    # Focal: positive at x=2 and negative at x=-1, alpha 0.25, gamma 2.
    p_pos, p_neg = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))
    focal = 0.25 * (1 - p_pos) ** 2 * -math.log(p_pos) + 0.75 * p_neg**2 * -math.log(1 - p_neg)
    assert losses["class"].item() == pytest.approx(focal, abs=1e-6)
    assert losses["loss"].item() == pytest.approx(2 * focal + 5 * 0.3 + 2 * losses["giou"].item(), abs=1e-5)


def test_losses_are_normalised_by_the_number_of_boxes():
    w = LossWeights(cls=1.0, l1=1.0, giou=1.0, focal_alpha=0.25, focal_gamma=2.0)
    logits, boxes = torch.zeros(2, 2, 1), torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 2] * 2)
    target = Target(torch.tensor([0]), torch.tensor([[0.6, 0.5, 0.2, 0.2]]))
    one = detection_losses(logits[:1], boxes[:1], [target], [(torch.tensor([0]), torch.tensor([0]))], w)
    two = detection_losses(logits, boxes, [target, target], [(torch.tensor([0]), torch.tensor([0]))] * 2, w)
    for key in ("class", "l1", "giou"):
        assert two[key].item() == pytest.approx(one[key].item(), abs=1e-6)
    # An image with no objects only adds negatives to the class loss.
    empty = Target(torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))
    none_matched = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    mixed = detection_losses(logits, boxes, [target, empty], [(torch.tensor([0]), torch.tensor([0])), none_matched], w)
    assert mixed["l1"].item() == pytest.approx(one["l1"].item(), abs=1e-6)
    assert mixed["class"].item() > one["class"].item()


def test_top_k_ranks_patch_class_pairs():
    logits = torch.tensor([[0.0, 3.0], [2.0, -1.0], [1.0, 5.0]])
    boxes = torch.arange(12, dtype=torch.float32).view(3, 4)
    b, c, s = top_k_detections(logits, boxes, k=3)
    assert c.tolist() == [1, 1, 0]  # (patch 2, class 1), (patch 0, class 1), (patch 1, class 0)
    assert np.allclose(b, boxes[[2, 0, 1]].numpy())
    assert np.allclose(s, torch.sigmoid(torch.tensor([5.0, 3.0, 2.0])).numpy())
    assert len(top_k_detections(logits, boxes, k=100)[2]) == 6  # no more pairs than there are


# ------------------------------------------------------------------------------------------ ground truth and records


def test_pad_to_square_keeps_the_image_at_the_top_left():
    image = Image.new("RGB", (6, 3), (255, 0, 0))
    padded = pad_to_square(image)
    assert padded.size == (6, 6)
    assert padded.getpixel((5, 2)) == (255, 0, 0) and padded.getpixel((0, 3)) != (255, 0, 0)


def _annotation_file(tmp_path: Path, anns: list[dict], images=None, categories=None) -> Path:
    images = images or [
        {"id": 1, "file_name": "a.png", "width": 100, "height": 50},
        {"id": 2, "file_name": "b.png", "width": 100, "height": 50},
    ]
    categories = categories or [
        {"id": 7, "name": "red_circle", "frequency": "f"},
        {"id": 9, "name": "blue square", "frequency": "r"},
    ]
    for img in images:
        Image.new("RGB", (img["width"], img["height"])).save(tmp_path / img["file_name"])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


ODD_ANNOTATIONS = [
    {
        "id": 1,
        "image_id": 1,
        "category_id": 7,
        "bbox": [10, 10, 40, 30],
        "area": 900.0,
        "iscrowd": 0,
    },  # small by area, medium by box
    {
        "id": 2,
        "image_id": 1,
        "category_id": 9,
        "bbox": [90, 40, 10.5, 10.5],
        "area": 110.25,
        "iscrowd": 0,
    },  # runs off the image by the 1 px tolerance
    {"id": 3, "image_id": 1, "category_id": 7, "bbox": [50, 20, 0, 10], "area": 0.0, "iscrowd": 0},  # zero width
    {"id": 4, "image_id": 1, "category_id": 7, "bbox": [0, 0, 40, 40], "area": 1600.0, "iscrowd": 1},  # crowd
    {
        "id": 5,
        "image_id": 1,
        "category_id": 9,
        "bbox": [100.2, 40, 0.8, 5],
        "area": 4.0,
        "iscrowd": 0,
    },  # wholly outside, within the tolerance
]  # image 2 has no annotations


def _ground_truth(tmp_path: Path, anns=ODD_ANNOTATIONS, **kw) -> GroundTruth:
    from sparc_eval.data.registry import open_dataset
    from sparc_eval.tasks.card import DatasetSpec

    path = _annotation_file(tmp_path, anns, **kw)
    ds = open_dataset("coco-instances", tmp_path, "val", annotation=path.name)
    return GroundTruth.of(ds, DatasetSpec("coco-instances", str(tmp_path), "val", {"annotation": path.name}))


def test_training_targets_clip_skip_and_normalise_by_the_padded_side(tmp_path):
    gt = _ground_truth(tmp_path)
    t = gt.targets(1, {7: 0, 9: 1})
    # Kept: annotation 1 as is and annotation 2 clipped to [90, 100] x [40, 50]; side = 100.
    assert t.labels.tolist() == [0, 1]
    assert torch.allclose(t.boxes, torch.tensor([[0.3, 0.25, 0.4, 0.3], [0.95, 0.45, 0.1, 0.1]]))
    assert gt.targets(2, {7: 0, 9: 1}).labels.numel() == 0
    assert gt.targets(1, {7: 0}).labels.tolist() == [0]  # categories outside the queries are no targets


def test_records_rebuild_exactly_what_cocoeval_scores_on_the_file(tmp_path):
    """Per-sample records -> COCO inputs -> metrics equals COCOeval run directly on the annotation file."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = _ground_truth(tmp_path)
    rng = np.random.default_rng(0)
    samples, results = [], []
    for image_id in (1, 2):
        sample = gt.sample_ground_truth(image_id, "coco")
        boxes = [[float(v) for v in rng.uniform(0, 40, 4).round(2)] for _ in range(6)]
        boxes[0] = [10.0, 10.0, 40.0, 30.0]
        boxes[1] = [90.0, 40.0, 10.0, 10.0]
        cats = [7, 9, 7, 9, 7, 9]
        scores = [float(s) for s in rng.uniform(0, 1, 6).round(6)]
        sample["detections"] = {"boxes": boxes, "category_ids": cats, "scores": scores}
        samples.append(sample)
        results += [{"image_id": image_id, "category_id": c, "bbox": b, "score": s} for b, c, s in zip(boxes, cats, scores)]

    coco = COCO(str(tmp_path / "instances.json"))
    direct = COCOeval(coco, coco.loadRes(results), "bbox")
    direct.evaluate(), direct.accumulate(), direct.summarize()
    ours = DetectionRunner.aggregate(samples, Params())
    for name, value in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), direct.stats):
        assert ours[name] == (None if value < 0 else pytest.approx(value, abs=1e-12)), name
    # A resample that repeats an image is scored as two images, not merged into one.
    doubled = DetectionRunner.aggregate([samples[0], samples[0]], Params())
    gt_doubled, dets_doubled = samples_to_coco([samples[0], samples[0]])
    assert len(gt_doubled["images"]) == 2 and len(dets_doubled) == 12
    # Two identical images give the same precision-recall curve as one: COCOeval on image 1 alone, called directly.
    single = COCOeval(coco, coco.loadRes([r for r in results if r["image_id"] == 1]), "bbox")
    single.params.imgIds = [1]
    single.evaluate(), single.accumulate(), single.summarize()
    for name, value in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), single.stats):
        assert doubled[name] == (None if value < 0 else pytest.approx(value, abs=1e-12)), name


def test_bad_box_is_a_one_sentence_error_naming_the_annotation(tmp_path):
    anns = [{"id": 41, "image_id": 1, "category_id": 7, "bbox": [10, 10, -5, 10], "area": 1.0, "iscrowd": 0}]
    with pytest.raises(
        SparcEvalError, match=r"annotation file .*instances.json: annotation 41 has bbox \[10, 10, -5, 10\] with a negative width"
    ):
        _ground_truth(tmp_path, anns)
    anns = [{"id": 42, "image_id": 1, "category_id": 7, "bbox": [10, 10, 5], "area": 1.0, "iscrowd": 0}]
    with pytest.raises(SparcEvalError, match="annotation file .*instances.json: annotation 42 has bbox"):
        _ground_truth(tmp_path, anns)


def _card(tmp_path: Path, **params) -> Path:
    card = tmp_path / "det.yaml"
    spec = {"format": "coco-instances", "root": str(tmp_path), "split": "val", "annotation": "instances.json"}
    card.write_text(
        json.dumps({"name": "det", "version": 1, "runner": "detection", "dataset": spec, "fit_dataset": spec, "params": params})
    )
    return card


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"top_k": 0}, "'top_k'"),
        ({"protocol": "lvis", "top_k": 301}, "at most 300"),
        ({"epochs": 0}, "'epochs'"),
        ({"focal_alpha": 1.5}, "'focal_alpha'"),
    ],
)
def test_bad_params_name_the_card_and_key(tmp_path, params, needle):
    from sparc_eval.tasks.card import load_card, validate_params

    path = _card(tmp_path, **params)
    with pytest.raises(SparcEvalError, match=needle) as info:  # when the card is loaded, before any model
        load_card(path)
    assert str(path) in str(info.value)
    card = load_card(_card(tmp_path))
    with pytest.raises(SparcEvalError, match=needle):  # and by the runner itself, for params built in code
        DetectionRunner(card, validate_params(Params, params, card), ctx=None)
