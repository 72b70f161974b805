"""Zero-shot classification metrics: top-k accuracy and mean per-class recall (CLIP_benchmark definitions).

CLIP_benchmark scores top-1 / top-5 accuracy (top-5 only with at least 5 classes) and mean per-class
recall = sklearn's `balanced_accuracy_score` of the argmax prediction: the mean, over the classes that
occur among the labels, of the share of that class's samples predicted right.

Ties: torch.topk / argmax break them by position, which can credit a model that scores every class the
same. Here a class tied with the label is ranked above it (ties count against the model); without ties
the numbers are CLIP_benchmark's exactly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch


def label_ranks(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1-based rank of each sample's label among its class scores [N, C]: 1 + the other classes scoring >= it."""
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"expected scores [N, C] and labels [N], got {tuple(scores.shape)} and {tuple(labels.shape)}")
    if torch.isnan(scores).any():
        raise ValueError("class scores contain NaN")
    target = scores.gather(1, labels[:, None].long())
    # The label's own score counts once (>= itself), which makes the rank 1-based.
    return (scores >= target).sum(dim=1)


def hits_at_k(ranks: Sequence[int], k: int) -> list[int]:
    """1 where the label is among the k best classes, else 0 (per sample, for paired tests)."""
    return [int(r <= k) for r in ranks]


def accuracy(hits: Sequence[int | bool]) -> float | None:
    """Share of samples that are hits; None for no samples."""
    return sum(map(int, hits)) / len(hits) if len(hits) else None


def mean_per_class_recall(labels: Sequence[int], top1_hits: Sequence[int | bool]) -> float | None:
    """Mean over the classes present in `labels` of the share of that class's samples whose top-1 is right."""
    if len(labels) != len(top1_hits):
        raise ValueError(f"{len(labels)} labels but {len(top1_hits)} hits")
    per_class: dict[int, list[int]] = defaultdict(list)
    for label, hit in zip(labels, top1_hits):
        per_class[int(label)].append(int(hit))
    if not per_class:
        return None
    return sum(sum(h) / len(h) for h in per_class.values()) / len(per_class)
