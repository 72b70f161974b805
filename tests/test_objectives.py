"""SPARC's objectives against hand-worked values and an independent loop implementation of the paper's equations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparc_eval.errors import SparcEvalError
from sparc_eval.models.objectives import (
    ClipObjective,
    SparcObjective,
    build_objective,
    global_contrastive_loss,
    image_negatives_loss,
    sparc_alignment_weights,
    sparc_fine_grained_loss,
    unique_token_mask,
)

# ----------------------------------------------------------------------------- independent reference


def _ref_weights(tok: np.ndarray, patches: np.ndarray, sparsity: bool, softmax: bool) -> np.ndarray:
    """Eqs. 2-4 for one token, written as plain loops over patches."""
    P = len(patches)
    s = [float(np.dot(tok, patches[p])) for p in range(P)]
    if softmax:
        e = [math.exp(x - max(s)) for x in s]
        return np.array([x / sum(e) for x in e])
    lo, hi = min(s), max(s)
    s = [1.0 if hi == lo else (x - lo) / (hi - lo) for x in s]
    if sparsity:
        s = [x if x >= 1.0 / P else 0.0 for x in s]
    return np.array([x / sum(s) for x in s])


def _ref_fine_loss(tokens, mask, patches, scale, sparsity=True, softmax=False) -> float:
    """Listing 1: per sample over its real tokens only (padding dropped up front, never masked), then
    each direction's sum over all real tokens of the batch divided by their number."""
    l2v = v2l = 0.0
    count = 0
    for b in range(len(tokens)):
        real = [tokens[b][l] for l in range(len(mask[b])) if mask[b][l]]
        if not real:
            continue
        grouped = []
        for t in real:
            w = _ref_weights(t, patches[b], sparsity, softmax)
            c = sum(w[p] * patches[b][p] for p in range(len(patches[b])))
            grouped.append(c / np.linalg.norm(c))
        real = [t / np.linalg.norm(t) for t in real]
        n = len(real)
        count += n
        for j in range(n):
            row = [scale * float(np.dot(real[j], grouped[k])) for k in range(n)]
            l2v += math.log(sum(math.exp(x) for x in row)) - row[j]
            row = [scale * float(np.dot(grouped[j], real[k])) for k in range(n)]
            v2l += math.log(sum(math.exp(x) for x in row)) - row[j]
    return 0.5 * (l2v / count + v2l / count)


def _random_batch(seed=0, B=3, L=6, P=5, D=4, lengths=(4, 2, 5)):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    patch = torch.randn(B, P, D, generator=g, dtype=torch.float64)
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, 1 : 1 + n] = True  # position 0 plays the start marker, never a real token
    return tok, mask, patch


# ----------------------------------------------------------------------------- alignment weights by hand


def test_alignment_weights_hand_worked():
    # One token (1, 0) against four patches whose x-coordinates are 0, 1, 3, 5: raw sims 0, 1, 3, 5.
    tok = torch.tensor([[[1.0, 0.0]]])
    patches = torch.tensor([[[0.0, 2.0], [1.0, -1.0], [3.0, 0.5], [5.0, 0.0]]])
    # min-max -> 0, .2, .6, 1; threshold 1/4 zeroes the .2; weights .6/1.6 and 1/1.6.
    w = sparc_alignment_weights(tok, patches)
    torch.testing.assert_close(w[0, 0], torch.tensor([0.0, 0.0, 0.375, 0.625]))
    w = sparc_alignment_weights(tok, patches, sparsity=False)
    torch.testing.assert_close(w[0, 0], torch.tensor([0.0, 0.2, 0.6, 1.0]) / 1.8)
    w = sparc_alignment_weights(tok, patches, sparsity=False, weights="softmax")
    e = torch.exp(torch.tensor([0.0, 1.0, 3.0, 5.0]))
    torch.testing.assert_close(w[0, 0], e / e.sum())


