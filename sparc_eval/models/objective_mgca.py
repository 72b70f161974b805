"""MGCA (Wang et al., NeurIPS 2022, Section 3; code HKU-MedAI/MGCA): multi-granularity cross-modal alignment.

Three terms, L = lambda_g * instance + lambda_f * token + lambda_proto * prototype (the paper: 1, 1, 1).

- Instance-level alignment: the shared global loss (MGCA's ITA; ours has the learned temperature).
- Cross-attention token-wise alignment, per sample, no other sample involved. With normalised word
  embeddings w_l and patch embeddings v_p and tau = 0.1:
      word side:  c_l = normalize(sum_p softmax_p(w_l . v_p / tau) v_p); logits w_m . c_n / tau over the
                  sample's real words; cross-entropy in both directions (word -> contexts, context -> words)
      patch side: d_p = normalize(sum_l softmax_l(v_p . w_l / tau) w_l) over real words; logits v_a . d_b / tau
                  over the sample's patches; cross-entropy in both directions
  each direction pair averaged, the two sides summed, averaged over queries within a sample, then over samples.
- Cross-modal prototype alignment: K learnable prototypes (unit rows, renormalised before every step, not
  updated for the first `freeze_prototypes_steps` steps: the paper freezes them for the first epoch);
  Sinkhorn-Knopp (3 iterations, epsilon 0.05) turns each global embedding's prototype scores into a soft
  assignment; swapped prediction: the image's assignment is the target of the text's softmax(scores / 0.2)
  and vice versa, averaged. In distributed training Sinkhorn balances over the global batch.

Departures, each because this model lacks what MGCA reads: MGCA weights each word's (patch's) term by the
last layer's [CLS] attention to it; our towers have no trained [CLS] token (global embeddings are means), so
words and patches are weighted uniformly. The released code lets padded positions be word candidates and
skips the normalisation of ViT patch contexts; we follow the paper (real words only, cosine throughout).
The prototypes are training state, not part of the evaluated model: they are saved in the checkpoint's
objective.safetensors, read back by --resume, and never by a model loader.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sparc_eval.errors import SparcEvalError
from sparc_eval.models.objectives import (
    OptionError,
    check_non_negative,
    check_positive,
    global_contrastive_loss,
    real_length,
)

MAX_PROTOTYPES = 65_536
MAX_SINKHORN_ITERATIONS = 1_000


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _pairwise_ce(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over real queries of the cross-entropy against their own position, both directions
    averaged. logits [B, N, N] (query m, candidate n); mask [B, N] (True: real). Returns [B]."""
    lowest = torch.finfo(logits.dtype).min

    def one_direction(x: torch.Tensor) -> torch.Tensor:
        x = x.masked_fill(~mask[:, None, :], lowest)
        ce = x.logsumexp(-1) - x.diagonal(dim1=1, dim2=2)
        return torch.where(mask, ce, torch.zeros_like(ce)).sum(-1) / mask.sum(-1).clamp(min=1)

    return 0.5 * (one_direction(logits) + one_direction(logits.transpose(1, 2)))


