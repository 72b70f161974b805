"""FILIP, PACL, GLoRIA and MGCA against plain loops written from each paper's equations (numpy, one pair or one
token at a time, float64), on random tensors with padding; plus one hand-worked case each, and the objectives'
option checks. The vectorised code under test never appears in a reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from micro_training import MICRO, train_interrupted

from sparc_eval.models.objective_filip import filip_loss, filip_similarities
from sparc_eval.models.objective_gloria import gloria_local_loss, gloria_scores
from sparc_eval.models.objective_mgca import mgca_prototype_loss, mgca_token_loss, sinkhorn
from sparc_eval.models.objective_pacl import pacl_loss, pacl_similarities
from sparc_eval.models.objectives import OptionError, build_objective, global_contrastive_loss

# ----------------------------------------------------------------------------- shared plain helpers


def _unit(x: np.ndarray) -> np.ndarray:
    return x / math.sqrt(float(np.dot(x, x)))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(_unit(a), _unit(b)))


def _ce(row: list[float], target: int) -> float:
    top = max(row)
    return top + math.log(sum(math.exp(x - top) for x in row)) - row[target]


def _infonce(s_i2t: list[list[float]], s_t2i: list[list[float]], scale: float) -> float:
    """s_i2t[i][j]: the score image i gives text j; s_t2i[i][j]: the score text j gives image i.
    Mean over images of CE(row i of s_i2t), mean over texts of CE(column j of s_t2i), averaged."""
    n = len(s_i2t)
    i2t = sum(_ce([scale * s_i2t[i][j] for j in range(n)], i) for i in range(n)) / n
    t2i = sum(_ce([scale * s_t2i[i][j] for i in range(n)], j) for j in range(n)) / n
    return 0.5 * (i2t + t2i)


def _batch(seed=0, B=4, L=7, P=5, D=3, lengths=(3, 1, 5, 2)):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    patch = torch.randn(B, P, D, generator=g, dtype=torch.float64)
    text = torch.randn(B, D, generator=g, dtype=torch.float64)
    image = torch.randn(B, D, generator=g, dtype=torch.float64)
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, 1 : 1 + n] = True  # position 0 plays the start marker; the rest is end marker and padding
    tok[~mask] = 50 * tok[~mask]  # padded positions hold large junk that must never matter
    return tok, mask, patch, text, image


def _real(tok, mask, b):
    return [tok[b, l].numpy() for l in range(tok.shape[1]) if mask[b, l]]


# ----------------------------------------------------------------------------- FILIP


def _ref_filip(tok, mask, patch, scale) -> float:
    """FILIP Eqs. 4-5: s_I = mean over patches of the max over real tokens; s_T = mean over real tokens of the max
    over patches; cosine similarities."""
    B = patch.shape[0]
    s_img = [[0.0] * B for _ in range(B)]
    s_txt = [[0.0] * B for _ in range(B)]
    for i in range(B):
        patches = [patch[i, p].numpy() for p in range(patch.shape[1])]
        for j in range(B):
            words = _real(tok, mask, j)
            s_img[i][j] = sum(max(_cos(x, y) for y in words) for x in patches) / len(patches)
            s_txt[i][j] = sum(max(_cos(x, y) for x in patches) for y in words) / len(words)
    return _infonce(s_img, s_txt, scale)


def test_filip_matches_loop_reference():
    tok, mask, patch, *_ = _batch(seed=1)
    got = filip_loss(patch, tok, mask, torch.tensor(6.0, dtype=torch.float64))
    assert got.item() == pytest.approx(_ref_filip(tok, mask, patch, 6.0), rel=1e-10)
    # float32, as training computes it: within 1e-5 of the float64 reference
    got32 = filip_loss(patch.float(), tok.float(), mask, torch.tensor(6.0))
    assert got32.item() == pytest.approx(_ref_filip(tok, mask, patch, 6.0), rel=1e-5)


def test_filip_hand_worked():
    # Image A: patches e1, e2. Image B: patches e1, e1. Text 1: one word e1. Text 2: words e2, e2 (+ padding).
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    patch = torch.tensor([[e1, e2], [e1, e1]], dtype=torch.float64)
    tok = torch.tensor([[[9.0, 9.0], e1, [5.0, -3.0]], [[9.0, 9.0], e2, e2]], dtype=torch.float64)
    mask = torch.tensor([[False, True, False], [False, True, True]])
    s_img, s_txt = filip_similarities(patch, tok, mask)
    # s_I(A,1): e1 -> 1, e2 -> 0: 0.5. s_I(A,2): e1 -> 0, e2 -> 1: 0.5. s_I(B,1) = 1. s_I(B,2) = 0.
    torch.testing.assert_close(s_img, torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64))
    # s_T(A,1): e1's best patch 1. s_T(A,2): each e2 -> 1. s_T(B,1) = 1. s_T(B,2): e2 vs e1, e1: 0.
    torch.testing.assert_close(s_txt, torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64))
    # Scale 2. i2t rows: A (1, 1) target 0 -> log 2; B (2, 0) target 1 -> log(1 + e^2). t2i columns: text 1 (2, 2)
    # over images, target A -> log 2; text 2 (2, 0), target B -> log(1 + e^2).
    want = 0.5 * ((math.log(2) + math.log1p(math.exp(2))) / 2 + (math.log(2) + math.log1p(math.exp(2))) / 2)
    got = filip_loss(patch, tok, mask, torch.tensor(2.0, dtype=torch.float64))
    assert got.item() == pytest.approx(want, rel=1e-12)


def test_filip_text_without_words_scores_zero():
    tok, mask, patch, *_ = _batch(seed=2, lengths=(3, 0, 5, 2))
    s_img, s_txt = filip_similarities(patch, tok, mask)
    assert torch.isfinite(s_img).all() and (s_img[:, 1] == 0).all() and (s_txt[:, 1] == 0).all()


# ----------------------------------------------------------------------------- PACL


def _ref_pacl(patch, text, scale) -> float:
    """PACL: per pair, softmax over patches of cos(e_v(patch), t_j); weighted sum of the embedded patches;
    cosine with t_j; InfoNCE both directions."""
    B, P = patch.shape[:2]
    s = [[0.0] * B for _ in range(B)]
    for i in range(B):
        for j in range(B):
            t = text[j].numpy()
            sims = [_cos(patch[i, p].numpy(), t) for p in range(P)]
            z = sum(math.exp(x) for x in sims)
            pooled = sum((math.exp(sims[p]) / z) * patch[i, p].numpy() for p in range(P))
            s[i][j] = _cos(pooled, t)
    return _infonce(s, s, scale)


def test_pacl_matches_loop_reference():
    _, _, patch, text, _ = _batch(seed=3)
    got = pacl_loss(patch, text, torch.tensor(4.0, dtype=torch.float64))
    assert got.item() == pytest.approx(_ref_pacl(patch, text, 4.0), rel=1e-10)
    got32 = pacl_loss(patch.float(), text.float(), torch.tensor(4.0))
    assert got32.item() == pytest.approx(_ref_pacl(patch, text, 4.0), rel=1e-5)


def test_pacl_hand_worked():
    # Patches (1, 0) and (0, 2); text (3, 0): cosines 1 and 0, weights e/(e+1), 1/(e+1);
    # pooled = (e/(e+1), 2/(e+1)); its cosine with the text = e / sqrt(e^2 + 4).
    patch = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    text = torch.tensor([[3.0, 0.0]], dtype=torch.float64)
    e = math.e
    assert pacl_similarities(patch, text).item() == pytest.approx(e / math.sqrt(e * e + 4), rel=1e-12)


# ----------------------------------------------------------------------------- GLoRIA


def _ref_gloria(tok, mask, patch, tau1, tau2, tau3) -> float:
    """GLoRIA: a_lp = exp(tau1 q_l.v_p) / sum_k exp(tau1 q_l.v_k); c_l = sum_p a_lp v_p;
    Z = log(sum_l exp(tau2 cos(c_l, q_l)))^(1/tau2); contrastive loss on tau3 * Z."""
    B, P = patch.shape[:2]
    z = [[0.0] * B for _ in range(B)]
    for i in range(B):
        for j in range(B):
            total = 0.0
            for q in _real(tok, mask, j):
                dots = [tau1 * float(np.dot(q, patch[i, p].numpy())) for p in range(P)]
                top = max(dots)
                w = [math.exp(d - top) for d in dots]
                c = sum((w[p] / sum(w)) * patch[i, p].numpy() for p in range(P))
                total += math.exp(tau2 * _cos(c, q))
            z[i][j] = math.log(total) / tau2
    return _infonce(z, z, tau3)


@pytest.mark.parametrize("taus", [(4.0, 5.0, 10.0), (1.0, 2.0, 3.0)])
def test_gloria_matches_loop_reference(taus):
    tok, mask, patch, *_ = _batch(seed=4)
    patch = patch / 3  # keep tau1 * dot products moderate, as trained embeddings are
    tau1, tau2, tau3 = taus
    got = gloria_local_loss(patch, tok, mask, tau1=tau1, tau2=tau2, tau3=tau3)
    assert got.item() == pytest.approx(_ref_gloria(tok, mask, patch, *taus), rel=1e-10)
    got32 = gloria_local_loss(patch.float(), tok.float(), mask, tau1=tau1, tau2=tau2, tau3=tau3)
    assert got32.item() == pytest.approx(_ref_gloria(tok, mask, patch, *taus), rel=1e-5)


def test_gloria_hand_worked():
    # Patches e1 and 2 e2; words q1 = e1 and q2 = e2. With tau1 = ln 3: q1's raw dots (1, 0) -> weights (3/4, 1/4),
    # c1 = (3/4, 1/2), cos(c1, q1) = 0.75 / sqrt(0.8125); q2's dots (0, 2) -> weights (1/10, 9/10), c2 = (1/10, 9/5),
    # cos(c2, q2) = 1.8 / sqrt(0.01 + 3.24).
    patch = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    tok = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True]])
    r1, r2 = 0.75 / math.sqrt(0.8125), 1.8 / math.sqrt(3.25)
    tau2 = 5.0
    want = math.log(math.exp(tau2 * r1) + math.exp(tau2 * r2)) / tau2
    assert gloria_scores(patch, tok, mask, math.log(3), tau2).item() == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------- MGCA


def _softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [x / sum(e) for x in e]


def _ref_mgca_token(tok, mask, patch, tau) -> float:
    """MGCA's CTA with uniform token weights: word side and patch side, each the mean of its two cross-entropy
    directions averaged over queries; summed; averaged over samples."""
    total = 0.0
    B, P = patch.shape[:2]
    for b in range(B):
        words = [_unit(w) for w in _real(tok, mask, b)]
        patches = [_unit(patch[b, p].numpy()) for p in range(P)]
        ctx = []
        for w in words:
            a = _softmax([float(np.dot(w, v)) / tau for v in patches])
            ctx.append(_unit(sum(a[p] * patches[p] for p in range(P))))
        n = len(words)
        word_side = 0.5 * (
            sum(_ce([float(np.dot(words[m], ctx[k])) / tau for k in range(n)], m) for m in range(n)) / n
            + sum(_ce([float(np.dot(words[k], ctx[m])) / tau for k in range(n)], m) for m in range(n)) / n
        )
        pctx = []
        for v in patches:
            a = _softmax([float(np.dot(v, w)) / tau for w in words])
            pctx.append(_unit(sum(a[k] * words[k] for k in range(n))))
        patch_side = 0.5 * (
            sum(_ce([float(np.dot(patches[m], pctx[k])) / tau for k in range(P)], m) for m in range(P)) / P
            + sum(_ce([float(np.dot(patches[k], pctx[m])) / tau for k in range(P)], m) for m in range(P)) / P
        )
        total += word_side + patch_side
    return total / B


def test_mgca_token_loss_matches_loop_reference():
    tok, mask, patch, *_ = _batch(seed=5)
    got = mgca_token_loss(tok, mask, patch, tau=0.1)
    assert got.item() == pytest.approx(_ref_mgca_token(tok, mask, patch, 0.1), rel=1e-10)
    got32 = mgca_token_loss(tok.float(), mask, patch.float(), tau=0.5)
    assert got32.item() == pytest.approx(_ref_mgca_token(tok, mask, patch, 0.5), rel=1e-5)


def test_mgca_token_loss_hand_worked():
    # One sample, words e1, e2, patches e1, e2, tau 1: every attention is softmax((1, 0)) = (a, 1-a) with
    # a = e/(e+1), each context normalize(a e_own + (1-a) e_other); logits: own c = a/n, other (1-a)/n with
    # n = sqrt(a^2 + (1-a)^2); both sides and both directions give log(1 + exp(-(2a-1)/n)).
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    tok = torch.tensor([[e1, e2]], dtype=torch.float64)
    patch = torch.tensor([[e1, e2]], dtype=torch.float64)
    a = math.e / (math.e + 1)
    n = math.sqrt(a * a + (1 - a) ** 2)
    one = math.log1p(math.exp(-(2 * a - 1) / n))
    got = mgca_token_loss(tok, torch.tensor([[True, True]]), patch, tau=1.0)
    assert got.item() == pytest.approx(2 * one, rel=1e-12)


def _ref_sinkhorn(scores: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """SwAV's Sinkhorn-Knopp, one element at a time: Q = exp(s/eps)^T [K, B], total 1; then `iters` times rows to
    1/K each, columns to 1/B each; finally columns to 1. Returns [B, K]."""
    B, K = scores.shape
    q = [[math.exp(scores[b][k] / eps) for b in range(B)] for k in range(K)]
    total = sum(sum(r) for r in q)
    q = [[x / total for x in r] for r in q]
    for _ in range(iters):
        q = [[x / (sum(r) * K) for x in r] for r in q]
        cols = [sum(q[k][b] for k in range(K)) for b in range(B)]
        q = [[q[k][b] / (cols[b] * B) for b in range(B)] for k in range(K)]
    cols = [sum(q[k][b] for k in range(K)) for b in range(B)]
    return np.array([[q[k][b] / cols[b] for k in range(K)] for b in range(B)])


def _ref_proto(image, text, protos, temp, eps, iters) -> float:
    img = np.stack([_unit(x) for x in image])
    txt = np.stack([_unit(x) for x in text])
    si, st = img @ protos.T, txt @ protos.T
    qi, qt = _ref_sinkhorn(si, eps, iters), _ref_sinkhorn(st, eps, iters)
    B, K = si.shape
    i2t = -sum(qi[b][k] * math.log(_softmax([st[b][m] / temp for m in range(K)])[k]) for b in range(B) for k in range(K)) / B
    t2i = -sum(qt[b][k] * math.log(_softmax([si[b][m] / temp for m in range(K)])[k]) for b in range(B) for k in range(K)) / B
    return 0.5 * (i2t + t2i)


def test_mgca_prototype_loss_matches_loop_reference():
    _, _, _, text, image = _batch(seed=6)
    g = torch.Generator().manual_seed(7)
    protos = torch.nn.functional.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=-1)
    got = mgca_prototype_loss(image, text, protos, temperature=0.2, epsilon=0.3, iterations=3)
    want = _ref_proto(image.numpy(), text.numpy(), protos.numpy(), 0.2, 0.3, 3)
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_sinkhorn_hand_worked():
    # Two samples that both prefer prototype 0: equipartition forces an even split, (1/2, 1/2) each.
    codes = sinkhorn(torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64), epsilon=0.05, iterations=1)
    torch.testing.assert_close(codes, torch.full((2, 2), 0.5, dtype=torch.float64))
    # Symmetric preferences are already balanced: each row is softmax(scores / eps) = (1, e^-2/eps) / (1 + e^-2/eps).
    codes = sinkhorn(torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64), epsilon=0.5, iterations=3)
    p = 1 / (1 + math.exp(-4))
    torch.testing.assert_close(codes, torch.tensor([[p, 1 - p], [1 - p, p]], dtype=torch.float64))


def _outputs(seed=8):
    tok, mask, patch, text, image = _batch(seed=seed)
    norm = torch.nn.functional.normalize
    return {
        "image_emb": norm(image, dim=-1),
        "text_emb": norm(text, dim=-1),
        "patch_emb": patch,
        "token_emb": tok,
        "token_mask": mask,
        "logit_scale": torch.tensor(5.0, dtype=torch.float64),
    }


def test_mgca_objective_prototypes_freeze_then_train():
    from sparc_eval.models.sparc import create_model

    objective = build_objective("mgca", n_prototypes=4, freeze_prototypes_steps=1)
    torch.manual_seed(0)
    objective.setup(create_model("tiny"))
    assert objective.prototypes.shape == (4, 128)
    objective.prototypes.data = objective.prototypes.data[:, :3].double()  # the test batch is 3-d
    out = _outputs()
    out["patch_emb"].requires_grad_(True)
    parts = objective(out)
    parts["total"].backward()
    assert objective.prototypes.grad is None and int(objective.steps_seen) == 1  # frozen on step 1
    parts = objective(out)
    parts["total"].backward()
    assert objective.prototypes.grad is not None and objective.prototypes.grad.abs().sum() > 0
    want = mgca_prototype_loss(out["image_emb"], out["text_emb"], objective.prototypes.detach())
    assert parts["proto"].item() == pytest.approx(want.item(), rel=1e-12)
    torch.testing.assert_close(objective.prototypes.detach().norm(dim=-1), torch.ones(4, dtype=torch.float64))


# ----------------------------------------------------------------------------- objectives: parts, defaults, options


@pytest.mark.parametrize(
    "name,defaults",
    [("filip", (0.0, 1.0)), ("pacl", (0.0, 1.0)), ("gloria", (1.0, 1.0)), ("mgca", (1.0, 1.0))],
)
def test_objective_totals_and_paper_defaults(name, defaults):
    out = _outputs()
    objective = build_objective(name, **({"n_prototypes": 5} if name == "mgca" else {}))
    if name == "mgca":
        objective.prototypes = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(5, 3, dtype=torch.float64), dim=-1))
    described = objective.describe()
    assert (described["name"], described["lambda_g"], described["lambda_f"]) == (name, *defaults)
    parts = objective(out)
    g = global_contrastive_loss(out["image_emb"], out["text_emb"], out["logit_scale"])
    assert parts["global"].item() == pytest.approx(g.item())
    extra = parts.get("proto", torch.tensor(0.0)).item()
    assert parts["total"].item() == pytest.approx(defaults[0] * g.item() + defaults[1] * parts["fine"].item() + extra)
    weighted = build_objective(name, lambda_g=2.0, lambda_f=3.0, **({"n_prototypes": 5} if name == "mgca" else {}))
    if name == "mgca":
        weighted.prototypes = objective.prototypes
        weighted.freeze_prototypes_steps = 0
    parts = weighted(out)
    extra = parts.get("proto", torch.tensor(0.0)).item()
    assert parts["total"].item() == pytest.approx(2.0 * g.item() + 3.0 * parts["fine"].item() + extra)


def test_fine_parts_are_the_reference_losses():
    out = _outputs()
    assert build_objective("filip")(out)["fine"].item() == pytest.approx(
        _ref_filip(out["token_emb"], out["token_mask"], out["patch_emb"], 5.0), rel=1e-10
    )
    assert build_objective("pacl")(out)["fine"].item() == pytest.approx(
        _ref_pacl(out["patch_emb"], out["text_emb"], 5.0), rel=1e-10
    )
    gloria = build_objective("gloria", tau1=1.0)(out)["fine"].item()
    assert gloria == pytest.approx(_ref_gloria(out["token_emb"], out["token_mask"], out["patch_emb"], 1.0, 5.0, 10.0), rel=1e-10)


@pytest.mark.parametrize(
    "name,options,needle",
    [
        ("filip", {"lambda_f": -1.0}, "lambda_f must be a finite number at least 0, got -1.0"),
        ("pacl", {"lambda_g": -0.5}, "lambda_g must be a finite number at least 0, got -0.5"),
        ("gloria", {"tau2": 0.0}, "tau2 must be a finite positive number, got 0.0"),
        ("gloria", {"tau1": -4.0}, "tau1 must be a finite positive number, got -4.0"),
        ("mgca", {"proto_temperature": -0.2}, "proto_temperature must be a finite positive number, got -0.2"),
        ("mgca", {"lambda_proto": -1.0}, "lambda_proto must be a finite number at least 0, got -1.0"),
        ("sparc", {"lambda_g": -1.0}, "lambda_g must be a finite number at least 0, got -1.0"),
        ("gloria", {"tau2": float("inf")}, "tau2 must be a finite positive number, got inf"),
        ("mgca", {"proto_temperature": float("nan")}, "proto_temperature must be a finite positive number, got nan"),
        ("filip", {"lambda_f": float("inf")}, "lambda_f must be a finite number at least 0, got inf"),
        ("sparc", {"lambda_f": float("nan")}, "lambda_f must be a finite number at least 0, got nan"),
        ("gloria", {"tau1": True}, "tau1 must be a number, got True"),
        ("gloria", {"tau3": "10"}, "tau3 must be a number, got '10'"),
        ("mgca", {"n_prototypes": 2.5}, "n_prototypes must be a whole number, got 2.5"),
        ("mgca", {"n_prototypes": 10**6}, "n_prototypes must be at most 65536, got 1000000"),
        ("mgca", {"sinkhorn_iterations": 10**5}, "sinkhorn_iterations must be at most 1000, got 100000"),
        ("sparc", {"sparsity": 1}, "sparsity must be true or false, got 1"),
        ("sparc", {"fine_tokens": 3}, "fine_tokens must be text, got 3"),
    ],
)
def test_bad_option_values_name_the_option(name, options, needle):
    with pytest.raises(OptionError, match=needle) as info:
        build_objective(name, **options)
    assert info.value.option == next(iter(options))


def test_unknown_option_and_objective():
    from sparc_eval.errors import SparcEvalError

    with pytest.raises(SparcEvalError, match="objective 'filip' has no option 'tau1'; its options: lambda_f, lambda_g"):
        build_objective("filip", tau1=4.0)
    with pytest.raises(SparcEvalError, match="unknown objective 'lilip'"):
        build_objective("lilip")


# ----------------------------------------------------------------------------- through `sparc-eval train`


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["filip", "pacl", "gloria", "mgca"])
def test_train_cli_each_baseline(objective, synth_root, tmp_path, monkeypatch, capsys):
    from sparc_eval import load_model
    from sparc_eval.cli import main
    from sparc_eval.models.sparc import PRESETS

    monkeypatch.setitem(PRESETS, "micro", MICRO)
    out = tmp_path / objective
    extra = {"mgca": ["--option", "n_prototypes=8", "--option", "freeze_prototypes_steps=1"], "gloria": ["--option", "tau1=2"]}
    args = ["train", "--data", synth_root, "--out", out, "--arch", "micro", "--objective", objective, "--steps", "2"]
    args += ["--batch-size", "8", "--warmup", "1", "--log-every", "1", "--lambda-g", "0.5", "--text-attention", "bidirectional"]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args + extra.get(objective, [])])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["objective"]["name"] == objective and config["objective"]["lambda_g"] == 0.5
    assert config["training"]["text_attention"] == "bidirectional" and config["model"]["text_cfg"]["no_causal_mask"]
    if objective == "gloria":
        assert config["objective"]["tau1"] == 2.0
    model = load_model(str(out))
    described = model.describe()
    assert described["objective"]["name"] == objective and described["text_attention"].startswith("bidirectional")
    assert described["training"]["seed"] == 0 and described["training"]["recipe"]["objective"]["name"] == objective
    images = torch.randn(2, 3, 32, 32)
    local, grid = model.encode_image_dense(images, head="local")
    assert local.shape == (2, 16, 32) and grid == (4, 4)
    plain = model.g_v(model.patch_features(images))
    if objective == "pacl":  # PACL's embedder is the local head: g_v plus its trained MLP branch
        assert "MLP" in described["dense_heads"]["local"] and not torch.allclose(local, plain)
    else:
        torch.testing.assert_close(local, plain)
    assert (out / "objective.safetensors").exists() == (objective == "mgca")


# ----------------------------------------------------------------------------- the text tower's attention


def test_bidirectional_text_tower_sees_later_words_never_padding():
    from sparc_eval.models.sparc import create_model

    torch.manual_seed(0)
    causal = create_model("tiny")
    torch.manual_seed(0)
    bidirectional = create_model("tiny", text_cfg={"no_causal_mask": True})
    tokens = causal.tokenize(["a red circle left of a blue square"])
    later = tokens.clone()
    later[0, 5] = causal.tokenize(["green"])[0, 1]  # another word after position 1
    padded = tokens.clone()
    end = int((tokens[0] == causal.tokenizer.eot_token_id).nonzero())
    padded[0, end + 1 :] = 1234  # junk after the end marker
    with torch.no_grad():
        first = {
            name: (m.token_features(tokens), m.token_features(later), m.token_features(padded))
            for name, m in (("causal", causal), ("bidirectional", bidirectional))
        }
    same, changed, _ = first["causal"]
    torch.testing.assert_close(same[0, 1], changed[0, 1])  # causal: word 1 cannot see word 5
    plain, other, junk = first["bidirectional"]
    assert not torch.allclose(plain[0, 1], other[0, 1])  # bidirectional: it can
    torch.testing.assert_close(plain[0, : end + 1], junk[0, : end + 1])  # and never sees the padding
    assert (
        bidirectional.describe()["text_attention"].startswith("bidirectional") and causal.describe()["text_attention"] == "causal"
    )


@pytest.mark.slow
def test_mgca_resume_restores_prototypes_and_step_count(synth_root, tmp_path, monkeypatch):
    """objective.safetensors travels with periodic checkpoints: a resumed MGCA run ends with the prototypes of an
    uninterrupted one (without its step count the resumed run would keep them frozen at step 4)."""
    from safetensors.torch import load_file

    from sparc_eval.models.sparc import PRESETS
    from sparc_eval.train.loop import TrainConfig, train

    monkeypatch.setitem(PRESETS, "micro", MICRO)
    options = {"n_prototypes": 8, "freeze_prototypes_steps": 3}
    base = dict(data=str(synth_root), arch="micro", objective="mgca", objective_options=options, steps=4, batch_size=8)
    base.update(warmup=1, log_every=1, device="cpu")
    straight = train(TrainConfig(out=str(tmp_path / "straight"), **base))
    train_interrupted(monkeypatch, TrainConfig(out=str(tmp_path / "resumed"), save_every=2, **base), after_steps=3)
    resumed = train(TrainConfig(out=str(tmp_path / "resumed"), save_every=2, resume=True, **base))
    a, b = load_file(str(straight / "objective.safetensors")), load_file(str(resumed / "objective.safetensors"))
    assert int(b["steps_seen"]) == 4
    torch.testing.assert_close(a["prototypes"], b["prototypes"], rtol=0, atol=0)