def test_threshold_keeps_value_equal_to_one_over_p():
    # Raw sims 0, 1, 4 -> min-max 0, .25, 1 with P = 3: .25 < 1/3 is dropped; sims 0, 1, 3 -> 1/3 is kept.
    tok = torch.tensor([[[1.0]]])
    w = sparc_alignment_weights(tok, torch.tensor([[[0.0], [1.0], [4.0]]]))
    torch.testing.assert_close(w[0, 0], torch.tensor([0.0, 0.0, 1.0]))
    w = sparc_alignment_weights(tok, torch.tensor([[[0.0], [1.0], [3.0]]]))
    torch.testing.assert_close(w[0, 0], torch.tensor([0.0, 0.25, 0.75]))


def test_max_equals_min_gives_uniform_weights_and_finite_gradients():
    tok = torch.zeros(1, 2, 3, requires_grad=True)  # a zero token: every patch equally similar
    patch = torch.randn(1, 4, 3, requires_grad=True)
    w = sparc_alignment_weights(tok, patch)
    torch.testing.assert_close(w, torch.full((1, 2, 4), 0.25))
    loss = sparc_fine_grained_loss(tok, torch.tensor([[True, True]]), patch, torch.tensor(10.0))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(tok.grad).all() and torch.isfinite(patch.grad).all()


# ----------------------------------------------------------------------------- fine-grained loss by hand


def test_fine_loss_hand_worked():
    # Patches e1, e2; tokens (2, 1) and (1, 3). Sims (2, 1) and (1, 3) -> min-max (1, 0) and (0, 1) -> both
    # survive the 1/2 threshold as one-hot weights, so c1 = e1 and c2 = e2.
    patch = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    tok = torch.tensor([[[2.0, 1.0], [1.0, 3.0]]], dtype=torch.float64)
    w = sparc_alignment_weights(tok, patch)
    torch.testing.assert_close(w[0], torch.eye(2, dtype=torch.float64))
    s5, s10 = math.sqrt(5), math.sqrt(10)
    # token -> grouped rows: t1.(c1, c2) = (2, 1)/s5 and t2.(c1, c2) = (1, 3)/s10.
    l2v = 0.5 * (math.log1p(math.exp(-1 / s5)) + math.log1p(math.exp(-2 / s10)))
    # grouped -> token rows: c1.(t1, t2) = (2/s5, 1/s10) and c2.(t1, t2) = (1/s5, 3/s10).
    v2l = 0.5 * (math.log1p(math.exp(1 / s10 - 2 / s5)) + math.log1p(math.exp(1 / s5 - 3 / s10)))
    loss = sparc_fine_grained_loss(tok, torch.tensor([[True, True]]), patch, torch.tensor(1.0, dtype=torch.float64))
    assert loss.item() == pytest.approx(0.5 * (l2v + v2l), rel=1e-12)
    # The inverse temperature multiplies every logit: at scale 3 each log1p argument's exponent triples.
    l2v3 = 0.5 * (math.log1p(math.exp(-3 / s5)) + math.log1p(math.exp(-6 / s10)))
    v2l3 = 0.5 * (math.log1p(math.exp(3 / s10 - 6 / s5)) + math.log1p(math.exp(3 / s5 - 9 / s10)))
    loss3 = sparc_fine_grained_loss(tok, torch.tensor([[True, True]]), patch, torch.tensor(3.0, dtype=torch.float64))
    assert loss3.item() == pytest.approx(0.5 * (l2v3 + v2l3), rel=1e-12)


