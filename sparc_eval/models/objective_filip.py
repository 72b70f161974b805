"""FILIP (Yao et al. 2021, arXiv 2111.07783, Section 3.1.1): token-wise late interaction.

For image i with patch embeddings x_k and text j with real-token embeddings y_r (both L2-normalised):

    s_I(i, j) = 1/P  sum_k max_r  x_k . y_r        image-to-text: each patch's best token of j
    s_T(i, j) = 1/n_j sum_r max_k x_k . y_r        text-to-image: each real token's best patch of i

InfoNCE over the batch with the learned inverse temperature, s_I for the image-to-text direction (rows:
images) and s_T for the text-to-image direction (rows: texts), averaged (FILIP's Eqs. 4-5). Padded tokens
(and the start/end markers, which carry no word) are never a patch's best token and never a query.
In distributed training every rank gathers all patch and token embeddings with gradients (as FILIP
does), so 2 processes compute the loss of the whole global batch, like 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparc_eval.models.objectives import (
    check_non_negative,
    gather_with_grad,
    global_contrastive_loss,
    real_length,
    symmetric_cross_entropy,
)

# Text columns per block: bounds the [B, block, P, L] similarity tensor (only its max indices are kept for backward).
_TEXT_BLOCK = 64


def filip_similarities(
    patch_emb: torch.Tensor, token_emb: torch.Tensor, token_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_I, s_T), each [B_images, B_texts], from patch_emb [Bi, P, D], token_emb [Bt, L, D], token_mask [Bt, L].

    A text without real tokens has no evidence either way: both its similarities are 0.
    """
    patches = F.normalize(patch_emb, dim=-1)
    tokens = F.normalize(token_emb, dim=-1)
    mask = token_mask.bool()
    n_real = mask.sum(-1)
    s_image, s_text = [], []
    for start in range(0, tokens.shape[0], _TEXT_BLOCK):
        tok, m = tokens[start : start + _TEXT_BLOCK], mask[start : start + _TEXT_BLOCK]
        sim = torch.einsum("ipd,jld->ijpl", patches, tok)
        # max(dim) keeps only the arg-max indices for backward (amax would keep the whole tensor).
        best_token = sim.masked_fill(~m[None, :, None, :], torch.finfo(sim.dtype).min).max(dim=-1).values  # [Bi, b, P]
        s_image.append(best_token.mean(-1))
        best_patch = sim.max(dim=-2).values  # [Bi, b, L]
        s_text.append(
            torch.where(m[None], best_patch, torch.zeros_like(best_patch)).sum(-1)
            / n_real[start : start + _TEXT_BLOCK].clamp(min=1)
        )
    s_image, s_text = torch.cat(s_image, 1), torch.cat(s_text, 1)
    has_words = (n_real > 0)[None, :]
    return torch.where(has_words, s_image, torch.zeros_like(s_image)), torch.where(has_words, s_text, torch.zeros_like(s_text))


def filip_loss(
    patch_emb: torch.Tensor, token_emb: torch.Tensor, token_mask: torch.Tensor, inv_temperature: torch.Tensor
) -> torch.Tensor:
    """FILIP's token-wise contrastive loss over the (global) batch; see the module doc."""
    all_patches, offset = gather_with_grad(patch_emb)
    all_tokens, _ = gather_with_grad(token_emb)
    all_masks, _ = gather_with_grad(token_mask.to(token_emb.dtype))
    all_masks = all_masks > 0.5
    keep = real_length(all_masks)  # drop the batch's trailing padding
    all_tokens, all_masks = all_tokens[:, :keep], all_masks[:, :keep]
    n_local = patch_emb.shape[0]
    local_tokens, local_masks = all_tokens[offset : offset + n_local], all_masks[offset : offset + n_local]
    if all_patches.shape[0] == n_local:  # one process: one pass gives both directions
        s_image, s_text = filip_similarities(patch_emb, all_tokens, all_masks)
    else:
        s_image, _ = filip_similarities(patch_emb, all_tokens, all_masks)  # rows: this rank's images
        _, s_text = filip_similarities(all_patches, local_tokens, local_masks)  # columns: this rank's texts
    return symmetric_cross_entropy(inv_temperature * s_image, inv_temperature * s_text.T, offset)


class FilipObjective(nn.Module):
    """lambda_g * global + lambda_f * FILIP token-wise loss; FILIP's own loss has no global term (lambda_g = 0)."""

    name = "filip"

    def __init__(self, lambda_g: float = 0.0, lambda_f: float = 1.0):
        super().__init__()
        check_non_negative(lambda_g=lambda_g, lambda_f=lambda_f)
        self.lambda_g, self.lambda_f = float(lambda_g), float(lambda_f)

    def forward(self, out: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scale = out["logit_scale"]
        g = global_contrastive_loss(out["image_emb"], out["text_emb"], scale)
        f = filip_loss(out["patch_emb"], out["token_emb"], out["token_mask"], scale)
        return {"total": self.lambda_g * g + self.lambda_f * f, "global": g, "fine": f}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lambda_g": self.lambda_g,
            "lambda_f": self.lambda_f,
            "similarity": "cosine of g_v(patch) and g_t(token); image-to-text: mean over patches of the max over real tokens; "
            "text-to-image: mean over real tokens of the max over patches",
            "tokens": "real word tokens only (padding and start/end markers excluded)",
            "temperature": "the model's learned inverse temperature, shared with the global loss",
            "distributed": "patch and token embeddings gathered from every rank with gradients",
            "left_out": "FILIP's cost savers (256-d embeddings, fp16 gathering, keeping only part of the tokens): they change cost, not the loss",
        }
