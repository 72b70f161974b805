"""Training objectives: CLIP's global contrastive loss and SPARC's fine-grained loss (paper Section 2, Listing 1).

All functions take embeddings as the model produces them (see SparcModel.forward) and are public, like
open_clip's ClipLoss, so that visualisation and grounding diagnostics reuse exactly the training maths.

Averaging of the fine-grained loss follows Listing 1: each direction's cross-entropy is summed over
every real token of the batch and divided by their number (`sum(loss * mask) / sum(mask)`). Eq. 6 of
the paper writes a per-sample mean first (-1/2B sum_i 1/L_i sum_j ...); the two agree when all captions
have the same number of tokens, and otherwise Listing 1 weights long captions more.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparc_eval.errors import SparcEvalError
from sparc_eval.registry import Registry

ALIGNMENT_WEIGHTS = ("sparse", "softmax")
# Which real tokens the fine-grained loss uses: "all" (the paper), or "unique": only tokens whose id occurs once in
# their caption. Repeats of one word ("a ... a ...", "red ... red") have the same content, so the per-caption
# token-vs-token contrast can only tell them apart by position; "unique" removes that pressure (not in the paper).
FINE_TOKENS = ("all", "unique")


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows (gradients flow back to their owners) and this rank's row offset."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # Deprecated in favour of a private API (_functional_collectives); this one is public and differentiable.
        warnings.simplefilter("ignore", FutureWarning)
        gathered = all_gather(x)
    return torch.cat(gathered, dim=0), dist.get_rank() * x.shape[0]


class OptionError(SparcEvalError):
    """A bad value of one objective option; `option` is its name, so the CLI can name the flag that set it."""

    def __init__(self, option: str, requirement: str, value: Any):
        self.option, self.requirement, self.value = option, requirement, value
        super().__init__(f"{option} {requirement}, got {value!r}")


def check_non_negative(**options: float) -> None:
    """Loss weights: 0 switches a term off, a negative weight would reward the loss, an infinite one makes it NaN."""
    for name, value in options.items():
        if not (value >= 0 and math.isfinite(value)):
            raise OptionError(name, "must be a finite number at least 0", value)


def check_positive(**options: float) -> None:
    """Temperatures, scales and counts: strictly positive and finite (an infinite temperature makes the loss NaN)."""
    for name, value in options.items():
        if not (value > 0 and math.isfinite(value)):
            raise OptionError(name, "must be a finite positive number", value)


def symmetric_cross_entropy(logits_i2t: torch.Tensor, logits_t2i: torch.Tensor, offset: int) -> torch.Tensor:
    """Mean of the two InfoNCE directions; row r's positive sits at column offset + r (offset: this rank's first row)."""
    labels = torch.arange(logits_i2t.shape[0], device=logits_i2t.device) + offset
    return 0.5 * (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels))


def global_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, inv_temperature: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between global image and text embeddings [B, D] (paper Eq. 1).

    Similarities are cosine (inputs are L2-normalised here). In a distributed run the embeddings of every
    rank are gathered with gradients; this rank's rows are the queries and their positives sit at offset
    rank * B, so the mean over ranks equals the loss over the whole global batch.
    """
    image_emb = F.normalize(image_emb, dim=-1)
    text_emb = F.normalize(text_emb, dim=-1)
    all_images, offset = gather_with_grad(image_emb)
    all_texts, _ = gather_with_grad(text_emb)
    return symmetric_cross_entropy(inv_temperature * image_emb @ all_texts.T, inv_temperature * text_emb @ all_images.T, offset)


def _check_alignment_options(sparsity: bool, weights: str) -> None:
    if weights not in ALIGNMENT_WEIGHTS:
        raise SparcEvalError(f"unknown alignment weights {weights!r}; use one of {', '.join(ALIGNMENT_WEIGHTS)}")
    if weights == "softmax" and sparsity:
        raise SparcEvalError(
            "softmax alignment weights replace min-max normalisation and thresholding; pass sparsity=False with weights='softmax'"
        )


