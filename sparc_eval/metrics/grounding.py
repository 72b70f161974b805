"""Fine-grained grounding diagnostics: does a word's alignment land on the object it names?

Pure torch functions on one word's alignment-weight row over the P patches (row-major, the ViT order)
and the object's per-patch mask coverage, plus the share of patch-embedding variance that patch
position alone explains. Definitions (docs/grounding.md):

- coverage_p = share of patch p's pixels covered by the object mask (in the model's input pixels);
  patch p is *inside* the object when coverage_p >= 1/2 (majority rule).
- hit = share of the arg-max patches of the weights that are inside: 1 or 0 unless several patches
  tie for the maximum (then a random tie-break's expected hit, never the first index, which would
  favour the top-left of the image). Chance = share of the P patches that are inside.
- mass = sum_p w_p coverage_p / sum_p w_p. Chance (uniform weights) = mean_p coverage_p = the
  object's share of the image area.
- nnz = number of patches with non-zero weight.
- position R^2 = 1 - sum_{n,p} |x_np - mu_p|^2 / sum_{n,p} |x_np - mu|^2 over N images, with mu_p the
  mean embedding at position p and mu the grand mean (one-way ANOVA eta^2, summed over dimensions):
  the R^2 of the best predictor of a patch embedding that sees only its position index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INSIDE_COVERAGE = 0.5


def patch_coverage(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Per-patch coverage [h*w] of a mask [H, W] with values in [0, 1], for a (h, w) patch grid.

    Raises ValueError when the mask does not split into whole patches.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {tuple(mask.shape)}")
    (H, W), (h, w) = mask.shape, grid
    if H % h or W % w:
        raise ValueError(f"mask of size {H}x{W} does not split into a {h}x{w} patch grid")
    return mask.float().reshape(h, H // h, w, W // w).mean(dim=(1, 3)).reshape(-1)


def inside_patches(coverage: torch.Tensor) -> torch.Tensor:
    """Bool [P]: patches the object covers at least half of (majority rule)."""
    return coverage >= INSIDE_COVERAGE


@dataclass(frozen=True)
class WordScore:
    hit: float  # share of the arg-max patches inside the object
    mass: float  # share of the alignment weight on the object (coverage-weighted)
    inside_share: float  # chance level of `hit`: share of patches inside
    area_share: float  # chance level of `mass`: mean coverage
    nnz: int  # patches with non-zero weight


def score_word(weights: torch.Tensor, coverage: torch.Tensor) -> WordScore:
    """Scores of one word's alignment weights [P] (non-negative, not all zero) against object coverage [P]."""
    if weights.shape != coverage.shape or weights.ndim != 1:
        raise ValueError(f"weights {tuple(weights.shape)} and coverage {tuple(coverage.shape)} must be 1-D of one length")
    weights, coverage = weights.double(), coverage.double()
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("alignment weights must be non-negative with a positive sum")
    inside = inside_patches(coverage)
    top = weights == weights.max()
    return WordScore(
        hit=float(inside[top].double().mean()),
        mass=float((weights * coverage).sum() / weights.sum()),
        inside_share=float(inside.double().mean()),
        area_share=float(coverage.mean()),
        nnz=int((weights > 0).sum()),
    )


def softmax_alignment_weights(
    token_emb: torch.Tensor, patch_emb: torch.Tensor, inv_temperature: torch.Tensor | float
) -> torch.Tensor:
    """Weights [B, L, P] for models without SPARC's alignment: softmax over patches of scale * cos(token, patch)."""
    tok = torch.nn.functional.normalize(token_emb, dim=-1)
    patch = torch.nn.functional.normalize(patch_emb, dim=-1)
    return (torch.einsum("btd,bpd->btp", tok, patch) * inv_temperature).softmax(dim=-1)


def position_residuals(
    patch_emb: torch.Tensor, means: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image squared residuals (float64 [N] each) about the per-position means and about the grand mean.

    patch_emb [N, P, D]. Summed over images they give position R^2 = 1 - within.sum() / total.sum().
    `means` = (per-position mean [P, D], grand mean [D]) of a larger set these images belong to (e.g. the
    whole split when each process holds a slice); by default those of patch_emb itself.
    """
    if patch_emb.ndim != 3:
        raise ValueError(f"patch embeddings must be [N, P, D], got shape {tuple(patch_emb.shape)}")
    x = patch_emb.double()
    position_mean, grand_mean = (x.mean(dim=0), x.mean(dim=(0, 1))) if means is None else means
    within = (x - position_mean.double()).square().sum(dim=(1, 2))
    total = (x - grand_mean.double()).square().sum(dim=(1, 2))
    return within, total


def position_r2(within: float, total: float) -> float | None:
    """1 - within / total; None when the embeddings do not vary at all (total == 0)."""
    return None if total <= 0 else 1.0 - within / total
