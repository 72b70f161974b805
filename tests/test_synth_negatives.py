"""SynthScenes hard negatives: every negative false and every positive true for its scene (checked by a caption
parser written apart from the generator), no positive a train caption, deterministic bytes, older trees
upgraded in place to exactly what a fresh generation writes."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sparc_eval.data import synth
from sparc_eval.data.synth import COLOURS, SHAPES, SIZES, ensure_synthscenes, generate_synthscenes, synthscenes_dir
from sparc_eval.data.synth_negatives import (
    HARD_NEGATIVES_DIR,
    NEGATIVE_TYPES,
    CaptionGrammarError,
    NounPhrase,
    ObjectCount,
    Relation,
    caption_holds,
    hard_negative_files,
    parse_caption,
    scene_hard_negatives,
)
from sparc_eval.errors import SparcEvalError

READINGS = ("exact", "at-least")


def _json(path: Path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """300 val and 300 test scenes (the generator writes test only; val scenes widen the check)."""
    root = tmp_path_factory.mktemp("negatives") / "tree"
    generate_synthscenes(root, seed=5, n_train=40, n_val=300, workers=1)
    return root


def _obj(shape, colour, size, x, y, w=8, h=8):
    return {"shape": shape, "colour": colour, "size": size, "bbox": [x, y, w, h]}


def _scene(objects, image_id=1, split="test"):
    return {
        "image_id": image_id,
        "file_name": f"images/{image_id:06d}.png",
        "split": split,
        "width": 64,
        "height": 64,
        "objects": objects,
        "captions": [],
    }


def _assert_pair_checks(kind: str, positive: str, negative: str, scene: dict) -> None:
    for reading in READINGS:
        assert caption_holds(positive, scene, reading), (kind, reading, positive, scene["objects"])
    assert not caption_holds(negative, scene, "exact"), (kind, negative, scene["objects"])
    down = kind == "count_change" and parse_caption(negative).count < parse_caption(positive).count
    if not down:  # "two shapes" for three is false only when numerals are exact (as SugarCrepe reads them)
        assert not caption_holds(negative, scene, "at-least"), (kind, negative, scene["objects"])
    assert positive != negative


def test_written_negatives_false_and_positives_true_on_generated_scenes(tree):
    """Every entry of the written files, over 300 test scenes, read back through the independent checker."""
    scenes = {img["image_id"]: img for img in _json(tree / "scenes.json")["images"]}
    per_type = Counter()
    for kind in NEGATIVE_TYPES:
        table = _json(tree / HARD_NEGATIVES_DIR / "test" / f"{kind}.json")
        for key, entry in table.items():
            scene = scenes[int(key)]
            assert scene["split"] == "test" and entry["filename"] == scene["file_name"].split("/", 1)[1]
            assert (tree / "images" / entry["filename"]).is_file()
            _assert_pair_checks(kind, entry["caption"], entry["negative_caption"], scene)
            per_type[kind] += 1
    # Always possible: colour / shape replace (at most 4 of 6 present) and count change; the others need 2 objects.
    assert per_type["colour_replace"] == per_type["object_replace"] == per_type["count_change"] == 300
    assert per_type["size_replace"] >= 290 and min(per_type["attribute_swap"], per_type["relation_swap"]) >= 150


def test_negatives_false_on_val_scenes_and_random_scenes(tree):
    """The generator on val scenes too, and on random scenes with repeated colour-shapes and mixed sizes, which
    generated scenes seldom have (4 identical objects, two groups whose swap would repeat a third)."""
    scenes = [img for img in _json(tree / "scenes.json")["images"] if img["split"] == "val"]
    rng = np.random.default_rng(0)
    for image_id in range(2000):
        objects = []
        palette = list(COLOURS)[: rng.integers(1, 4)]
        for _ in range(rng.integers(1, 5)):
            objects.append(
                _obj(
                    SHAPES[rng.integers(3)],
                    palette[rng.integers(len(palette))],
                    SIZES[rng.integers(2)],
                    *map(int, rng.integers(0, 56, 2)),
                )
            )
        scenes.append(_scene(objects, image_id=10_000 + image_id))
    made = Counter()
    for scene in scenes:
        for kind, pair in scene_hard_negatives(scene, seed=0).items():
            if pair is not None:
                _assert_pair_checks(kind, *pair, scene)
                made[kind] += 1
    assert set(made) == set(NEGATIVE_TYPES) and min(made.values()) > 300


def test_negative_types_on_a_hand_built_scene():
    scene = _scene(
        [
            _obj("circle", "red", "small", 4, 28),  # centre (8, 32)
            _obj("square", "blue", "large", 44, 28, 16, 16),  # centre (52, 36)
        ]
    )
    pairs = scene_hard_negatives(scene, seed=0)
    assert pairs["attribute_swap"] == ("a small red circle and a large blue square", "a small blue circle and a large red square")
    assert pairs["relation_swap"] in {
        ("a small red circle to the left of a large blue square", "a small red circle to the right of a large blue square"),
        ("a large blue square to the right of a small red circle", "a large blue square to the left of a small red circle"),
    }
    assert pairs["count_change"] in {("two shapes", "one shape"), ("two shapes", "three shapes")}
    positive = "a small red circle and a large blue square"
    for kind in ("colour_replace", "size_replace", "object_replace"):
        assert pairs[kind][0] == positive
        changed = [(a, b) for a, b in zip(positive.split(), pairs[kind][1].split()) if a != b]
        assert len(changed) == 1, (kind, pairs[kind])
    assert pairs["size_replace"][1] in {
        "a large red circle and a large blue square",
        "a small red circle and a small blue square",
    }
    # A lone object: nothing to swap, no relation.
    lone = scene_hard_negatives(_scene([_obj("star", "cyan", "large", 20, 20)]), seed=0)
    assert (
        lone["attribute_swap"] is None and lone["relation_swap"] is None and lone["count_change"] == ("one shape", "two shapes")
    )


def test_checker_reads_captions_by_hand():
    """The checker itself, on cases worked out by hand (it must be right for the proofs above to mean anything)."""
    scene = _scene(
        [
            _obj("circle", "red", "small", 0, 0),  # centre (4, 4)
            _obj("circle", "red", "small", 40, 0),  # centre (44, 4)
            _obj("cross", "green", "large", 20, 40, 16, 16),  # centre (28, 48)
        ]
    )
    truth = {
        "two small red circles and a large green cross": (True, True),
        "two red circles": (True, True),
        "a red circle": (False, True),  # exactly one? no; at least one? yes
        "three red circles": (False, False),
        "two large red circles": (False, False),
        "a large green cross, two small red circles and a small blue star": (False, False),
        "a small green cross": (False, False),
        "three shapes": (True, True),
        "two shapes": (False, True),
        "four shapes": (False, False),
        "a large green cross below a small blue circle": (False, False),
    }
    for text, (exact, at_least) in truth.items():
        assert caption_holds(text, scene, "exact") is exact, text
        assert caption_holds(text, scene, "at-least") is at_least, text
    pair = _scene([_obj("circle", "red", "small", 0, 0), _obj("cross", "green", "large", 20, 40, 16, 16)])
    assert caption_holds("a large green cross below a small red circle", pair)
    assert caption_holds("a small red circle above a large green cross", pair)
    assert caption_holds("a small red circle to the left of a large green cross", pair)  # 28 - 4 > 0.125 * 64
    assert not caption_holds("a small red circle to the right of a large green cross", pair)
    assert not caption_holds("a large green cross above a small red circle", pair)
    near = _scene([_obj("circle", "red", "small", 0, 0), _obj("cross", "green", "large", 4, 0)])  # 4 px apart
    assert not caption_holds("a small red circle to the left of a large green cross", near, "at-least")


@pytest.mark.parametrize(
    "text",
    [
        "a red circles",
        "two red circle",
        "a red circle and",
        "a red circle, a blue square",
        "a red circle and a red circle",
        "two red circles to the left of a blue square",
        "a huge red circle",
        "a red hexagon",
        "one shapes",
        "two shape",
        " a red circle",
        "a red  circle",
        "",
    ],
)
def test_checker_refuses_ungrammatical_captions(text):
    with pytest.raises(CaptionGrammarError):
        parse_caption(text)


def test_parse_structures():
    assert parse_caption("two small red crosses and a blue star") == [
        NounPhrase(2, "small", "red", "cross"),
        NounPhrase(1, None, "blue", "star"),
    ]
    assert parse_caption("a red cross above a large blue star") == Relation(
        NounPhrase(1, None, "red", "cross"), "above", NounPhrase(1, "large", "blue", "star")
    )
    assert parse_caption("one shape") == ObjectCount(1)


def test_no_positive_is_a_train_caption(tree):
    """On the generated tree, and on a tree built so that one positive is a train caption: that entry is dropped."""
    scenes = _json(tree / "scenes.json")
    trained = {
        " ".join(c["text"].lower().split()).rstrip(".")
        for img in scenes["images"]
        if img["split"] == "train"
        for c in img["captions"]
    }
    for kind in NEGATIVE_TYPES:
        for entry in _json(tree / HARD_NEGATIVES_DIR / "test" / f"{kind}.json").values():
            assert entry["caption"] not in trained

    test_scene = _scene([_obj("circle", "red", "small", 4, 28), _obj("square", "blue", "large", 44, 28, 16, 16)], 2)
    positive = scene_hard_negatives(test_scene, seed=0)["relation_swap"][0]
    train_scene = {**_scene([], 1, "train"), "captions": [{"text": positive.upper() + "."}]}
    files = hard_negative_files({"images": [train_scene, test_scene]}, seed=0)
    assert json.loads(files[f"{HARD_NEGATIVES_DIR}/test/relation_swap.json"]) == {}
    assert "2" in json.loads(files[f"{HARD_NEGATIVES_DIR}/test/attribute_swap.json"])


def test_files_are_in_sugarcrepe_layout_listed_and_deterministic(tree):
    manifest = _json(tree / "MANIFEST.json")
    assert manifest["generator_version"] == synth.GENERATOR_VERSION == 2
    for kind in NEGATIVE_TYPES:
        rel = f"{HARD_NEGATIVES_DIR}/test/{kind}.json"
        assert manifest["files"][rel] == hashlib.md5((tree / rel).read_bytes()).hexdigest()
        for key, entry in _json(tree / rel).items():
            assert key.isdigit() and set(entry) == {"filename", "caption", "negative_caption"}
    scenes = _json(tree / "scenes.json")
    again = hard_negative_files(scenes, seed=5)
    assert all(again[rel] == (tree / rel).read_text() for rel in again)
    other_seed = hard_negative_files(scenes, seed=6)
    assert any(other_seed[rel] != again[rel] for rel in again)


def test_version_1_tree_upgraded_in_place_to_the_fresh_bytes(tmp_path):
    """A tree written before hard negatives existed (version 1: the same files without hard_negatives/) gains
    exactly the files and manifest a fresh generation writes; no file it had changes."""
    params = {"seed": 1, "n_train": 12, "n_val": 6, "image_size": 64}
    fresh = synthscenes_dir(tmp_path / "fresh", **params)
    generate_synthscenes(fresh, workers=1, **params)
    old = synthscenes_dir(tmp_path / "old", **params)
    shutil.copytree(fresh, old)
    manifest = _json(old / "MANIFEST.json")
    shutil.rmtree(old / HARD_NEGATIVES_DIR)
    manifest["generator_version"] = 1
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith(f"{HARD_NEGATIVES_DIR}/")}
    (old / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file() and p.name != "MANIFEST.json"}

    assert ensure_synthscenes(tmp_path / "old", **params) == old
    files = sorted(p.relative_to(old) for p in old.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    for rel in files:
        assert (old / rel).read_bytes() == (fresh / rel).read_bytes(), rel
    assert all(path.read_bytes() == data for path, data in before.items())

    manifest["generator_version"] = 99
    (old / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(SparcEvalError, match="generator version 99"):
        ensure_synthscenes(tmp_path / "old", **params)