def sparc_alignment_weights(
    token_emb: torch.Tensor, patch_emb: torch.Tensor, *, sparsity: bool = True, weights: str = "sparse"
) -> torch.Tensor:
    """Alignment weights a[b, l, p] of patch p for token l (paper Eqs. 2-4); each row sums to 1.

    weights="sparse" (SPARC): raw dot products, min-max normalised over patches, entries below 1/P set to
    zero (skipped with sparsity=False), then divided by their sum. A token equally similar to every patch
    (max == min) gets uniform weights: all its normalised similarities are 1, not 0/0.
    weights="softmax" (the paper's Table 8 ablation, "using softmax instead to compute the alignment
    weights"): softmax over patches of the raw dot products, replacing Eqs. 2-4; needs sparsity=False.
    """
    _check_alignment_options(sparsity, weights)
    sim = torch.einsum("btd,bpd->btp", token_emb, patch_emb)
    if weights == "softmax":
        return sim.softmax(dim=-1)
    lo = sim.amin(dim=-1, keepdim=True)
    span = sim.amax(dim=-1, keepdim=True) - lo
    flat = span == 0
    # Divide by 1 where flat so that neither the value nor the gradient ever sees 0/0.
    sim = torch.where(flat, torch.ones_like(sim), (sim - lo) / torch.where(flat, torch.ones_like(span), span))
    if sparsity:
        sim = torch.where(sim < 1.0 / sim.shape[-1], torch.zeros_like(sim), sim)
    # The arg-max patch always keeps 1 >= 1/P, so the sum is at least 1.
    return sim / sim.sum(dim=-1, keepdim=True)


