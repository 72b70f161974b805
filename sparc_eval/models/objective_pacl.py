"""PACL (Mukhoti et al. 2023, arXiv 2212.04994, Section 3): patch-aligned contrastive learning.

A vision embedder e_v maps patch tokens into the shared space; for image i and text j with text embedding t_j:

    a_ijp = softmax_p cos(e_v(v_ip), t_j)          patch weights of image i for text j (no temperature)
    x_ij  = sum_p a_ijp e_v(v_ip)                  the text-conditioned image embedding
    s_ij  = cos(x_ij, t_j)

and InfoNCE over the batch on s with the learned inverse temperature, both directions averaged.

The vision embedder is PACL's residual form, a linear branch plus a non-linear one: here the linear branch is
the model's own adapter g_v and the non-linear branch (Linear-GELU-Linear) is a model part, created when a
PACL run builds its model (`MODEL_CONFIG`), saved in model.safetensors and read by every loader. The model
contract's `local` dense head is this embedder, so segmentation with `head: local` is PACL's own protocol
(per-patch e_v(v_p) against class-name embeddings). The text embedder is the model's g_t on the mean of the
real tokens' features (PACL uses the [CLS] token of its text tower; ours has none).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparc_eval.models.objectives import check_non_negative, gather_with_grad, global_contrastive_loss, symmetric_cross_entropy


def pacl_similarities(patch_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """s [B_images, B_texts] from embedded patches [Bi, P, D] and text embeddings [Bt, D] (see the module doc)."""
    texts = F.normalize(text_emb, dim=-1)
    weights = torch.einsum("ipd,jd->ijp", F.normalize(patch_emb, dim=-1), texts).softmax(dim=-1)
    pooled = torch.einsum("ijp,ipd->ijd", weights, patch_emb)
    return torch.einsum("ijd,jd->ij", F.normalize(pooled, dim=-1), texts)


def pacl_loss(patch_emb: torch.Tensor, text_emb: torch.Tensor, inv_temperature: torch.Tensor) -> torch.Tensor:
    """PACL's patch-aligned contrastive loss over the (global) batch: rows of this rank's images and texts."""
    all_patches, offset = gather_with_grad(patch_emb)
    all_texts, _ = gather_with_grad(text_emb)
    n_local = patch_emb.shape[0]
    s_image = pacl_similarities(patch_emb, all_texts)  # this rank's images x every text
    s_text = s_image if all_patches.shape[0] == n_local else pacl_similarities(all_patches, text_emb)
    return symmetric_cross_entropy(inv_temperature * s_image, inv_temperature * s_text.T, offset)


class PaclObjective(nn.Module):
    """lambda_g * global + lambda_f * PACL loss. PACL's own loss has no global term (lambda_g = 0): the paper
    trains its embedders on top of a frozen CLIP, whose global alignment it inherits."""

    name = "pacl"
    # The model this objective trains carries PACL's residual vision embedder as its local dense head.
    MODEL_CONFIG = {"local_head": "linear+mlp"}

    def __init__(self, lambda_g: float = 0.0, lambda_f: float = 1.0):
        super().__init__()
        check_non_negative(lambda_g=lambda_g, lambda_f=lambda_f)
        self.lambda_g, self.lambda_f = float(lambda_g), float(lambda_f)

    def forward(self, out: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scale = out["logit_scale"]
        g = global_contrastive_loss(out["image_emb"], out["text_emb"], scale)
        f = pacl_loss(out["patch_emb"], out["text_emb"], scale)
        return {"total": self.lambda_g * g + self.lambda_f * f, "global": g, "fine": f}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lambda_g": self.lambda_g,
            "lambda_f": self.lambda_f,
            "vision_embedder": "g_v(patch) + MLP(patch), MLP = Linear-GELU-Linear (model part; the local dense head)",
            "text_embedder": "g_t on the mean of the real tokens' features (the global text embedding)",
            "patch_weights": "softmax over patches of the cosine similarity, no temperature",
            "pooling": "weighted sum of the embedded (unnormalised) patches, then cosine with the text embedding",
            "temperature": "the model's learned inverse temperature, shared with the global loss",
            "training": "towers trained from scratch with the embedders (the paper freezes a pretrained CLIP)",
            "distributed": "patch and text embeddings gathered from every rank with gradients",
        }
