"""The SPARC model on open_clip towers: the model contract, the paper's embedding definitions, configs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sparc_eval.errors import SparcEvalError
from sparc_eval.models.contract import ImageTextModel
from sparc_eval.models.sparc import PRESETS, create_model, resolve_config, text_token_mask


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny").eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


CAPTIONS = ["a small red circle", "two blue squares left of a green star", "!%"]


def test_satisfies_the_contract(model):
    assert isinstance(model, ImageTextModel)
    assert model.logit_scale.item() == pytest.approx(1 / 0.07)


def test_tiny_preset_sizes(model):
    cfg = model.config
    assert cfg["vision_cfg"]["image_size"] == 64 and cfg["vision_cfg"]["patch_size"] == 8
    assert cfg["text_cfg"]["context_length"] == 32 and cfg["embed_dim"] == 128
    # ~1.7M parameters besides the 49408 x 128 BPE token-embedding table.
    towers = sum(p.numel() for n, p in model.named_parameters() if "token_embedding" not in n)
    assert 1.5e6 < towers < 2.0e6
    assert model.text.token_embedding.weight.shape == (49408, 128)


def test_preprocess_resizes_and_normalises(model):
    img = Image.new("RGB", (100, 80), (255, 255, 255))
    x = model.preprocess(img)
    assert x.shape == (3, 64, 64)
    # White maps to (1 - mean) / std per channel with CLIP's statistics.
    want = [(1 - m) / s for m, s in zip(model.config["preprocess"]["mean"], model.config["preprocess"]["std"])]
    torch.testing.assert_close(x[:, 32, 32], torch.tensor(want), atol=1e-4, rtol=0)


def test_text_mask_excludes_markers_and_padding(model):
    tokens = model.tokenize(CAPTIONS)
    mask = model.text_mask(tokens)
    eot = model.tokenizer.eot_token_id
    for row, m in zip(tokens, mask):
        end = int((row == eot).nonzero()[0])
        assert m.tolist() == [0 < i < end for i in range(len(row))]
    # "!%" encodes to ids 0 and 260: a real token with the padding id, which must still count.
    assert tokens[2, 1].item() == 0 and mask[2].sum().item() == 2
    # A row without an end marker counts to its end.
    assert text_token_mask(torch.tensor([[5, 7, 9]]), eot).tolist() == [[False, True, True]]


def test_global_embeddings_follow_section_2(model, images):
    tokens = model.tokenize(CAPTIONS)
    with torch.no_grad():
        patches = model.patch_features(images)
        assert patches.shape == (3, 64, 128)
        # v = g_v(h_v(mean_p f_v)), normalised
        want = F.normalize(model.g_v(model.h_v(patches.mean(1))), dim=-1)
        torch.testing.assert_close(model.encode_image(images), want)
        # t = g_t(mean over real tokens of f_t): g_t is linear, so also the mean of the dense token embeddings.
        dense, mask = model.encode_text_dense(tokens)
        mean_dense = torch.stack([dense[i][mask[i]].mean(0) for i in range(3)])
        torch.testing.assert_close(model.encode_text(tokens), F.normalize(mean_dense, dim=-1), atol=1e-5, rtol=1e-5)
    for emb in (model.encode_image(images), model.encode_text(tokens)):
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_dense_heads(model, images):
    with torch.no_grad():
        patches = model.patch_features(images)
        glob, grid = model.encode_image_dense(images, head="global")
        local, grid2 = model.encode_image_dense(images, head="local")
        assert grid == grid2 == (8, 8)
        torch.testing.assert_close(glob, model.g_v(model.h_v(patches)))
        torch.testing.assert_close(local, model.g_v(patches))
        # Dense outputs are unnormalised (SPARC's alignment weights need raw dot products).
        assert not torch.allclose(local.norm(dim=-1), torch.ones(3, 64))
    with pytest.raises(SparcEvalError, match="unknown dense head"):
        model.encode_image_dense(images, head="cls")


def test_text_embedding_ignores_padding_positions(model):
    # Causal attention: a caption's real-token features do not depend on what follows them.
    tokens = model.tokenize(["a large purple cross"])
    garbage = tokens.clone()
    mask = model.text_mask(tokens)
    end = int(mask[0].nonzero()[-1]) + 2  # after the end marker
    garbage[0, end:] = torch.randint(1, 40000, (tokens.shape[1] - end,))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), model.encode_text(garbage))


def test_forward_returns_what_the_objectives_need(model, images):
    tokens = model.tokenize(CAPTIONS)
    out = model(images, tokens)
    assert set(out) == {"image_emb", "text_emb", "patch_emb", "token_emb", "token_mask", "tokens", "logit_scale"}
    assert out["tokens"] is tokens  # ids, for SparcObjective(fine_tokens="unique")
    with torch.no_grad():
        torch.testing.assert_close(out["image_emb"], model.encode_image(images))
        torch.testing.assert_close(out["patch_emb"], model.encode_image_dense(images, head="local")[0])
        torch.testing.assert_close(out["token_emb"], model.encode_text_dense(tokens)[0])


def test_describe(model):
    d = model.describe()
    assert d["arch"] == "tiny" and d["patch_grid"] == [8, 8]
    assert set(d["dense_heads"]) == {"global", "local"}
    assert len(d["sha256"]) == 64
    torch.manual_seed(0)
    assert create_model("tiny").describe()["sha256"] == d["sha256"]  # same seed, same weights, same hash


def test_vit_b_16_preset_is_the_paper_size():
    cfg = resolve_config("vit-b-16")
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    assert (v["image_size"], v["patch_size"], v["width"], v["layers"], v["width"] // v["head_width"]) == (224, 16, 768, 12, 12)
    assert (t["width"], t["layers"], t["heads"], cfg["embed_dim"]) == (768, 12, 12, 512)


def test_open_clip_architecture_and_overrides():
    cfg = resolve_config(
        "ViT-B-32",
        embed_dim=64,
        vision_cfg={"layers": 1, "width": 64, "image_size": 64},
        text_cfg={"layers": 1, "width": 64, "heads": 2, "context_length": 16},
    )
    assert cfg["vision_cfg"]["patch_size"] == 32  # taken from open_clip's ViT-B-32 config
    assert cfg["vision_cfg"]["output_tokens"] and cfg["text_cfg"]["proj_type"] == "none"
    m = create_model(
        "ViT-B-32",
        embed_dim=64,
        vision_cfg={"layers": 1, "width": 64, "image_size": 64},
        text_cfg={"layers": 1, "width": 64, "heads": 2, "context_length": 16},
    )
    assert m.encode_image_dense(torch.zeros(1, 3, 64, 64))[0].shape == (1, 4, 64)


@pytest.mark.parametrize(
    "arch,kwargs,needle",
    [
        ("tinyy", {}, "unknown architecture 'tinyy'; use a preset (tiny, vit-b-16)"),
        ("RN50", {}, "no plain ViT image tower"),
        ("ViT-B-16-SigLIP", {}, "no plain ViT image tower"),
        ("roberta-ViT-B-32", {}, "BPE tokenizer"),
        ("tiny", {"depth": 3}, "unknown model override 'depth'"),
        ("tiny", {"vision_cfg": {"image_size": 60}}, "multiple of patch_size"),
        ("tiny", {"vision_cfg": {"n_layers": 2}}, "bad tower config"),
    ],
)
def test_config_errors(arch, kwargs, needle):
    with pytest.raises(SparcEvalError) as err:
        resolve_config(arch, **kwargs)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_presets_are_plain_data():
    assert set(PRESETS) == {"tiny", "vit-b-16"}
    assert math.isclose(resolve_config("tiny")["init_logit_scale"], 1 / 0.07)