def unique_token_mask(tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """token_mask [B, L] restricted to tokens whose id occurs exactly once among their caption's real tokens."""
    mask = token_mask.bool()
    same = (tokens[:, :, None] == tokens[:, None, :]) & mask[:, None, :]
    return mask & (same.sum(-1) == 1)


def _sequence_cross_entropy(logits: torch.Tensor, mask: torch.Tensor, n_real: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each query row against its own position among the sample's real tokens.

    logits [B, L, L] (query m, candidate n); mask [B, L]. Padded candidates get the dtype's lowest value,
    a finite -inf: exp() of it is exactly 0 next to any real candidate, yet a sample without real tokens
    stays free of NaN in the backward pass. Summed over real query tokens and divided by `n_real`.
    """
    logits = logits.masked_fill(~mask[:, None, :], torch.finfo(logits.dtype).min)
    ce = logits.logsumexp(dim=-1) - logits.diagonal(dim1=1, dim2=2)
    return torch.where(mask, ce, torch.zeros_like(ce)).sum() / n_real.to(ce.dtype)


def real_length(mask: torch.Tensor) -> int:
    """Positions up to the batch's last real token (at least 1). Later positions are padding in every sample: never
    a query, never a candidate, so dropping them changes nothing but the cost of the token-level work. Tensors
    without values (meta, for counting FLOPs: bench/objective_compute.py) keep every position."""
    if mask.device.type == "meta":
        return mask.shape[1]
    mask = mask.bool()
    return int(mask.any(0).nonzero().max()) + 1 if mask.any() else 1


def _drop_trailing_padding(token_emb: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = real_length(token_mask)
    return token_emb[:, :keep], token_mask.bool()[:, :keep]


def _real_token_count(mask: torch.Tensor, distributed: bool = True) -> torch.Tensor:
    """The Listing 1 normaliser: the batch's number of real tokens. Distributed: the global batch's count over the world size, so that
    the mean over ranks (what DDP's gradient averaging computes) is the global batch's token mean."""
    import torch.distributed as dist

    count = mask.sum().to(torch.float64)
    if distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count.clamp(min=1)


def sparc_fine_grained_loss(
    token_emb: torch.Tensor,
    token_mask: torch.Tensor,
    patch_emb: torch.Tensor,
    inv_temperature: torch.Tensor,
    *,
    sparsity: bool = True,
    weights: str = "sparse",
    distributed: bool = True,
) -> torch.Tensor:
    """SPARC's fine-grained loss (paper Eqs. 2-6, Listing 1): per sample, no other batch items involved.

    `distributed` False: normalise by this batch's real tokens even inside a process group (a per-sample probe,
    as the grounding diagnostics take it); True: a training loss, normalised over the global batch under DDP.

    token_emb [B, L, D] and patch_emb [B, P, D] are the unnormalised adapter outputs g_t(f_t), g_v(f_v);
    token_mask [B, L] is True on real tokens. Each token's language-grouped vision embedding
    c = normalize(sum_p a_p v_p) is contrasted with the sample's normalised token embeddings in both
    directions (token -> grouped and grouped -> token); padded tokens are never candidates.
    """
    token_emb, mask = _drop_trailing_padding(token_emb, token_mask)
    align = sparc_alignment_weights(token_emb, patch_emb, sparsity=sparsity, weights=weights)
    grouped = F.normalize(torch.einsum("btp,bpd->btd", align, patch_emb), dim=-1)
    tokens = F.normalize(token_emb, dim=-1)
    logits_l2v = torch.einsum("bmd,bnd->bmn", tokens, grouped) * inv_temperature
    # Listing 1's second einsum, einsum('bmd,bnd->bmn', grouped, tokens), is this matrix transposed.
    logits_v2l = logits_l2v.transpose(1, 2)
    n_real = _real_token_count(mask, distributed)
    return 0.5 * (_sequence_cross_entropy(logits_l2v, mask, n_real) + _sequence_cross_entropy(logits_v2l, mask, n_real))


def image_negatives_loss(
    token_emb: torch.Tensor,
    token_mask: torch.Tensor,
    patch_emb: torch.Tensor,
    inv_temperature: torch.Tensor,
    *,
    n_negatives: int = 7,
    sparsity: bool = True,
    weights: str = "sparse",
) -> torch.Tensor:
    """A content probe turned into a loss (not in the paper; docs/grounding.md): does a token's grouped embedding
    come from its own image?

    Each token's language-grouped vision embedding is computed on its own image and on the next `n_negatives`
    images of the batch (rolled, as the matched/mismatched probe does), with the same alignment weights as
    SPARC; cross-entropy of the token embedding against these K+1 grouped embeddings, the own image as target,
    averaged over real tokens. A model that aligns tokens by position alone cannot tell the images apart.
    """
    token_emb, mask = _drop_trailing_padding(token_emb, token_mask)
    batch, n_candidates = token_emb.shape[0], min(n_negatives, token_emb.shape[0] - 1) + 1
    images = torch.stack([patch_emb.roll(-k, 0) for k in range(n_candidates)], 1)  # [B, K+1, P, D]; k = 0 is own
    tokens_rep = token_emb[:, None].expand(-1, n_candidates, -1, -1).flatten(0, 1)
    align = sparc_alignment_weights(tokens_rep, images.flatten(0, 1), sparsity=sparsity, weights=weights)
    grouped = F.normalize(torch.einsum("ntp,npd->ntd", align, images.flatten(0, 1)), dim=-1).unflatten(0, (batch, n_candidates))
    logits = torch.einsum("btd,bktd->btk", F.normalize(token_emb, dim=-1), grouped) * inv_temperature
    ce = logits.logsumexp(-1) - logits[..., 0]
    return torch.where(mask, ce, torch.zeros_like(ce)).sum() / _real_token_count(mask).to(ce.dtype)


class SparcObjective(nn.Module):
    """L = lambda_g * global + lambda_f * fine (paper Eq. 7); the paper uses lambda_g = 0.5, lambda_f in {0.5, 1, 5, 10}.

    Two departures, off by default and named in describe() only when on (docs/grounding.md measures both):
    fine_tokens="unique" and lambda_images > 0, which adds lambda_images * image_negatives_loss.
    """

    name = "sparc"

    def __init__(
        self,
        lambda_g: float = 0.5,
        lambda_f: float = 1.0,
        sparsity: bool = True,
        weights: str = "sparse",
        fine_tokens: str = "all",
        lambda_images: float = 0.0,
    ):
        super().__init__()
        _check_alignment_options(sparsity, weights)
        if fine_tokens not in FINE_TOKENS:
            raise SparcEvalError(f"unknown fine_tokens {fine_tokens!r}; use one of {', '.join(FINE_TOKENS)}")
        check_non_negative(lambda_g=lambda_g, lambda_f=lambda_f, lambda_images=lambda_images)
        self.lambda_g, self.lambda_f, self.sparsity, self.weights = float(lambda_g), float(lambda_f), bool(sparsity), weights
        self.fine_tokens, self.lambda_images = fine_tokens, float(lambda_images)

    def forward(self, out: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scale = out["logit_scale"]
        g = global_contrastive_loss(out["image_emb"], out["text_emb"], scale)
        mask = out["token_mask"] if self.fine_tokens == "all" else unique_token_mask(out["tokens"], out["token_mask"])
        flags = {"sparsity": self.sparsity, "weights": self.weights}
        f = sparc_fine_grained_loss(out["token_emb"], mask, out["patch_emb"], scale, **flags)
        parts = {"total": self.lambda_g * g + self.lambda_f * f, "global": g, "fine": f}
        if self.lambda_images > 0:
            parts["images"] = image_negatives_loss(out["token_emb"], mask, out["patch_emb"], scale, **flags)
            parts["total"] = parts["total"] + self.lambda_images * parts["images"]
        return parts

    def describe(self) -> dict[str, Any]:
        described = {
            "name": self.name,
            "lambda_g": self.lambda_g,
            "lambda_f": self.lambda_f,
            "sparsity": self.sparsity,
            "weights": self.weights,
        }
        # Departures are named only when on, so that records of paper-SPARC checkpoints stay as they were.
        if self.fine_tokens != "all":
            described["fine_tokens"] = self.fine_tokens
        if self.lambda_images > 0:
            described["lambda_images"] = self.lambda_images
        return described


class ClipObjective(nn.Module):
    """CLIP's objective: the global contrastive loss alone (no fine-grained term is computed)."""

    name = "clip"

    def forward(self, out: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        g = global_contrastive_loss(out["image_emb"], out["text_emb"], out["logit_scale"])
        return {"total": g, "global": g}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


# Training objectives by the name `--objective` takes; another package adds its own through the
# `sparc_eval.objectives` entry-point group (sparc_eval.registry). An objective is an nn.Module whose
# forward maps the model's outputs (SparcModel.forward) to named loss parts with "total" among them,
# and whose describe() names every choice it makes; its constructor's keyword arguments are its options.
# Optional: `MODEL_CONFIG` (model options the objective needs, e.g. PACL's local head: parts the evaluated model
# uses live in the model and its weights file) and `setup(model)` (makes the objective's own trainable state,
# e.g. MGCA's prototypes: trained with the model, saved in objective.safetensors, read only by --resume).
OBJECTIVES: Registry[type[nn.Module]] = Registry(
    "objective",
    {
        "clip": "sparc_eval.models.objectives:ClipObjective",
        "sparc": "sparc_eval.models.objectives:SparcObjective",
        "filip": "sparc_eval.models.objective_filip:FilipObjective",
        "pacl": "sparc_eval.models.objective_pacl:PaclObjective",
        "gloria": "sparc_eval.models.objective_gloria:GloriaObjective",
        "mgca": "sparc_eval.models.objective_mgca:MgcaObjective",
    },
)


def objective_options(name: str) -> list[str]:
    """The option names objective `name` takes (its constructor's keyword arguments)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return sorted(n for n, p in inspect.signature(OBJECTIVES.get(name)).parameters.items() if p.kind in named)


def build_objective(name: str, **kwargs: Any) -> nn.Module:
    """The objective called `name` with its options, e.g. build_objective("sparc", lambda_f=5)."""
    allowed = objective_options(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise SparcEvalError(f"objective {name!r} has no option {unknown[0]!r}; its options: {', '.join(allowed) or 'none'}")
    cls = OBJECTIVES.get(name)
    check_option_types(cls, kwargs)
    return cls(**kwargs)


# What a value of each annotated option type may be: a bool is no number, nor a number a whole one.
OPTION_TYPES = {
    float: ((int, float), "a number"),
    int: ((int,), "a whole number"),
    bool: ((bool,), "true or false"),
    str: ((str,), "text"),
}


def check_option_types(cls: type, options: Mapping[str, Any]) -> None:
    """Each option's value against the constructor's annotation (float, int, bool, str; others are not checked),
    so that `--option tau1=abc` or `tau1: true` is an OptionError, not a TypeError deep in the loss."""
    try:
        parameters = inspect.signature(cls, eval_str=True).parameters
    except (NameError, SyntaxError, TypeError):  # a plugin's annotation that does not evaluate here: left unchecked
        return
    for name, value in options.items():
        kinds, wanted = OPTION_TYPES.get(parameters[name].annotation, ((object,), ""))
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise OptionError(name, f"must be {wanted}", value)