@pytest.mark.parametrize("sparsity,weights", [(True, "sparse"), (False, "sparse"), (False, "softmax")])
def test_fine_loss_matches_loop_reference(sparsity, weights):
    tok, mask, patch = _random_batch(seed=1)
    scale = 2.5
    got = sparc_fine_grained_loss(tok, mask, patch, torch.tensor(scale, dtype=torch.float64), sparsity=sparsity, weights=weights)
    want = _ref_fine_loss(tok.numpy(), mask.numpy(), patch.numpy(), scale, sparsity, weights == "softmax")
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_fine_loss_averages_over_all_real_tokens_of_the_batch():
    # Lengths 1 and 4: Listing 1 weights the samples 1/5 and 4/5; Eq. 6's per-sample mean would weight them 1/2.
    tok, mask, patch = _random_batch(seed=2, B=2, lengths=(1, 4))
    scale = torch.tensor(4.0, dtype=torch.float64)
    both = sparc_fine_grained_loss(tok, mask, patch, scale)
    each = [sparc_fine_grained_loss(tok[i : i + 1], mask[i : i + 1], patch[i : i + 1], scale).item() for i in range(2)]
    assert both.item() == pytest.approx((1 * each[0] + 4 * each[1]) / 5, rel=1e-12)
    assert both.item() != pytest.approx((each[0] + each[1]) / 2, rel=1e-6)


def test_ablations_change_the_loss():
    tok, mask, patch = _random_batch(seed=3)
    scale = torch.tensor(3.0, dtype=torch.float64)
    values = {
        opts: sparc_fine_grained_loss(tok, mask, patch, scale, sparsity=opts[0], weights=opts[1]).item()
        for opts in [(True, "sparse"), (False, "sparse"), (False, "softmax")]
    }
    assert len({round(v, 9) for v in values.values()}) == 3, values


def test_padding_invariance():
    tok, mask, patch = _random_batch(seed=4)
    scale = torch.tensor(5.0, dtype=torch.float64)
    extra = 3  # append padded positions holding arbitrary (large) embeddings
    tok_pad = torch.cat([tok, 100 * torch.randn(tok.shape[0], extra, tok.shape[2], dtype=tok.dtype)], dim=1)
    mask_pad = torch.cat([mask, torch.zeros(mask.shape[0], extra, dtype=torch.bool)], dim=1)
    tok.requires_grad_(True)
    tok_pad.requires_grad_(True)
    a = sparc_fine_grained_loss(tok, mask, patch, scale)
    b = sparc_fine_grained_loss(tok_pad, mask_pad, patch, scale)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    (ga,) = torch.autograd.grad(a, tok)
    (gb,) = torch.autograd.grad(b, tok_pad)
    torch.testing.assert_close(ga, gb[:, : tok.shape[1]])
    assert torch.count_nonzero(gb[:, tok.shape[1] :]) == 0


def test_gradients_finite_with_empty_caption_and_extreme_scale():
    tok, mask, patch = _random_batch(seed=5, lengths=(3, 0, 5))
    tok = tok.float().requires_grad_(True)
    patch = patch.float().requires_grad_(True)
    scale = torch.tensor(100.0, requires_grad=True)
    loss = sparc_fine_grained_loss(tok, mask, patch, scale)
    loss.backward()
    for g in (tok.grad, patch.grad, scale.grad):
        assert torch.isfinite(g).all()
    # The empty caption takes no part: the loss equals that of the other two samples alone.
    keep = torch.tensor([0, 2])
    alone = sparc_fine_grained_loss(tok[keep], mask[keep], patch[keep], scale)
    assert loss.item() == pytest.approx(alone.item(), rel=1e-6)
    for opts in [(False, "sparse"), (False, "softmax")]:
        tok.grad = None
        sparc_fine_grained_loss(tok, mask, patch, scale, sparsity=opts[0], weights=opts[1]).backward()
        assert torch.isfinite(tok.grad).all()


def test_softmax_with_sparsity_is_refused():
    tok, mask, patch = _random_batch()
    with pytest.raises(SparcEvalError, match="sparsity=False"):
        sparc_fine_grained_loss(tok, mask, patch, torch.tensor(1.0), weights="softmax")
    with pytest.raises(SparcEvalError, match="unknown alignment weights"):
        sparc_alignment_weights(tok, patch, weights="max")


