"""`sparc-eval viz align` and `viz seg` on the session's SynthScenes tree with tiny checkpoints: the files
appear, the per-token summary names the right objects, the segmentation panels show the runner's own
predictions, and bad input fails on one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error
from PIL import Image
from test_segmentation import cli

from sparc_eval.metrics.segmentation import Areas, segmentation_scores


@pytest.fixture(scope="module")
def clip_ckpt(tmp_path_factory) -> Path:
    from sparc_eval.models.checkpoint import save_checkpoint
    from sparc_eval.models.objectives import build_objective
    from sparc_eval.models.sparc import create_model

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-clip"
    return save_checkpoint(create_model("tiny"), folder, objective=build_objective("clip").describe())


@pytest.fixture(scope="module")
def scene(synth_root) -> dict:
    """The first val image of the tree: its scenes.json record."""
    images = json.loads((synth_root / "scenes.json").read_text())["images"]
    return next(r for r in images if r["split"] == "val")


def _align(ckpt, image, caption, out, *extra) -> dict:
    result = cli("viz", "align", "--ckpt", ckpt, "--image", image, "--caption", caption, "--out", out, "--json", *extra)
    assert result.code == 0, result.stderr
    with Image.open(out) as png:
        assert png.format == "PNG" and min(png.size) > 200
    return json.loads(result.stdout)


def test_align_outlines_the_caption_mentions(tiny_sparc_ckpt, synth_root, scene, tmp_path):
    caption = scene["captions"][0]
    summary = _align(tiny_sparc_ckpt, synth_root / scene["file_name"], caption["text"], tmp_path / "a.png")
    assert summary["method"].startswith("SPARC alignment weights (sparse, 1/P threshold)") and summary["head"] == "local"
    assert summary["ground_truth"] == "the caption's mentions"
    by_start = {m["start"]: m for m in caption["mentions"]}
    for entry in summary["tokens"]:
        start, end = entry["span"]
        assert entry["word"] == caption["text"][start:end] and entry["token"] in entry["word"].lower()
        mention = by_start.get(start)
        assert entry["instance_ids"] == (sorted(mention["instance_ids"]) if mention else []), entry
    described = [t for t in summary["tokens"] if t["instance_ids"]]
    assert len({tuple(t["span"]) for t in described}) == len(caption["mentions"])
    areas = {o["instance_id"]: o["area"] for o in scene["objects"]}
    for entry in described:
        assert 0.0 <= entry["mass"] <= 1.0 and 0.0 <= entry["hit"] <= 1.0
        # 64 px images, 8x8 patches: the chance level of the mass is the outline's share of the image.
        assert entry["mass_chance"] == pytest.approx(sum(areas[i] for i in entry["instance_ids"]) / 64**2)


def test_align_matches_words_when_the_caption_is_new(tiny_sparc_ckpt, synth_root, scene, tmp_path):
    obj = scene["objects"][0]
    summary = _align(tiny_sparc_ckpt, synth_root / scene["file_name"], f"look, {obj['colour']} things", tmp_path / "w.png")
    assert summary["ground_truth"] == "colour / shape / size words matched to the objects"
    same_colour = sorted(o["instance_id"] for o in scene["objects"] if o["colour"] == obj["colour"])
    assert [t["instance_ids"] for t in summary["tokens"] if t["word"] == obj["colour"]] == [same_colour]
    assert all(t["instance_ids"] == [] for t in summary["tokens"] if t["word"] != obj["colour"])


def test_align_non_sparc_model_says_softmax(clip_ckpt, synth_root, scene, tmp_path):
    summary = _align(clip_ckpt, synth_root / scene["file_name"], "a red circle", tmp_path / "c.png", "--head", "global")
    assert "softmax" in summary["method"] and "not SPARC" in summary["method"] and summary["head"] == "global"


def test_align_outside_synthscenes_has_no_outlines(tiny_sparc_ckpt, synth_root, scene, tmp_path):
    image = tmp_path / "photo.png"
    shutil.copy(synth_root / scene["file_name"], image)
    summary = _align(tiny_sparc_ckpt, image, scene["captions"][0]["text"], tmp_path / "o.png")
    assert summary["ground_truth"] is None and all(t["instance_ids"] == [] for t in summary["tokens"])


def test_align_bad_input(tiny_sparc_ckpt, synth_root, scene, tmp_path):
    out = tmp_path / "x.png"
    missing = tmp_path / "nope.png"
    assert_one_line_error(
        cli("viz", "align", "--ckpt", tiny_sparc_ckpt, "--image", missing, "--caption", "a", "--out", out), str(missing)
    )
    image = synth_root / scene["file_name"]
    assert_one_line_error(
        cli("viz", "align", "--ckpt", tiny_sparc_ckpt, "--image", image, "--caption", "a", "--out", out, "--head", "mid"), "mid"
    )
    assert not out.exists()


def test_seg_panels_show_the_runner_predictions(tiny_sparc_ckpt, synth_data_dir, tmp_path):
    from sparc_eval.evaluation import run_evaluation
    from sparc_eval.results.record import load_samples
    from sparc_eval.viz.seg import render_segmentation

    rows = render_segmentation(str(tiny_sparc_ckpt), "synth-seg", 2, tmp_path / "pics", data_dir=synth_data_dir)
    assert [Path(r["out"]).name for r in rows] == ["synth-seg-000097.png", "synth-seg-000098.png"]
    for row in rows:
        with Image.open(row["out"]) as png:
            assert png.format == "PNG"
    # The panels' predictions are the run's: each image's mIoU equals the one its per-sample record implies.
    evaluation = run_evaluation(str(tiny_sparc_ckpt), "synth-seg", out=tmp_path / "results", data_dir=synth_data_dir, limit=2)
    for row, sample in zip(rows, load_samples(evaluation.path, evaluation.record)):
        miou = segmentation_scores(Areas.from_counts(sample["intersect"], sample["union"], sample["label_area"])).miou
        assert row["image_miou"] == pytest.approx(100 * miou)


def test_seg_cli_and_its_errors(tiny_sparc_ckpt, synth_data_dir, tmp_path):
    out = tmp_path / "pics"
    result = cli(
        "viz", "seg", "--ckpt", tiny_sparc_ckpt, "--task", "synth-seg", "--n", "1", "--out", out, "--data-dir", synth_data_dir
    )
    assert result.code == 0, result.stderr
    assert [p.name for p in out.iterdir()] == ["synth-seg-000097.png"]
    assert_one_line_error(
        cli("viz", "seg", "--ckpt", tiny_sparc_ckpt, "--task", "synth-cls", "--out", out, "--data-dir", synth_data_dir),
        "synth-cls",
        "segmentation",
    )
    assert_one_line_error(cli("viz", "seg", "--ckpt", tiny_sparc_ckpt, "--task", "synth-seg", "--n", "0", "--out", out), "--n")
