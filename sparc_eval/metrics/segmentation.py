"""Semantic-segmentation metrics: per-class intersection / union areas, mIoU, aAcc, mAcc.

Pure numpy, the same definitions as mmsegmentation's `IoUMetric` (checked against it in the tests):
areas are summed over the whole split first, then

    IoU_c = I_c / U_c        Acc_c = I_c / L_c        aAcc = sum_c I_c / sum_c L_c

where I_c, U_c, L_c are class c's intersection, union and ground-truth area over all non-ignored
pixels. mIoU is the mean of IoU_c over the classes with U_c > 0, i.e. classes that occur in the
ground truth or in the prediction somewhere in the split; a class in neither is skipped (mmseg's
NaN, dropped by nanmean), a class predicted but never in the ground truth counts with IoU 0. mAcc
is the mean of Acc_c over the classes with L_c > 0 (present in the ground truth).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Counts [num_classes, num_classes], rows = ground-truth class, columns = predicted class; ignored pixels dropped.

    Raises ValueError on a shape mismatch or on a label / prediction outside [0, num_classes) at a non-ignored pixel.
    """
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    keep = label != ignore_index
    gt, pr = label[keep].astype(np.int64), pred[keep].astype(np.int64)
    for name, values in (("label", gt), ("prediction", pr)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} value {int(values.max() if values.max() >= num_classes else values.min())} outside [0, {num_classes})"
            )
    return np.bincount(gt * num_classes + pr, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class Areas:
    """Per-class pixel counts of one image or of a whole split (int64 [C] each)."""

    intersect: np.ndarray
    union: np.ndarray
    pred: np.ndarray
    label: np.ndarray

    @classmethod
    def from_confusion(cls, cm: np.ndarray) -> Areas:
        intersect = np.diag(cm).astype(np.int64)
        label, pred = cm.sum(1).astype(np.int64), cm.sum(0).astype(np.int64)
        return cls(intersect, label + pred - intersect, pred, label)

    @classmethod
    def from_counts(cls, intersect, union, label) -> Areas:
        """Rebuild from the three counts a per-sample record stores (pred = union - label + intersect)."""
        i, u, lab = (np.asarray(x, dtype=np.int64) for x in (intersect, union, label))
        if not (i.shape == u.shape == lab.shape) or i.ndim != 1:
            raise ValueError(f"intersect / union / label counts must be 1-D of one length, got {i.shape}, {u.shape}, {lab.shape}")
        return cls(i, u, u - lab + i, lab)

    def __add__(self, other: Areas) -> Areas:
        return Areas(self.intersect + other.intersect, self.union + other.union, self.pred + other.pred, self.label + other.label)


def intersect_and_union(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Areas:
    """Per-class areas of one image (mmseg's `intersect_and_union`, exact integer counts)."""
    return Areas.from_confusion(confusion_matrix(pred, label, num_classes, ignore_index))


def total_areas(per_image: list[Areas], num_classes: int) -> Areas:
    """Areas summed over a split (all zeros for an empty list)."""
    total = Areas(*(np.zeros(num_classes, np.int64) for _ in range(4)))
    for areas in per_image:
        total = total + areas
    return total


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den per class, NaN where den == 0 (the class is undefined there)."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> float | None:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else None


@dataclass(frozen=True)
class SegmentationScores:
    """Fractions in [0, 1]; None where undefined (no scored pixel / no class defined), per-class NaN where undefined."""

    miou: float | None
    aacc: float | None
    macc: float | None
    iou: np.ndarray  # [C]
    acc: np.ndarray  # [C]
    n_classes_scored: int  # classes with union > 0: the ones mIoU averages


def segmentation_scores(areas: Areas) -> SegmentationScores:
    """mIoU, aAcc, mAcc and per-class IoU / accuracy from split-level areas (definitions in the module docstring)."""
    iou = _ratio(areas.intersect, areas.union)
    acc = _ratio(areas.intersect, areas.label)
    total_label = int(areas.label.sum())
    return SegmentationScores(
        miou=_nanmean(iou),
        aacc=float(areas.intersect.sum() / total_label) if total_label else None,
        macc=_nanmean(acc),
        iou=iou,
        acc=acc,
        n_classes_scored=int((areas.union > 0).sum()),
    )