# ----------------------------------------------------------------------------- global loss and objectives


def test_global_loss_matches_loop_reference():
    g = torch.Generator().manual_seed(6)
    img = torch.randn(4, 3, generator=g, dtype=torch.float64)
    txt = torch.randn(4, 3, generator=g, dtype=torch.float64)
    scale = 7.0
    a = (img / img.norm(dim=1, keepdim=True)).numpy()
    t = (txt / txt.norm(dim=1, keepdim=True)).numpy()
    total = 0.0
    for i in range(4):
        row = [scale * float(a[i] @ t[j]) for j in range(4)]
        total += math.log(sum(math.exp(x) for x in row)) - row[i]
        col = [scale * float(t[i] @ a[j]) for j in range(4)]
        total += math.log(sum(math.exp(x) for x in col)) - col[i]
    got = global_contrastive_loss(img, txt, torch.tensor(scale, dtype=torch.float64))
    assert got.item() == pytest.approx(total / 8, rel=1e-12)


def _model_outputs(seed=7):
    tok, mask, patch = _random_batch(seed=seed)
    g = torch.Generator().manual_seed(seed)
    return {
        "image_emb": torch.nn.functional.normalize(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=-1),
        "text_emb": torch.nn.functional.normalize(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=-1),
        "patch_emb": patch,
        "token_emb": tok,
        "token_mask": mask,
        "logit_scale": torch.tensor(10.0, dtype=torch.float64),
    }


def test_objectives_combine_parts():
    out = _model_outputs()
    g = global_contrastive_loss(out["image_emb"], out["text_emb"], out["logit_scale"])
    f = sparc_fine_grained_loss(out["token_emb"], out["token_mask"], out["patch_emb"], out["logit_scale"])
    parts = build_objective("sparc", lambda_f=5.0)(out)
    assert parts["global"].item() == pytest.approx(g.item())
    assert parts["fine"].item() == pytest.approx(f.item())
    assert parts["total"].item() == pytest.approx(0.5 * g.item() + 5.0 * f.item())
    clip = build_objective("clip")(out)
    assert set(clip) == {"total", "global"}
    assert clip["total"].item() == pytest.approx(g.item())
    assert isinstance(build_objective("sparc"), SparcObjective) and isinstance(build_objective("clip"), ClipObjective)
    assert SparcObjective().describe() == {
        "name": "sparc",
        "lambda_g": 0.5,
        "lambda_f": 1.0,
        "sparsity": True,
        "weights": "sparse",
    }


def test_build_objective_errors():
    with pytest.raises(
        SparcEvalError, match="unknown objective 'filipp'; known objectives: clip, filip, gloria, mgca, pacl, sparc"
    ):
        build_objective("filipp")
    with pytest.raises(SparcEvalError, match="objective 'clip' has no option 'lambda_f'; its options: none"):
        build_objective("clip", lambda_f=1.0)
    with pytest.raises(
        SparcEvalError,
        match="has no option 'lambda_x'; its options: fine_tokens, lambda_f, lambda_g, lambda_images, sparsity, weights",
    ):
        build_objective("sparc", lambda_f=2.0, lambda_x=1.0)
    with pytest.raises(SparcEvalError, match="unknown fine_tokens 'nouns'"):
        build_objective("sparc", fine_tokens="nouns")


