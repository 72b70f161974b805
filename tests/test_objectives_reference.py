"""An independent reference of the SPARC fine-grained loss (paper Listing 1), written in numpy
from the paper alone, held against `sparc_eval.models.objectives` on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

objectives = pytest.importorskip("sparc_eval.models.objectives")


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _masked_pairwise(a: np.ndarray, b: np.ndarray, mask: np.ndarray, inv_t: float) -> float:
    # Listing 1, masked_pairwise_contrastive_loss: padded tokens are never candidates; the loss is
    # summed over real (query) tokens of the whole batch and divided by their count.
    total, count = 0.0, 0.0
    for i in range(a.shape[0]):
        logits = a[i] @ b[i].T * inv_t
        logits = np.where(mask[i][None, :] > 0, logits, -np.inf)
        logp = _log_softmax(logits)
        for t in range(a.shape[1]):
            if mask[i, t] > 0:
                total += -logp[t, t]
                count += 1
    return total / count


def reference_fine_loss(tok: np.ndarray, mask: np.ndarray, patch: np.ndarray, inv_t: float) -> float:
    B, T, _ = tok.shape
    P = patch.shape[1]
    grouped = np.zeros_like(tok)
    for i in range(B):
        for t in range(T):
            sim = patch[i] @ tok[i, t]  # raw dot products with every patch
            sim = (sim - sim.min()) / (sim.max() - sim.min())
            sim = np.where(sim < 1.0 / P, 0.0, sim)
            w = sim / sim.sum()
            grouped[i, t] = w @ patch[i]
    grouped, tok_n = _l2n(grouped), _l2n(tok)
    l2v = _masked_pairwise(grouped, tok_n, mask, inv_t)
    v2l = _masked_pairwise(tok_n, grouped, mask, inv_t)
    return 0.5 * (l2v + v2l)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fine_grained_loss_matches_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    B, T, P, D = 3, 7, 16, 8
    tok = rng.normal(size=(B, T, D))
    patch = rng.normal(size=(B, P, D))
    lengths = rng.integers(2, T + 1, size=B)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float64)
    inv_t = 7.5
    expected = reference_fine_loss(tok, mask, patch, inv_t)
    got = objectives.sparc_fine_grained_loss(torch.tensor(tok), torch.tensor(mask > 0), torch.tensor(patch), torch.tensor(inv_t))
    assert float(got) == pytest.approx(expected, rel=1e-6, abs=1e-8)


def test_alignment_weights_match_reference_steps():
    rng = np.random.default_rng(3)
    tok = rng.normal(size=(2, 4, 6))
    patch = rng.normal(size=(2, 9, 6))
    weights = objectives.sparc_alignment_weights(torch.tensor(tok), torch.tensor(patch)).numpy()
    for i in range(2):
        for t in range(4):
            sim = patch[i] @ tok[i, t]
            sim = (sim - sim.min()) / (sim.max() - sim.min())
            sim = np.where(sim < 1.0 / 9, 0.0, sim)
            np.testing.assert_allclose(weights[i, t], sim / sim.sum(), rtol=1e-6, atol=1e-9)
