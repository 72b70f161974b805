"""OWL-ViT-style detection heads (Minderer et al. 2022) on a model's dense patch embeddings.

Every patch predicts one box and one class embedding:
  box    = sigmoid(MLP(LN(x)) + bias)            cxcywh in [0, 1] of the (padded, square) image;
           bias = logit of the patch's grid-centre location and of a one-patch size prior
  logits = (<normalize(W x), q_c> + shift(LN(x))) * scale(LN(x))     q_c: L2-normalised text query of class c
           scale = elu(.) + 1 > 0 (OWL-ViT's learned per-patch logit shift and scale)
W starts as the identity and the scale as the model's own inverse temperature, so before fitting
the class logit is the model's zero-shot patch-text logit (shifted so that every score starts at the
focal-loss prior 0.01, RetinaNet's initialisation): the fit starts from the alignment under test
rather than from a random projection.

Training follows DETR / OWL-ViT: per image, a Hungarian matching (scipy) of patches to ground-truth
boxes on focal class + L1 + gIoU costs; sigmoid focal loss over every (patch, class) pair, L1 and gIoU
losses on matched boxes, each normalised by the number of ground-truth boxes in the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

FOCAL_PRIOR = 0.01  # initial score of every (patch, class) pair


def box_bias(grid_h: int, grid_w: int) -> torch.Tensor:
    """[P, 4] inverse-sigmoid of each patch's centre (cx, cy) and of a one-patch box size (w, h), row-major."""
    ys, xs = torch.meshgrid(
        (torch.arange(grid_h, dtype=torch.float64) + 0.5) / grid_h,
        (torch.arange(grid_w, dtype=torch.float64) + 0.5) / grid_w,
        indexing="ij",
    )
    size = torch.tensor([1.0 / grid_w, 1.0 / grid_h], dtype=torch.float64).expand(grid_h * grid_w, 2)
    prior = torch.cat([torch.stack([xs.flatten(), ys.flatten()], dim=1), size], dim=1)
    return torch.logit(prior).float()


