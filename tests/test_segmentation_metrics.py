"""Segmentation metrics: a hand-worked example with edge cases, and equality with mmseg's IoUMetric."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparc_eval.metrics.segmentation import (
    Areas,
    confusion_matrix,
    intersect_and_union,
    segmentation_scores,
    total_areas,
)

I = 255  # ignore


def test_hand_worked_example():
    # 4 classes over two images. Class 3 occurs nowhere (skipped); class 2 is predicted but never in the
    # ground truth (counts with IoU 0 in mIoU, skipped in mAcc); ignored pixels count nowhere.
    label_a = np.array([[0, 0, 1], [1, 1, I]])
    pred_a = np.array([[0, 1, 1], [1, 2, 3]])  # the 3 sits on an ignored pixel: not counted
    label_b = np.array([[0, 1], [I, 0]])
    pred_b = np.array([[0, 0], [0, 2]])
    a = intersect_and_union(pred_a, label_a, 4)
    b = intersect_and_union(pred_b, label_b, 4)
    # image a, five scored pixels (gt, pred): (0,0) (0,1) (1,1) (1,1) (1,2).
    assert a.intersect.tolist() == [1, 2, 0, 0]
    assert a.label.tolist() == [2, 3, 0, 0]
    assert a.pred.tolist() == [1, 3, 1, 0]
    assert a.union.tolist() == [2, 4, 1, 0]
    total = total_areas([a, b], 4)
    # image b, three scored pixels (gt, pred): (0,0) (1,0) (0,2).
    assert total.intersect.tolist() == [2, 2, 0, 0]
    assert total.label.tolist() == [4, 4, 0, 0]
    assert total.pred.tolist() == [3, 3, 2, 0]
    assert total.union.tolist() == [5, 5, 2, 0]
    s = segmentation_scores(total)
    assert s.iou[:3].tolist() == [2 / 5, 2 / 5, 0.0] and math.isnan(s.iou[3])
    assert s.miou == pytest.approx((2 / 5 + 2 / 5 + 0.0) / 3)
    assert s.aacc == pytest.approx(4 / 8)
    assert s.macc == pytest.approx((2 / 4 + 2 / 4) / 2)
    assert s.n_classes_scored == 3


def test_confusion_matrix_rows_are_ground_truth():
    cm = confusion_matrix(np.array([1, 1, 0, I]), np.array([0, 1, 1, I]), 2)
    assert cm.tolist() == [[0, 1], [1, 1]]


def test_everything_ignored_is_undefined_not_nan():
    areas = intersect_and_union(np.zeros((2, 2), int), np.full((2, 2), I), 3)
    s = segmentation_scores(areas)
    assert s.miou is None and s.aacc is None and s.macc is None and s.n_classes_scored == 0


def test_out_of_range_values_are_refused():
    with pytest.raises(ValueError, match="label value 3"):
        confusion_matrix(np.zeros(3, int), np.array([0, 3, I]), 3)
    with pytest.raises(ValueError, match="prediction value -1"):
        confusion_matrix(np.array([0, -1, 0]), np.zeros(3, int), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)


def test_from_counts_round_trips():
    rng = np.random.default_rng(0)
    a = intersect_and_union(rng.integers(0, 5, (7, 9)), rng.integers(0, 5, (7, 9)), 5)
    b = Areas.from_counts(a.intersect.tolist(), a.union.tolist(), a.label.tolist())
    for field in ("intersect", "union", "pred", "label"):
        assert getattr(a, field).tolist() == getattr(b, field).tolist()


# ----------------------------------------------------------------------------- mmseg as the peer


@st.composite
def split_of_images(draw):
    """A few images of random labels (with ignored pixels) and predictions; some classes absent everywhere."""
    num_classes = draw(st.integers(1, 7))
    n_images = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # Draw from a random subset of the classes so that absent / never-predicted classes occur.
    used_gt = rng.choice(num_classes, size=rng.integers(1, num_classes + 1), replace=False)
    used_pred = rng.choice(num_classes, size=rng.integers(1, num_classes + 1), replace=False)
    images = []
    for _ in range(n_images):
        h, w = rng.integers(1, 12, 2)
        label = rng.choice(used_gt, (h, w))
        label[rng.random((h, w)) < draw(st.sampled_from([0.0, 0.2, 1.0]))] = I
        pred = rng.choice(used_pred, (h, w))
        images.append((pred, label))
    return num_classes, images


def _mmseg_metric(num_classes):
    iou_metric = pytest.importorskip("mmseg.evaluation").IoUMetric
    metric = iou_metric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": [f"c{i}" for i in range(num_classes)]}
    return metric


def _mmseg_sample(pred, label):
    import torch

    return {
        "pred_sem_seg": {"data": torch.as_tensor(pred)[None]},
        "gt_sem_seg": {"data": torch.as_tensor(label)[None]},
    }


def assert_matches_mmseg(num_classes: int, images: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Our scores == mmseg IoUMetric on the same predictions: per-class arrays exactly, summaries as mmseg rounds them."""
    import torch

    metric = _mmseg_metric(num_classes)
    ours = total_areas([intersect_and_union(p, lab, num_classes) for p, lab in images], num_classes)
    theirs = [metric.intersect_and_union(torch.as_tensor(p), torch.as_tensor(lab), num_classes, I) for p, lab in images]
    for k, field in enumerate(("intersect", "union", "pred", "label")):
        assert getattr(ours, field).tolist() == sum(t[k] for t in theirs).long().tolist(), field
    ref = metric.total_area_to_metrics(*(sum(t[k] for t in theirs) for k in range(4)), ["mIoU"])
    s = segmentation_scores(ours)
    np.testing.assert_allclose(s.iou, ref["IoU"], rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(s.acc, ref["Acc"], rtol=1e-6, equal_nan=True)

    metric.process({}, [_mmseg_sample(p, lab) for p, lab in images])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mmseg's nanmean over classes that are all NaN
        summary = metric.compute_metrics(metric.results)
    for ours_value, key in ((s.miou, "mIoU"), (s.aacc, "aAcc"), (s.macc, "mAcc")):
        if ours_value is None:
            assert math.isnan(summary[key]), key
        else:
            # mmseg reports percent rounded to 2 decimals, computed in float32
            assert abs(ours_value * 100 - float(summary[key])) <= 0.005 + 1e-4, key


@pytest.mark.mm
@settings(max_examples=60, deadline=None)
@given(split_of_images())
def test_equals_mmseg_iou_metric_on_random_predictions(case):
    num_classes, images = case
    assert_matches_mmseg(num_classes, images)
