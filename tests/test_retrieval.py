"""Retrieval runner on a Karpathy-format split whose ranks are worked out by hand (tests/colour_fakes.py)."""

from __future__ import annotations

import pytest
from colour_fakes import ColourModel, run_runner, write_karpathy

import sparc_eval.tasks.retrieval as retrieval

# Images (solid colours) with their captions; the model sees only the first colour word of a caption.
ENTRIES = [
    ("red", ["a red square", "something"]),  # "something" names no colour
    ("blue", ["a blue circle"]),
    ("red", ["red again"]),  # a second red image: ties with image 0 both ways
    ("green", ["a blue thing"]),  # a wrong caption
]
# image -> text: image 0 finds "a red square" (1.0) tied with the negative "red again" -> 2; image 1 ties
# with "a blue thing" -> 2; image 2 ties with "a red square" -> 2; image 3 (green) scores its "blue" caption
# 0.0025, tied with the red/blue negatives and below "something" (0.05) -> 5.
IMAGE_RANKS = [2, 2, 2, 5]
# text -> image: "something" scores every image alike (rank 4); "a blue thing" sees blue first, then
# ties its green image with the two red ones (rank 4).
TEXT_RANKS = [2, 4, 1, 2, 4]


def _card(root) -> dict:
    return {
        "name": "colour-retrieval",
        "version": 1,
        "runner": "retrieval",
        "dataset": {"format": "karpathy", "root": str(root), "split": "test", "annotation": "dataset_test.json"},
    }


def test_known_ranks_with_ties_and_multiple_captions(tmp_path):
    root = write_karpathy(tmp_path / "ds", ENTRIES)
    output, runner_cls, params = run_runner(tmp_path, _card(root), ColourModel())
    images = [s for s in output.samples if s["kind"] == "image"]
    captions = [s for s in output.samples if s["kind"] == "caption"]
    assert [s["rank"] for s in images] == IMAGE_RANKS
    assert [s["rank"] for s in captions] == TEXT_RANKS
    assert output.metrics == {"i2t_r1": 0.0, "i2t_r5": 1.0, "i2t_r10": 1.0, "t2i_r1": 0.2, "t2i_r5": 1.0, "t2i_r10": 1.0}
    # aggregate on a hand-picked subset: without image 3 (rank 5) and caption "a blue thing" (rank 4).
    subset = [s for s in output.samples if s["id"] not in ("image/103", "caption/103/0")]
    assert runner_cls.aggregate(subset, params) == {
        "i2t_r1": 0.0,
        "i2t_r5": 1.0,
        "i2t_r10": 1.0,
        "t2i_r1": 0.25,
        "t2i_r5": 1.0,
        "t2i_r10": 1.0,
    }
    assert output.n_samples == 4 and output.info["n_captions"] == 5
    assert images[3] == {
        "kind": "image",
        "id": "image/103",
        "image_id": 103,
        "path": str(root / "images" / "003.png"),
        "n_captions": 1,
        "rank": 5,
        "i2t_r1": 0,
        "i2t_r5": 1,
        "i2t_r10": 1,
    }
    assert captions[1] == {
        "kind": "caption",
        "id": "caption/100/1",
        "image_id": 100,
        "caption": "something",
        "rank": 4,
        "t2i_r1": 0,
        "t2i_r5": 1,
        "t2i_r10": 1,
    }


def test_small_blocks_and_batches_change_nothing(tmp_path, monkeypatch):
    root = write_karpathy(tmp_path / "ds", ENTRIES * 3)
    whole, _, _ = run_runner(tmp_path, _card(root), ColourModel(), batch_size=12)
    monkeypatch.setattr(retrieval, "SCORE_CHUNK", 2)
    blocked, _, _ = run_runner(tmp_path, _card(root), ColourModel(), batch_size=5)
    assert blocked.samples == whole.samples and blocked.metrics == whole.metrics


def test_limit_ranks_within_the_first_images(tmp_path):
    root = write_karpathy(tmp_path / "ds", ENTRIES)
    output, _, _ = run_runner(tmp_path, _card(root), ColourModel(), limit=2)
    # Without the second red image and the green one, nothing ties: everything is found first.
    assert [s["rank"] for s in output.samples] == [1, 1, 1, 2, 1]
    assert output.metrics["i2t_r1"] == 1.0 and output.metrics["t2i_r1"] == pytest.approx(2 / 3)
