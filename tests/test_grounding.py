"""The grounding runner: hand-built scenes and fake contract models whose embeddings make every answer
known, word -> token alignment, mention sources, and end to end through `sparc-eval run`."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from sparc_eval.errors import SparcEvalError
from sparc_eval.tasks.card import load_card, validate_params
from sparc_eval.tasks.grounding import (
    GroundingRunner,
    MaskProjector,
    aligned_positions,
    category_word_mentions,
    word_pieces,
)
from sparc_eval.tasks.runner import RunContext

GREY = 128
SIDE, PATCH = 16, 4  # 4x4 grid of 4-pixel patches
P = (SIDE // PATCH) ** 2


# ------------------------------------------------------------------------------ hand-built scenes


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}


def _block(rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((SIDE, SIDE), bool)
    m[rows, cols] = True
    return m


# Three 16x16 images on grey; objects fill whole patches, so coverage is exactly 0 or 1.
SCENES = [
    # image 1: red square on patches (0,0),(0,1); blue square on patch (3,3)
    [("red", (255, 0, 0), _block(slice(0, 4), slice(0, 8))), ("blue", (0, 0, 255), _block(slice(12, 16), slice(12, 16)))],
    # image 2: cyan square on patches (1,1),(1,2),(2,1),(2,2)
    [("cyan", (0, 255, 255), _block(slice(4, 12), slice(4, 12)))],
    # image 3: red square on patch (3,0)
    [("red", (255, 0, 0), _block(slice(12, 16), slice(0, 4)))],
]


def _caption(*parts: tuple[str, str | None, list[int] | None]) -> dict:
    text, mentions = "", []
    for piece, kind, ids in parts:
        if kind:
            mentions.append({"start": len(text), "end": len(text) + len(piece), "word": piece, "kind": kind, "instance_ids": ids})
        text += piece
    return {"text": text, "mentions": mentions}


def _captions(image_id: int) -> list[dict]:
    ids = [image_id * 10 + k for k in range(1, len(SCENES[image_id - 1]) + 1)]
    if image_id == 1:
        return [
            _caption(
                ("a ", None, None),
                ("red", "colour", ids[:1]),
                (" ", None, None),
                ("square", "shape", ids[:1]),
                (" and a ", None, None),
                ("blue", "colour", ids[1:]),
                (" square", None, None),
            ),
            _caption(("two", "count", ids), (" squares", None, None)),
        ]
    colour = SCENES[image_id - 1][0][0]
    return [_caption(("a ", None, None), (colour, "colour", ids), (" square", None, None)), _caption(("one square", None, None))]


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory) -> Path:
    """A COCO instances file, images and a scenes.json (SynthScenes' layout) for the three scenes."""
    root = tmp_path_factory.mktemp("hand-scenes")
    (root / "images").mkdir()
    images, anns, scene_records = [], [], []
    for image_id, objects in enumerate(SCENES, start=1):
        pixels = np.full((SIDE, SIDE, 3), GREY, np.uint8)
        for k, (_, rgb, mask) in enumerate(objects, start=1):
            pixels[mask] = rgb
            anns.append(
                {
                    "id": image_id * 10 + k,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [0, 0, 1, 1],
                    "area": int(mask.sum()),
                    "segmentation": _rle(mask),
                    "iscrowd": 0,
                }
            )
        name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(root / "images" / name)
        images.append({"id": image_id, "file_name": name, "width": SIDE, "height": SIDE})
        scene_records.append({"image_id": image_id, "captions": _captions(image_id)})
    (root / "instances_val.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "square"}]})
    )
    (root / "scenes.json").write_text(json.dumps({"images": scene_records}))
    return root


def _card(tmp_path: Path, root: Path, **params) -> Path:
    card = {
        "name": "hand-grounding",
        "version": 1,
        "runner": "grounding",
        "dataset": {
            "format": "coco-instances",
            "root": str(root / "images"),
            "split": "val",
            "annotation": "../instances_{split}.json",
        },
        "params": {"mentions": "scenes", "mentions_file": str(root / "scenes.json"), **params},
    }
    path = tmp_path / "hand-grounding.yaml"
    path.write_text(json.dumps(card))
    return path


def _evaluate(card_path: Path, model, tmp_path: Path, limit: int | None = None, batch_size: int = 2):
    card = load_card(card_path)
    params = validate_params(GroundingRunner.Params, card.params, card)
    ctx = RunContext(
        device=torch.device("cpu"),
        batch_size=batch_size,
        precision="fp32",
        limit=limit,
        num_workers=0,
        seed=0,
        data_dir=tmp_path,
        work_dir=tmp_path,
        record_stem="hand",
        cache_dir=tmp_path / "cache",
    )
    with torch.inference_mode():
        return GroundingRunner(card, params, ctx).evaluate(model), params


# ------------------------------------------------------------------------------ fake contract models


class FakeModel(torch.nn.Module):
    """Implements the model contract on 16x16 images with a 4x4 patch grid and open_clip's tokenizer.

    patch_fn(images [B,3,16,16] in [0,1]) -> [B, 16, D]; token_fn(ids [N,L]) -> [N, L, D].
    """

    def __init__(self, patch_fn, token_fn, objective):
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer

        self.tokenizer = SimpleTokenizer(context_length=16)
        self.preprocess = transforms.ToTensor()
        self.patch_fn, self.token_fn, self.objective = patch_fn, token_fn, objective

    def tokenize(self, texts):
        return self.tokenizer(list(texts))

    def encode_image_dense(self, images, head="global"):
        return self.patch_fn(images), (SIDE // PATCH, SIDE // PATCH)

    def encode_text_dense(self, tokens):
        from sparc_eval.models.sparc import text_token_mask

        return self.token_fn(tokens), text_token_mask(tokens, self.tokenizer.eot_token_id)

    @property
    def logit_scale(self):
        return torch.tensor(10.0)

    def describe(self):
        return {"objective": self.objective, "sha256": "0" * 64, "dense_heads": {"global": "fake global", "local": "fake local"}}


def patch_colours(images: torch.Tensor) -> torch.Tensor:
    """Each patch's mean RGB in [0, 1]: an embedding that sees colour and nothing else."""
    b = images.shape[0]
    return images.reshape(b, 3, SIDE // PATCH, PATCH, SIDE // PATCH, PATCH).mean(dim=(3, 5)).reshape(b, 3, P).transpose(1, 2)


COLOUR_WORDS = {"red": (1.0, 0.0, 0.0), "blue": (0.0, 0.0, 1.0), "cyan": (0.0, 1.0, 1.0)}


def colour_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Colour words (all their BPE pieces) embed as their RGB direction; every other token as 0."""
    table = {}
    for word, rgb in COLOUR_WORDS.items():
        for _, _, ids in word_pieces(word):
            for i in ids:
                table[i] = rgb
    out = torch.zeros(*tokens.shape, 3)
    for (n, l), i in np.ndenumerate(tokens.numpy()):
        out[n, l] = torch.tensor(table.get(int(i), (0.0, 0.0, 0.0)))
    return out


SPARC = {"name": "sparc", "lambda_g": 0.5, "lambda_f": 1.0, "sparsity": True, "weights": "sparse"}


def _words(output, image_id: int) -> dict[tuple[int, str], dict]:
    sample = next(s for s in output.samples if s["image_id"] == image_id)
    return {(w["caption"], w["word"]): w for w in sample["words"]}


# ------------------------------------------------------------------------------ known answers


def test_sparc_weights_point_and_mass_on_a_hand_built_scene(scenes_root, tmp_path):
    output, params = _evaluate(_card(tmp_path, scenes_root), FakeModel(patch_colours, colour_tokens, SPARC), tmp_path)
    g = GREY / 255
    words = _words(output, 1)
    # "red": similarity 1 on the 2 red patches, g on the 13 grey ones, 0 on the blue one. Min-max keeps
    # those values; the 1/P threshold drops only the blue patch; weights = sim / sum.
    red = words[(0, "red")]
    assert red["hit"] == 1.0 and red["nnz"] == 15
    assert red["mass"] == pytest.approx(2 / (2 + 13 * g))
    assert red["inside_share"] == 2 / P and red["area_share"] == 2 / P
    assert red["token_positions"] == [2]  # <start> a red
    blue = words[(0, "blue")]  # 0 on both red patches: both dropped
    assert blue["hit"] == 1.0 and blue["nnz"] == 14 and blue["mass"] == pytest.approx(1 / (1 + 13 * g))
    # "square" embeds as 0: equally similar to every patch, uniform weights: exactly chance.
    square = words[(0, "square")]
    assert square["hit"] == pytest.approx(2 / P) and square["mass"] == pytest.approx(2 / P) and square["nnz"] == P
    # "two" refers to both squares: their union (3 patches) is the object.
    two = words[(1, "two")]
    assert two["instance_ids"] == [11, 12] and two["inside_share"] == 3 / P and two["hit"] == pytest.approx(3 / P)
    # "cyan" is two BPE tokens; both embed as (0,1,1), so their mean weight row is each one's row. Image 2
    # holds only cyan (similarity 2) and grey (2g, the minimum): min-max sends grey to 0, all mass on cyan.
    cyan = _words(output, 2)[(0, "cyan")]
    assert len(cyan["token_positions"]) == 2
    assert cyan["hit"] == 1.0 and cyan["mass"] == pytest.approx(1.0) and cyan["nnz"] == 4
    # Metrics are the means over every word record.
    all_words = [w for s in output.samples for w in s["words"]]
    assert len(all_words) == 4 + 1 + 1  # image 1: red, square, blue, two; images 2 and 3: one colour word each
    assert output.metrics["pointing_acc"] == pytest.approx(np.mean([w["hit"] for w in all_words]))
    assert output.metrics["mass_chance"] == pytest.approx(np.mean([w["area_share"] for w in all_words]))
    assert output.metrics["nnz_share"] == pytest.approx(np.mean([w["nnz"] for w in all_words]) / P)
    assert output.info["alignment_weights"].startswith("sparc_alignment_weights")
    assert output.info["head"] == "local" and output.info["head_path"] == "fake local"


def test_softmax_weights_for_a_model_without_sparc(scenes_root, tmp_path):
    model = FakeModel(patch_colours, colour_tokens, "clip (open_clip)")
    output, _ = _evaluate(_card(tmp_path, scenes_root, kinds=["colour"]), model, tmp_path)
    red = _words(output, 1)[(0, "red")]
    # cos(red token, patch): 1 on red, 1/sqrt(3) on grey, 0 on blue; softmax at logit_scale 10.
    e_red, e_grey, e_blue = math.exp(10), math.exp(10 / math.sqrt(3)), 1.0
    assert red["mass"] == pytest.approx(2 * e_red / (2 * e_red + 13 * e_grey + e_blue))
    assert red["hit"] == 1.0 and red["nnz"] == P  # softmax is never exactly zero
    assert {w["kind"] for s in output.samples for w in s["words"]} == {"colour"}
    assert "softmax" in output.info["alignment_weights"]


# ------------------------------------------------------------------------------ shortcut probes


def _position_patches(images: torch.Tensor) -> torch.Tensor:
    """Patch embeddings that depend on position only (the image is ignored)."""
    table = torch.randn(P, 3, generator=torch.Generator().manual_seed(0))
    return table.expand(images.shape[0], P, 3).clone()


def _position_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Token embeddings from id and position, so different captions give different fine losses."""
    gen = torch.Generator().manual_seed(1)
    by_position = torch.randn(tokens.shape[1], 3, generator=gen)
    return by_position + 0.5 * torch.stack([torch.sin(tokens.float() * k) for k in (1.0, 2.0, 3.0)], dim=-1)


def test_image_blind_model_has_equal_matched_and_mismatched_fine_loss_and_position_r2_one(scenes_root, tmp_path):
    output, _ = _evaluate(_card(tmp_path, scenes_root), FakeModel(_position_patches, _position_tokens, SPARC), tmp_path)
    m = output.metrics
    losses = [f for s in output.samples for f in s["fine_loss"]]
    assert len(losses) == 6  # 3 images x 2 captions
    # A mismatched pair is a caption with the next image's patches; an image-blind model scores a caption
    # the same with any image, pair by pair.
    assert len({round(f["matched"], 6) for f in losses}) > 1
    assert all(f["mismatched"] == pytest.approx(f["matched"], rel=1e-6) for f in losses)
    assert m["fine_loss_mismatched"] == pytest.approx(m["fine_loss_matched"], rel=1e-6)
    assert m["fine_loss_gap"] == pytest.approx(0.0, abs=1e-5) and m["fine_loss_ratio"] == pytest.approx(1.0, rel=1e-5)
    assert m["position_r2"] == pytest.approx(1.0)


def test_position_r2_and_partners_over_the_evaluated_images(scenes_root, tmp_path):
    from test_grounding_metrics import _r2_by_least_squares

    output, _ = _evaluate(_card(tmp_path, scenes_root), FakeModel(patch_colours, colour_tokens, SPARC), tmp_path)
    images = torch.stack(
        [transforms.ToTensor()(Image.open(scenes_root / "images" / f"{i:06d}.png").convert("RGB")) for i in (1, 2, 3)]
    )
    assert output.metrics["position_r2"] == pytest.approx(_r2_by_least_squares(patch_colours(images).double().numpy()), abs=1e-9)
    assert [s["image_id"] for s in output.samples] == [1, 2, 3]
    # A model that sees the image scores some captions differently with the next image's patches.
    losses = [f for s in output.samples for f in s["fine_loss"]]
    assert all(f["mismatched"] is not None for f in losses)
    assert any(abs(f["matched"] - f["mismatched"]) > 1e-3 for f in losses)
    # The last image's captions meet the first image's patches (the roll wraps around).
    from sparc_eval.models.objectives import sparc_fine_grained_loss

    model = FakeModel(patch_colours, colour_tokens, SPARC)
    tok, mask = model.encode_text_dense(model.tokenize([_captions(3)[0]["text"]]))
    wrapped = float(sparc_fine_grained_loss(tok, mask, patch_colours(images[:1]), model.logit_scale))
    assert output.samples[2]["fine_loss"][0]["mismatched"] == pytest.approx(wrapped, rel=1e-6)


def test_limit_one_image_has_no_mismatched_pair_nor_position_r2(scenes_root, tmp_path):
    output, _ = _evaluate(_card(tmp_path, scenes_root), FakeModel(patch_colours, colour_tokens, SPARC), tmp_path, limit=1)
    assert output.n_samples == 1
    assert output.metrics["fine_loss_matched"] is not None
    assert output.metrics["fine_loss_mismatched"] is None and output.metrics["fine_loss_gap"] is None
    assert output.metrics["position_r2"] is None


def test_results_do_not_depend_on_batch_size(scenes_root, tmp_path):
    model = FakeModel(patch_colours, colour_tokens, SPARC)
    one, _ = _evaluate(_card(tmp_path, scenes_root), model, tmp_path, batch_size=1)
    three, _ = _evaluate(_card(tmp_path, scenes_root), model, tmp_path, batch_size=3)
    assert one.metrics == pytest.approx(three.metrics)
    # Pairs never depend on batch boundaries: every (caption, image) pair gets the same loss either way.
    pairs = lambda out: [v for s in out.samples for f in s["fine_loss"] for v in (f["matched"], f["mismatched"])]  # noqa: E731
    assert pairs(one) == pytest.approx(pairs(three)) and len(pairs(one)) == 12


# ------------------------------------------------------------------------------ words, masks, mentions


def test_word_pieces_and_positions_follow_the_model_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer(context_length=12)
    text = "A  Cyan diamond,  left of a RED star"
    spans = {w: (text.index(w), text.index(w) + len(w)) for w in ("Cyan", "diamond", "RED", "star")}
    row = tok([text])[0]
    positions = aligned_positions(text, row, list(spans.values()))
    # Decoding the ids at each word's positions gives the word back (the tokenizer's own decoder).
    for word, pos in zip(spans, positions):
        assert tok.decode(row[pos].tolist()).strip() == word.lower()
    assert len(positions[0]) == 2  # "cyan" is two BPE pieces
    # Context 6 keeps 4 word pieces: a, cy, an, diamond; later words lose their positions.
    short = SimpleTokenizer(context_length=6)([text])[0]
    cut = aligned_positions(text, short, list(spans.values()))
    assert cut[0] == [2, 3] and cut[1] == [4] and cut[2] == [] and cut[3] == []
    # A row from another tokenizer is refused, not misaligned.
    assert aligned_positions(text, torch.arange(12), list(spans.values())) is None
    assert [p[:2] for p in word_pieces("red, star")] == [(0, 3), (3, 4), (5, 9)]


def test_mask_projector_follows_resize_and_centre_crop():
    mask = np.zeros((8, 12), np.uint8)  # a wide image: shortest side 8 -> 16, then a 16x16 centre crop
    mask[2:6, 3:5] = 1
    pre = transforms.Compose(
        [
            transforms.Resize(16, interpolation=transforms.InterpolationMode.NEAREST),
            transforms.CenterCrop(16),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.4, 0.3), (0.2, 0.3, 0.4)),
        ]
    )
    projected = MaskProjector(pre)(mask)
    expected = np.kron(mask, np.ones((2, 2)))[:, 4:20]  # 16 x 24, crop columns 4..19
    np.testing.assert_allclose(projected.numpy(), expected, atol=1e-6)


def test_category_word_mentions(tmp_path):
    class Dataset:
        image_ids = [7]

    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {
        "images": [{"id": 7}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "hot dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 70, "image_id": 7, "category_id": 1},
            {"id": 71, "image_id": 7, "category_id": 1},
            {"id": 72, "image_id": 7, "category_id": 2},
        ],
    }
    coco.createIndex()
    Dataset.coco = coco
    captions = tmp_path / "captions.json"
    text = "A Hot  dog beside two Dogs, no cat, hotdogs"
    captions.write_text(json.dumps({"annotations": [{"image_id": 7, "caption": text}]}))
    (cap,) = category_word_mentions(captions, Dataset)[7]
    found = [(text[m["start"] : m["end"]], m["instance_ids"]) for m in cap["mentions"]]
    # Longest match wins ("Hot  dog" is not also a "dog"); plurals count; "cat" is not in the image.
    assert found == [("Hot  dog", [72]), ("Dogs", [70, 71])]


# ------------------------------------------------------------------------------ bad input


def test_bad_cards_and_files_name_the_culprit(scenes_root, tmp_path):
    model = FakeModel(patch_colours, colour_tokens, SPARC)
    with pytest.raises(SparcEvalError, match="head"):
        _evaluate(_card(tmp_path, scenes_root, head="middle"), model, tmp_path)
    with pytest.raises(SparcEvalError, match="unknown mentions source 'captions'"):
        _evaluate(_card(tmp_path, scenes_root, mentions="captions"), model, tmp_path)
    broken = tmp_path / "scenes.json"
    broken.write_text(json.dumps({"images": [{"image_id": 1, "captions": []}]}))
    with pytest.raises(SparcEvalError, match=f"{broken}.*image id 2"):
        _evaluate(_card(tmp_path, scenes_root, mentions_file=str(broken)), model, tmp_path)
    with pytest.raises(SparcEvalError, match="does not exist"):
        _evaluate(_card(tmp_path, scenes_root, mentions_file=str(tmp_path / "missing.json")), model, tmp_path)


def test_coco_card_reads_the_coco_layout(scenes_root, tmp_path):
    """The shipped coco-grounding card on a COCO-shaped tree: {data}/coco/val2017 + annotations/."""
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    shutil.copytree(scenes_root / "images", coco / "val2017")  # not a link: the card reaches annotations via val2017/..
    instances = json.loads((scenes_root / "instances_val.json").read_text())
    (coco / "annotations" / "instances_val2017.json").write_text(json.dumps(instances))
    caps = [
        {"id": i, "image_id": 1, "caption": text} for i, text in enumerate(["A red square and a blue square.", "Two squares"])
    ]
    (coco / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": instances["images"], "annotations": caps}))
    card = Path(__file__).parents[1] / "tasks" / "coco-grounding.yaml"
    output, _ = _evaluate(card, FakeModel(patch_colours, colour_tokens, SPARC), tmp_path)
    words = [w for s in output.samples for w in s["words"]]
    # "square" twice and "squares" once, each referring to every square of image 1; images 2 and 3 have no captions.
    assert [(w["word"], w["instance_ids"], w["kind"]) for w in words] == [("square", [11, 12], "category")] * 2 + [
        ("squares", [11, 12], "category")
    ]
    assert [len(s["fine_loss"]) for s in output.samples] == [2, 0, 0]
    assert all(f["mismatched"] is not None for f in output.samples[0]["fine_loss"])
