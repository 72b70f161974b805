"""GLoRIA (Huang et al., ICCV 2021, Section 3.2): attention-weighted local image-text matching.

For image i with patch embeddings v_p and text j with real-token ("word") embeddings q_l:

    a_ijlp = softmax_p(tau1 * q_l . v_p)                   each word attends over the image's patches
    c_ijl  = sum_p a_ijlp v_p                              its word-specific image context
    Z_ij   = 1/tau2 * log sum_l exp(tau2 * cos(c_ijl, q_l))   the local image-text score (a soft max over words)

and a contrastive loss over the batch on tau3 * Z, image-to-text and text-to-image, averaged; plus the
global loss. The paper's tau1 = 4, tau2 = 5, tau3 = 10 are the defaults; all three multiply (inverse
temperatures), as the released code (marshuang80/gloria) applies them.

Two differences from the released code, where it departs from the paper's equations: the code applies
a softmax over words before the softmax over patches (an AttnGAN heritage the paper does not describe),
and it leaves out the 1/tau2 of Z (so its local logits are 5 times larger); we follow the paper. The code
sums the two directions of each loss, we average them, as the global loss does (a common factor that
leaves the ratio of the two terms unchanged). GLoRIA's word features sum the sub-word pieces of a word;
ours are BPE tokens, each its own "word". Its global loss uses a fixed scale tau3; ours is the shared
global loss with the learned temperature. Distributed: embeddings gathered from every rank with gradients.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparc_eval.models.objectives import (
    check_non_negative,
    check_positive,
    gather_with_grad,
    global_contrastive_loss,
    real_length,
    symmetric_cross_entropy,
)

_TEXT_BLOCK = 32  # text columns per block: bounds the [Bi, block, L, P] attention and [Bi, block, L, D] contexts


def gloria_scores(
    patch_emb: torch.Tensor, token_emb: torch.Tensor, token_mask: torch.Tensor, tau1: float, tau2: float
) -> torch.Tensor:
    """Z [B_images, B_texts] from patch_emb [Bi, P, D], token_emb [Bt, L, D], token_mask [Bt, L] (module doc).

    A text without real tokens scores 0 against every image.
    """
    mask = token_mask.bool()
    words = F.normalize(token_emb, dim=-1)
    scores = []
    for start in range(0, token_emb.shape[0], _TEXT_BLOCK):
        tok, m = token_emb[start : start + _TEXT_BLOCK], mask[start : start + _TEXT_BLOCK]
        attn = (tau1 * torch.einsum("ipd,jld->ijlp", patch_emb, tok)).softmax(dim=-1)
        context = F.normalize(torch.einsum("ijlp,ipd->ijld", attn, patch_emb), dim=-1)
        cos = torch.einsum("ijld,jld->ijl", context, words[start : start + _TEXT_BLOCK])
        cos = (tau2 * cos).masked_fill(~m[None], torch.finfo(cos.dtype).min)
        z = cos.logsumexp(dim=-1) / tau2
        scores.append(torch.where(m.any(-1)[None], z, torch.zeros_like(z)))
    return torch.cat(scores, 1)


def gloria_local_loss(
    patch_emb: torch.Tensor,
    token_emb: torch.Tensor,
    token_mask: torch.Tensor,
    *,
    tau1: float = 4.0,
    tau2: float = 5.0,
    tau3: float = 10.0,
) -> torch.Tensor:
    """GLoRIA's local contrastive loss over the (global) batch; see the module doc."""
    all_patches, offset = gather_with_grad(patch_emb)
    all_tokens, _ = gather_with_grad(token_emb)
    all_masks = gather_with_grad(token_mask.to(token_emb.dtype))[0] > 0.5
    keep = real_length(all_masks)  # drop the batch's trailing padding
    all_tokens, all_masks = all_tokens[:, :keep], all_masks[:, :keep]
    n_local = patch_emb.shape[0]
    z_image = gloria_scores(patch_emb, all_tokens, all_masks, tau1, tau2)  # this rank's images x every text
    if all_patches.shape[0] == n_local:
        z_text = z_image
    else:  # every image x this rank's texts
        local = slice(offset, offset + n_local)
        z_text = gloria_scores(all_patches, all_tokens[local], all_masks[local], tau1, tau2)
    return symmetric_cross_entropy(tau3 * z_image, tau3 * z_text.T, offset)


class GloriaObjective(nn.Module):
    """lambda_g * global + lambda_f * GLoRIA local loss; the paper weights both 1."""

    name = "gloria"

    def __init__(self, lambda_g: float = 1.0, lambda_f: float = 1.0, tau1: float = 4.0, tau2: float = 5.0, tau3: float = 10.0):
        super().__init__()
        check_non_negative(lambda_g=lambda_g, lambda_f=lambda_f)
        check_positive(tau1=tau1, tau2=tau2, tau3=tau3)
        self.lambda_g, self.lambda_f = float(lambda_g), float(lambda_f)
        self.tau1, self.tau2, self.tau3 = float(tau1), float(tau2), float(tau3)

    def forward(self, out: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        g = global_contrastive_loss(out["image_emb"], out["text_emb"], out["logit_scale"])
        f = gloria_local_loss(
            out["patch_emb"], out["token_emb"], out["token_mask"], tau1=self.tau1, tau2=self.tau2, tau3=self.tau3
        )
        return {"total": self.lambda_g * g + self.lambda_f * f, "global": g, "fine": f}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lambda_g": self.lambda_g,
            "lambda_f": self.lambda_f,
            "tau1": self.tau1,
            "tau2": self.tau2,
            "tau3": self.tau3,
            "attention": "softmax over patches of tau1 * raw dot products g_t(token) . g_v(patch) (no softmax over words first)",
            "score": "Z = 1/tau2 * log sum over real tokens of exp(tau2 * cosine(context, token)); logits tau3 * Z",
            "words": "real BPE tokens (sub-word pieces not summed into words; start/end markers excluded)",
            "directions": "mean of image-to-text and text-to-image (the released code sums them)",
            "global_loss": "the shared global loss with the learned temperature (GLoRIA: fixed scale tau3)",
            "distributed": "patch and token embeddings gathered from every rank with gradients",
        }
