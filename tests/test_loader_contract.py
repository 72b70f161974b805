"""Contract test over every model source: each registered loader, given a reference to a local instance built
here, returns a model that keeps the model contract of DESIGN.md (sparc_eval.models.contract).

A source without a builder in BUILDERS fails here: a new model source comes with a way to make a small local
instance (CONTRIBUTING.md). Only a source that cannot work without a network may skip, saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from sparc_eval.errors import SparcEvalError
from sparc_eval.models.contract import ImageTextModel
from sparc_eval.models.loaders import LOADERS, load_model

CAPTIONS = ["a red circle", "", "a small blue square to the left of a large green star in the top corner"]


def _folder(tmp: Path, request) -> str:
    return str(request.getfixturevalue("tiny_sparc_ckpt"))


def _openclip(tmp: Path, request) -> str:
    return "openclip:ViT-S-32"  # random init, seeded: no download


def _hf_clip(tmp: Path, request) -> str:
    from hf_fixtures import save_tiny_clip

    return f"hf:{save_tiny_clip(tmp / 'hf-clip')}"


def _hf_siglip(tmp: Path, request) -> str:
    pytest.importorskip("sentencepiece", reason="the SigLIP tokenizer needs sentencepiece (the hf extra)")
    from hf_fixtures import save_tiny_siglip

    return f"hf:{save_tiny_siglip(tmp / 'hf-siglip')}"


def _card(tmp: Path, request) -> str:
    from sparc_eval import checkpoint_cards

    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv(checkpoint_cards.CHECKPOINT_ROOT_ENV, str(tmp / "checkpoints"))
    monkeypatch.setenv(checkpoint_cards.DATA_DIR_ENV, str(tmp / "data"))
    card = tmp / "mini-sparc.yaml"
    card.write_text(
        "name: mini-sparc\nversion: 1\ndescription: loader contract test\n"
        "synthscenes: {seed: 0, n_train: 32, n_val: 8, image_size: 64}\n"
        "train: {arch: tiny, objective: sparc, steps: 1, batch_size: 4, warmup: 1, log_every: 1, seed: 0}\n"
    )
    return f"card:{card}"  # trained on first use


# source -> builders of a local reference (several where a source reads several kinds of checkpoint)
BUILDERS: dict[str, dict[str, Callable[[Path, pytest.FixtureRequest], str]]] = {
    "folder": {"sparc-checkpoint": _folder},
    "openclip": {"random-init": _openclip},
    "hf": {"clip": _hf_clip, "siglip": _hf_siglip},
    "card": {"tiny-card": _card},
}
SLOW = {("card", "tiny-card")}


def _cases():
    for source in LOADERS.names():
        for variant in BUILDERS.get(source, {None: None}):
            marks = [pytest.mark.slow] if (source, variant) in SLOW else []
            yield pytest.param(source, variant, marks=marks, id=f"{source}-{variant}" if variant else source)


@pytest.fixture
def reference(request, tmp_path) -> str:
    source, variant = request.node.callspec.params["source"], request.node.callspec.params["variant"]
    if variant is None:
        pytest.fail(f"model source {source!r} has no local instance to test: add a builder to BUILDERS in {__file__}")
    return BUILDERS[source][variant](tmp_path, request)


def _images(model) -> torch.Tensor:
    """Two different RGB images of an odd size, through the model's own preprocess."""
    a = Image.new("RGB", (50, 37), (200, 30, 30))
    b = Image.linear_gradient("L").resize((41, 61)).convert("RGB")
    pixels = [model.preprocess(a), model.preprocess(b)]
    assert all(p.dtype == torch.float32 and p.ndim == 3 and p.shape[0] == 3 for p in pixels)
    assert pixels[0].shape == pixels[1].shape, "preprocess gives one input size whatever the image size"
    return torch.stack(pixels)


def _unit_rows(x: torch.Tensor) -> None:
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(len(x)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("source, variant", list(_cases()))
def test_model_contract(source, variant, reference):
    model = load_model(reference)
    assert isinstance(model, torch.nn.Module) and isinstance(model, ImageTextModel)
    assert not model.training, "load_model returns a model in eval mode"
    described = model.describe()
    assert described["ref"] and isinstance(described["source"], str) and described["arch"]
    assert len(described["sha256"]) == 64 and int(described["sha256"], 16) >= 0
    assert set(described["dense_heads"]) == {"global", "local"} and all(described["dense_heads"].values())

    with torch.inference_mode():
        images = _images(model)
        tokens = model.tokenize(CAPTIONS)
        assert tokens.dtype == torch.int64 and tokens.ndim == 2 and tokens.shape[0] == len(CAPTIONS)

        image_emb, text_emb = model.encode_image(images), model.encode_text(tokens[[0, 2]])
        dim = image_emb.shape[1]
        assert image_emb.shape == (2, dim) and text_emb.shape == (2, dim)
        _unit_rows(image_emb)
        _unit_rows(text_emb)
        # Each item is encoded on its own: a batch gives what one-item batches give (no batch statistics).
        torch.testing.assert_close(model.encode_image(images[1:]), image_emb[1:], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.encode_text(tokens[[2]]), text_emb[1:], rtol=1e-4, atol=1e-5)

        for head in ("global", "local"):
            dense, (h, w) = model.encode_image_dense(images, head=head)
            assert dense.shape == (2, h * w, dim) and h > 1 and w > 1, head
            assert torch.isfinite(dense).all()
        with pytest.raises(SparcEvalError, match="dense head"):
            model.encode_image_dense(images, head="middle")

        tok, mask = model.encode_text_dense(tokens)
        assert tok.shape == (*tokens.shape, dim) and torch.isfinite(tok).all()
        assert mask.dtype == torch.bool and mask.shape == tokens.shape
        counts = mask.sum(1).tolist()
        assert counts[1] == 0, "an empty caption has no real tokens"
        assert 3 <= counts[0] < counts[2] < tokens.shape[1], counts  # a word piece or more per word, markers excluded
        for row in mask:  # real tokens are one contiguous run
            real = row.nonzero().flatten()
            assert len(real) == 0 or (real == torch.arange(real[0], real[-1] + 1)).all()

        scale = model.logit_scale
        assert isinstance(scale, torch.Tensor) and scale.numel() == 1 and torch.isfinite(scale) and float(scale) > 0

    # The same reference names the same model.
    again = load_model(reference)
    assert again.describe()["sha256"] == described["sha256"]
    with torch.inference_mode():
        torch.testing.assert_close(again.encode_image(images), image_emb)