class OwlHead(nn.Module):
    """Box and class heads on patch embeddings [B, P, dim] from a fixed (grid_h, grid_w) patch grid."""

    def __init__(self, dim: int, grid_h: int, grid_w: int, init_logit_scale: float = 1.0):
        super().__init__()
        self.dim, self.grid = dim, (grid_h, grid_w)
        self.norm = nn.LayerNorm(dim)
        self.class_proj = nn.Linear(dim, dim)
        with torch.no_grad():
            self.class_proj.weight.copy_(torch.eye(dim))
            self.class_proj.bias.zero_()
        self.logit_shift = nn.Linear(dim, 1)
        self.logit_scale = nn.Linear(dim, 1)
        with torch.no_grad():  # scale = elu(b) + 1 = init_logit_scale; shift = logit(prior) / scale
            t = float(init_logit_scale)
            nn.init.zeros_(self.logit_scale.weight)
            self.logit_scale.bias.fill_(t - 1 if t >= 1 else math.log(t))
            nn.init.zeros_(self.logit_shift.weight)
            self.logit_shift.bias.fill_(math.log(FOCAL_PRIOR / (1 - FOCAL_PRIOR)) / t)
        self.box_mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 4))
        # Zero last layer: the first prediction of every patch is its prior box (grid cell), not noise.
        nn.init.zeros_(self.box_mlp[-1].weight)
        nn.init.zeros_(self.box_mlp[-1].bias)
        self.register_buffer("box_bias", box_bias(grid_h, grid_w), persistent=False)

    def forward(self, patches: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """patches [B, P, dim], queries [C, dim] (L2-normalised) -> class logits [B, P, C], boxes [B, P, 4] cxcywh."""
        if patches.shape[1] != self.box_bias.shape[0]:
            raise ValueError(f"head fitted for a {self.grid[0]}x{self.grid[1]} patch grid got {patches.shape[1]} patches")
        normed = self.norm(patches)
        class_emb = F.normalize(self.class_proj(patches), dim=-1)
        logits = class_emb @ queries.T
        logits = (logits + self.logit_shift(normed)) * (F.elu(self.logit_scale(normed)) + 1)
        boxes = torch.sigmoid(self.box_mlp(normed) + self.box_bias)
        return logits, boxes


@dataclass(frozen=True)
class LossWeights:
    """Weights of the matching costs and of the losses (the same three serve both, as in DETR)."""

    cls: float
    l1: float
    giou: float
    focal_alpha: float
    focal_gamma: float


@dataclass
class Target:
    """One image's ground truth: class indices into the queries [N] and boxes [N, 4] cxcywh in [0, 1]."""

    labels: torch.Tensor
    boxes: torch.Tensor


def _xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def match_cost(logits: torch.Tensor, boxes: torch.Tensor, target: Target, w: LossWeights) -> torch.Tensor:
    """[P, N] cost of assigning each patch's prediction to each ground-truth box (one image).

    Class cost is the focal loss of calling the patch the target class minus that of not calling it
    (Deformable DETR / OWL-ViT); box costs are the L1 distance in cxcywh and the negative gIoU.
    """
    p = logits[:, target.labels].sigmoid()
    eps = 1e-8
    pos = w.focal_alpha * (1 - p) ** w.focal_gamma * -(p + eps).log()
    neg = (1 - w.focal_alpha) * p**w.focal_gamma * -(1 - p + eps).log()
    cost_l1 = torch.cdist(boxes, target.boxes, p=1)
    cost_giou = -generalized_box_iou(_xyxy(boxes), _xyxy(target.boxes))
    return w.cls * (pos - neg) + w.l1 * cost_l1 + w.giou * cost_giou


@torch.no_grad()
def hungarian_match(
    logits: torch.Tensor, boxes: torch.Tensor, targets: list[Target], w: LossWeights
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image, the (patch indices, target indices) of the minimum-cost one-to-one assignment."""
    matches = []
    for b, target in enumerate(targets):
        if len(target.labels) == 0:
            empty = torch.zeros(0, dtype=torch.long)
            matches.append((empty, empty))
            continue
        cost = match_cost(logits[b].float(), boxes[b].float(), target, w)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        matches.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
    return matches


def detection_losses(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    targets: list[Target],
    matches: list[tuple[torch.Tensor, torch.Tensor]],
    w: LossWeights,
    normaliser: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Focal class loss over all (patch, class) pairs, L1 and gIoU over matched boxes, each / number of boxes
    (or / `normaliser`: under DDP the global batch's box count over the world size)."""
    n_boxes = normaliser if normaliser is not None else max(sum(len(t.labels) for t in targets), 1)
    onehot = torch.zeros_like(logits)
    matched_pred, matched_true = [], []
    for b, ((rows, cols), target) in enumerate(zip(matches, targets)):
        onehot[b, rows, target.labels[cols]] = 1.0
        matched_pred.append(boxes[b, rows])
        matched_true.append(target.boxes[cols])
    cls = sigmoid_focal_loss(logits, onehot, alpha=w.focal_alpha, gamma=w.focal_gamma, reduction="sum") / n_boxes
    pred, true = torch.cat(matched_pred), torch.cat(matched_true)
    l1 = F.l1_loss(pred, true, reduction="sum") / n_boxes
    giou = (1 - torch.diag(generalized_box_iou(_xyxy(pred), _xyxy(true)))).sum() / n_boxes
    total = w.cls * cls + w.l1 * l1 + w.giou * giou
    return {"loss": total, "class": cls, "l1": l1, "giou": giou}


def top_k_detections(logits: torch.Tensor, boxes: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: the k highest-scoring (patch, class) pairs -> (boxes [k, 4] cxcywh, class indices [k], scores [k]).

    Scores are sigmoid(class logits); a patch may appear with several classes, as in OWL-ViT's LVIS protocol.
    """
    scores = logits.float().sigmoid().flatten()
    k = min(k, scores.numel())
    top = torch.topk(scores, k)
    n_classes = logits.shape[1]
    patch, cls = top.indices // n_classes, top.indices % n_classes
    return boxes[patch].float().numpy(), cls.numpy(), top.values.numpy()