def mgca_token_loss(token_emb: torch.Tensor, token_mask: torch.Tensor, patch_emb: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """MGCA's cross-attention token-wise alignment (word side + patch side), mean over samples with words."""
    mask = token_mask.bool()
    keep = real_length(mask)  # trailing padding: never a word
    words, mask = F.normalize(token_emb[:, :keep], dim=-1), mask[:, :keep]
    patches = F.normalize(patch_emb, dim=-1)
    sim = torch.einsum("bld,bpd->blp", words, patches) / tau
    word_context = F.normalize(torch.einsum("blp,bpd->bld", sim.softmax(-1), patches), dim=-1)
    word_side = _pairwise_ce(torch.einsum("bmd,bnd->bmn", words, word_context) / tau, mask)
    to_words = sim.transpose(1, 2).masked_fill(~mask[:, None, :], torch.finfo(sim.dtype).min).softmax(-1)
    patch_context = F.normalize(torch.einsum("bpl,bld->bpd", to_words, words), dim=-1)
    all_patches = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)
    patch_side = _pairwise_ce(torch.einsum("bad,bcd->bac", patches, patch_context) / tau, all_patches)
    has_words = mask.any(-1)
    per_sample = torch.where(has_words, word_side + patch_side, torch.zeros_like(word_side))
    return per_sample.sum() / has_words.sum().clamp(min=1)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft assignments [B, K] of B samples to K prototypes from scores [B, K] in [-1, 1] (SwAV's Sinkhorn-Knopp):
    Q = exp(scores / epsilon), alternately scaled so that the prototypes share the (global) batch equally and each
    sample's row sums to 1. Distributed: sums over rows of every rank, so 2 processes give 1 process's Q."""
    world = _world()
    q = torch.exp((scores.double() - 1.0) / epsilon).T  # [K, B]; scores <= 1, so no overflow; constants cancel
    n_prototypes, n_samples = q.shape[0], q.shape[1] * world
    total = q.sum()
    if world > 1:
        dist.all_reduce(total)
    q /= total
    for _ in range(iterations):
        rows = q.sum(1, keepdim=True)
        if world > 1:
            dist.all_reduce(rows)
        q /= rows * n_prototypes
        q /= q.sum(0, keepdim=True) * n_samples
    return (q / q.sum(0, keepdim=True)).T.to(scores.dtype)


def mgca_prototype_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    prototypes: torch.Tensor,
    *,
    temperature: float = 0.2,
    epsilon: float = 0.05,
    iterations: int = 3,
) -> torch.Tensor:
    """Swapped prediction between image and text prototype assignments (MGCA's CPA), mean over samples."""
    image_scores = F.normalize(image_emb, dim=-1) @ prototypes.T
    text_scores = F.normalize(text_emb, dim=-1) @ prototypes.T
    image_code, text_code = sinkhorn(image_scores, epsilon, iterations), sinkhorn(text_scores, epsilon, iterations)
    image_to_text = -(image_code * F.log_softmax(text_scores / temperature, dim=-1)).sum(-1).mean()
    text_to_image = -(text_code * F.log_softmax(image_scores / temperature, dim=-1)).sum(-1).mean()
    return 0.5 * (image_to_text + text_to_image)


class MgcaObjective(nn.Module):
    """MGCA's three terms (module doc). The prototypes are made by `setup(model)` (they need its embedding size)."""

    name = "mgca"

    def __init__(
        self,
        lambda_g: float = 1.0,
        lambda_f: float = 1.0,
        lambda_proto: float = 1.0,
        local_temperature: float = 0.1,
        proto_temperature: float = 0.2,
        n_prototypes: int = 500,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_steps: int = 0,
    ):
        super().__init__()
        check_non_negative(
            lambda_g=lambda_g, lambda_f=lambda_f, lambda_proto=lambda_proto, freeze_prototypes_steps=freeze_prototypes_steps
        )
        check_positive(
            local_temperature=local_temperature,
            proto_temperature=proto_temperature,
            n_prototypes=n_prototypes,
            sinkhorn_epsilon=sinkhorn_epsilon,
            sinkhorn_iterations=sinkhorn_iterations,
        )
        # The paper uses 500 prototypes and 3 iterations; past these bounds a typo would exhaust memory or time.
        if n_prototypes > MAX_PROTOTYPES:
            raise OptionError("n_prototypes", f"must be at most {MAX_PROTOTYPES}", n_prototypes)
        if sinkhorn_iterations > MAX_SINKHORN_ITERATIONS:
            raise OptionError("sinkhorn_iterations", f"must be at most {MAX_SINKHORN_ITERATIONS}", sinkhorn_iterations)
        self.lambda_g, self.lambda_f, self.lambda_proto = float(lambda_g), float(lambda_f), float(lambda_proto)
        self.local_temperature, self.proto_temperature = float(local_temperature), float(proto_temperature)
        self.n_prototypes, self.sinkhorn_iterations = int(n_prototypes), int(sinkhorn_iterations)
        self.sinkhorn_epsilon, self.freeze_prototypes_steps = float(sinkhorn_epsilon), int(freeze_prototypes_steps)
        self.prototypes: nn.Parameter | None = None
        # Training steps seen: decides the freeze, and travels with the prototypes so that --resume continues it.
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    def setup(self, model: nn.Module) -> None:
        """Create the K x D prototypes (unit rows) for `model`'s shared embedding space, from the global RNG."""
        embed_dim = int(model.config["embed_dim"])
        self.prototypes = nn.Parameter(F.normalize(torch.randn(self.n_prototypes, embed_dim), dim=-1))

    def forward(self, out: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.prototypes is None:
            raise SparcEvalError("the mgca objective has no prototypes yet; call setup(model) before training")
        g = global_contrastive_loss(out["image_emb"], out["text_emb"], out["logit_scale"])
        f = mgca_token_loss(out["token_emb"], out["token_mask"], out["patch_emb"], self.local_temperature)
        with torch.no_grad():
            self.prototypes.copy_(F.normalize(self.prototypes, dim=-1))
        training = torch.is_grad_enabled() and self.training
        frozen = self.freeze_prototypes_steps > 0 and bool(self.steps_seen < self.freeze_prototypes_steps)
        prototypes = self.prototypes.detach() if frozen else self.prototypes
        p = mgca_prototype_loss(
            out["image_emb"],
            out["text_emb"],
            prototypes.to(out["image_emb"].dtype),
            temperature=self.proto_temperature,
            epsilon=self.sinkhorn_epsilon,
            iterations=self.sinkhorn_iterations,
        )
        if training:
            self.steps_seen += 1
        return {"total": self.lambda_g * g + self.lambda_f * f + self.lambda_proto * p, "global": g, "fine": f, "proto": p}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lambda_g": self.lambda_g,
            "lambda_f": self.lambda_f,
            "lambda_proto": self.lambda_proto,
            "local_temperature": self.local_temperature,
            "proto_temperature": self.proto_temperature,
            "n_prototypes": self.n_prototypes,
            "sinkhorn_epsilon": self.sinkhorn_epsilon,
            "sinkhorn_iterations": self.sinkhorn_iterations,
            "freeze_prototypes_steps": self.freeze_prototypes_steps,
            "token_weights": "uniform over real words and over patches (MGCA: last-layer [CLS] attention, which our towers lack)",
            "token_candidates": "the sample's real words only; contexts L2-normalised on both sides",
            "instance_loss": "the shared global loss with the learned temperature (MGCA: fixed 0.07)",
            "prototypes_saved_in": "objective.safetensors (training state; not read by model loaders)",
        }