def test_unique_token_mask_by_hand():
    # <sot> a red square a red <eot> pad pad: the repeated "a" and "red" go, "square" stays; padding never counts.
    tokens = torch.tensor([[49406, 320, 736, 3217, 320, 736, 49407, 0, 0], [49406, 0, 5, 0, 49407, 0, 0, 0, 0]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    want = torch.tensor([[0, 0, 0, 1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(unique_token_mask(tokens, mask), want)


def test_unique_fine_tokens_is_the_fine_loss_on_unique_tokens_only():
    out = _model_outputs()
    out["tokens"] = torch.tensor([[0, 1, 2, 2, 3, 4], [0, 5, 6, 7, 5, 8], [0, 9, 9, 9, 9, 9]])
    unique = unique_token_mask(out["tokens"], out["token_mask"])
    assert (unique != out["token_mask"]).any()
    objective = build_objective("sparc", fine_tokens="unique")
    want = sparc_fine_grained_loss(out["token_emb"], unique, out["patch_emb"], out["logit_scale"])
    assert objective(out)["fine"].item() == pytest.approx(want.item(), rel=1e-12)
    assert objective(out)["fine"].item() != pytest.approx(build_objective("sparc")(out)["fine"].item())
    assert objective.describe()["fine_tokens"] == "unique" and "fine_tokens" not in SparcObjective().describe()


# ----------------------------------------------------------------------------- image-negatives remedy (not in the paper)


def _ref_image_negatives(tokens, mask, patches, scale, n_negatives, sparsity=True, softmax=False) -> float:
    """Per real token of sample b: softmax over images b, b+1, ..., b+K (mod B) of scale * cos(token, its grouped
    embedding on that image); minus log-probability of its own image, averaged over real tokens."""
    B = len(tokens)
    K = min(n_negatives, B - 1)
    total, count = 0.0, 0
    for b in range(B):
        for l in range(len(mask[b])):
            if not mask[b][l]:
                continue
            t = tokens[b][l] / np.linalg.norm(tokens[b][l])
            row = []
            for k in range(K + 1):
                image = patches[(b + k) % B]
                w = _ref_weights(tokens[b][l], image, sparsity, softmax)
                c = sum(w[p] * image[p] for p in range(len(image)))
                row.append(scale * float(np.dot(t, c / np.linalg.norm(c))))
            total += math.log(sum(math.exp(x) for x in row)) - row[0]
            count += 1
    return total / count


@pytest.mark.parametrize("n_negatives,sparsity,weights", [(1, True, "sparse"), (2, True, "sparse"), (7, False, "softmax")])
def test_image_negatives_matches_loop_reference(n_negatives, sparsity, weights):
    tok, mask, patch = _random_batch(seed=11)
    got = image_negatives_loss(
        tok, mask, patch, torch.tensor(3.0, dtype=torch.float64), n_negatives=n_negatives, sparsity=sparsity, weights=weights
    )
    want = _ref_image_negatives(tok.numpy(), mask.numpy(), patch.numpy(), 3.0, n_negatives, sparsity, weights == "softmax")
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_image_negatives_cannot_be_solved_without_image_content():
    # Every image has the same patches (content-blind): each token's K+1 grouped embeddings coincide, loss = log(K+1).
    tok, mask, patch = _random_batch(seed=12, B=4)
    same = patch[:1].expand(4, -1, -1)
    assert image_negatives_loss(tok, mask, same, torch.tensor(9.0), n_negatives=3).item() == pytest.approx(math.log(4))
    assert image_negatives_loss(tok, mask, same, torch.tensor(9.0), n_negatives=10).item() == pytest.approx(math.log(4))


def test_objective_adds_weighted_image_negatives():
    out = _model_outputs()
    base = build_objective("sparc", lambda_f=2.0)(out)
    parts = build_objective("sparc", lambda_f=2.0, lambda_images=0.5)(out)
    images = image_negatives_loss(out["token_emb"], out["token_mask"], out["patch_emb"], out["logit_scale"])
    assert parts["images"].item() == pytest.approx(images.item())
    assert parts["total"].item() == pytest.approx(base["total"].item() + 0.5 * images.item())
    assert "images" not in base and SparcObjective(lambda_images=0.5).describe()["lambda_images"] == 0.5
    with pytest.raises(SparcEvalError, match="lambda_images must be a finite number at least 0, got -1"):
        build_objective("sparc", lambda_images=-1.0)
