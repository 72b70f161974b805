"""Grounding metrics (sparc_eval.metrics.grounding): hand-worked cases, edge cases, and position R^2
against an independent least-squares fit on one-hot position indicators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparc_eval.metrics.grounding import (
    inside_patches,
    patch_coverage,
    position_r2,
    position_residuals,
    score_word,
    softmax_alignment_weights,
)


def test_patch_coverage_hand_worked():
    # 4x4 pixels, 2x2 grid of 2x2-pixel patches, row-major: top-left, top-right, bottom-left, bottom-right.
    mask = torch.tensor(
        [
            [1, 1, 0, 1],
            [1, 1, 0, 0],
            [0, 0, 0, 0],
            [1, 0, 0, 0],
        ]
    )
    assert patch_coverage(mask, (2, 2)).tolist() == [1.0, 0.25, 0.25, 0.0]
    # Non-square grid: 1 row of 4 column patches, each 4x1 pixels.
    assert patch_coverage(mask, (1, 4)).tolist() == [0.75, 0.5, 0.0, 0.25]


def test_patch_coverage_rejects_partial_patches():
    with pytest.raises(ValueError, match="5x4"):
        patch_coverage(torch.zeros(5, 4), (2, 2))
    with pytest.raises(ValueError, match="2-D"):
        patch_coverage(torch.zeros(1, 4, 4), (2, 2))


def test_inside_is_majority_not_centre_pixel():
    # One 3x3-pixel patch each. Patch 0: only the centre pixel covered (1/9) -> outside, although a
    # centre-pixel rule would call it inside. Patch 1: 5 of 9 covered, centre not -> inside.
    # Patch 2 (2x2 grid variant below): exactly half covered -> inside (the rule is >= 1/2).
    centre_only = torch.zeros(3, 3)
    centre_only[1, 1] = 1
    majority_ring = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 0, 0]])
    mask = torch.cat([centre_only, majority_ring], dim=1)
    assert inside_patches(patch_coverage(mask, (1, 2))).tolist() == [False, True]
    half = torch.tensor([[1, 1], [0, 0]])
    under_half = torch.tensor([[1, 0], [0, 0]])
    assert inside_patches(patch_coverage(torch.cat([half, under_half], dim=1), (1, 2))).tolist() == [True, False]


def test_score_word_hand_worked():
    weights = torch.tensor([0.1, 0.6, 0.3, 0.0])
    coverage = torch.tensor([1.0, 0.5, 0.0, 0.0])
    s = score_word(weights, coverage)
    assert s.hit == 1.0  # arg-max patch 1 is covered by exactly half: inside
    assert s.mass == pytest.approx(0.1 * 1.0 + 0.6 * 0.5)
    assert s.inside_share == 0.5  # patches 0 and 1
    assert s.area_share == pytest.approx(1.5 / 4)
    assert s.nnz == 3
    # Arg-max on an outside patch: a miss.
    assert score_word(torch.tensor([0.1, 0.2, 0.7, 0.0]), coverage).hit == 0.0


def test_score_word_ties_give_the_expected_hit_of_a_random_tie_break():
    coverage = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0])
    uniform = score_word(torch.full((5,), 0.2), coverage)
    # Uniform weights are chance by construction: hit = share of patches inside, mass = area share.
    assert uniform.hit == pytest.approx(2 / 5) == uniform.inside_share
    assert uniform.mass == pytest.approx(uniform.area_share)
    assert score_word(torch.tensor([0.4, 0.0, 0.4, 0.2, 0.0]), coverage).hit == 0.5


def test_score_word_unnormalised_weights_and_bad_input():
    # Mass divides by the weight sum, so a scaled row scores the same.
    a = score_word(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.0]))
    b = score_word(torch.tensor([2.0, 6.0]), torch.tensor([1.0, 0.0]))
    assert a == b and a.mass == pytest.approx(0.25)
    with pytest.raises(ValueError, match="non-negative"):
        score_word(torch.tensor([-0.1, 1.1]), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="non-negative"):
        score_word(torch.zeros(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="one length"):
        score_word(torch.ones(3), torch.ones(2))


def test_softmax_alignment_weights_by_hand():
    token = torch.tensor([[[2.0, 0.0]]])  # [1, 1, 2]
    patches = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]]])  # cosines 1, 0, 1/sqrt(2)
    scale = 10.0
    logits = np.array([1.0, 0.0, 1 / math.sqrt(2)]) * scale
    expected = np.exp(logits) / np.exp(logits).sum()
    got = softmax_alignment_weights(token, patches, scale)
    assert got.shape == (1, 1, 3)
    np.testing.assert_allclose(got[0, 0].numpy(), expected, rtol=1e-6)


def _r2_by_least_squares(x: np.ndarray) -> float:
    """R^2 of an ordinary least-squares fit of every embedding dimension on one-hot position indicators."""
    n, p, d = x.shape
    design = np.tile(np.eye(p), (n, 1))  # row (image i, position j) -> indicator of j
    y = x.reshape(n * p, d)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    return 1.0 - (resid**2).sum() / ((y - y.mean(axis=0)) ** 2).sum()


def test_position_r2_matches_least_squares_reference():
    rng = np.random.default_rng(0)
    # Position signal plus image-specific noise, of comparable size.
    x = rng.normal(size=(1, 6, 4)) + 0.8 * rng.normal(size=(10, 6, 4))
    within, total = position_residuals(torch.from_numpy(x))
    assert within.shape == total.shape == (10,)
    r2 = position_r2(float(within.sum()), float(total.sum()))
    assert r2 == pytest.approx(_r2_by_least_squares(x), abs=1e-12)
    assert 0.1 < r2 < 0.9  # the case really mixes both sources


def test_position_r2_is_one_for_position_only_and_near_zero_for_position_free_embeddings():
    rng = np.random.default_rng(1)
    by_position = np.broadcast_to(rng.normal(size=(1, 16, 8)), (50, 16, 8))
    within, total = position_residuals(torch.from_numpy(by_position.copy()))
    assert position_r2(float(within.sum()), float(total.sum())) == pytest.approx(1.0)
    # i.i.d. over images and positions: only sampling noise, about (P-1)/(N*P) of the variance.
    noise = rng.normal(size=(400, 16, 8))
    within, total = position_residuals(torch.from_numpy(noise))
    r2 = position_r2(float(within.sum()), float(total.sum()))
    assert abs(r2) < 3 * 15 / (400 * 16)


def test_position_r2_undefined_without_variance():
    within, total = position_residuals(torch.ones(3, 4, 2))
    assert float(total.sum()) == 0.0
    assert position_r2(float(within.sum()), float(total.sum())) is None
    with pytest.raises(ValueError, match=r"\[N, P, D\]"):
        position_residuals(torch.ones(4, 2))
