"""Detection end to end on a small SynthScenes tree: fit, evaluate, cache reuse, LVIS protocol, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli

from sparc_eval.metrics.detection import coco_box_metrics, lvis_box_metrics
from sparc_eval.results.record import load_samples
from sparc_eval.tasks.detection import DetectionRunner, Params

SPLIT_FILE = "coco/annotations/instances_{}.json"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    from sparc_eval.models.checkpoint import save_checkpoint
    from sparc_eval.models.sparc import create_model

    torch.manual_seed(0)
    return save_checkpoint(create_model("tiny"), tmp_path_factory.mktemp("ckpt") / "tiny")


def _random_boxes(samples: list[dict], seed: int = 0) -> list[dict]:
    """The same images and ground truth with as many uniformly random boxes, classes and scores per image."""
    rng = np.random.default_rng(seed)
    out = []
    for s in samples:
        k = len(s["detections"]["scores"])
        wh = rng.uniform(2, s["width"] / 2, (k, 2))
        xy = rng.uniform(0, 1, (k, 2)) * (np.array([s["width"], s["height"]]) - wh)
        dets = {
            "boxes": np.concatenate([xy, wh], 1).tolist(),
            "category_ids": rng.integers(1, 37, k).tolist(),
            "scores": rng.uniform(0, 1, k).tolist(),
        }
        out.append({**s, "detections": dets})
    return out


@pytest.mark.slow
def test_tiny_fit_beats_random_boxes_and_a_rerun_reuses_the_heads(tiny_ckpt, synth_root, synth_data_dir, tmp_path, monkeypatch):
    from sparc_eval.evaluation import run_evaluation

    results = tmp_path / "results"
    # Batch 16 on the 96 training images: 30 optimisation steps with the card's 5 epochs.
    first = run_evaluation(str(tiny_ckpt), "synth-det", out=results, data_dir=synth_data_dir, batch_size=16)
    record = first.record
    val = json.loads((synth_root / SPLIT_FILE.format("val")).read_text())
    train = json.loads((synth_root / SPLIT_FILE.format("train")).read_text())
    seen = {a["category_id"] for a in train["annotations"]}
    assert record.info["cache"] == "fitted"
    assert record.info["fit_categories"] == len(seen) and all(
        c["frequency"] != "r" for c in train["categories"] if c["id"] in seen
    )
    assert record.info["query_categories"] == len(val["categories"]) == 36  # evaluation names the unseen rare ones too
    assert record.info["dense_head"] == "local" and record.info["dense_head_path"]
    assert record.n_samples == len(val["images"])

    # The COCO-format results file holds the top-k detections of every image, on known categories.
    detections = json.loads((first.path.parent / record.artifacts["detections"]).read_text())
    assert len(detections) == 100 * len(val["images"])
    assert {d["category_id"] for d in detections} <= {c["id"] for c in val["categories"]}
    # ... and pycocotools on the original annotation file gives the recorded numbers.
    metrics = record.metric_values()
    assert coco_box_metrics(val, detections) == pytest.approx(metrics)

    samples = load_samples(first.path, record)
    baseline = DetectionRunner.aggregate(_random_boxes(samples), Params())
    assert metrics["AP"] > baseline["AP"]
    assert metrics["AP50"] > baseline["AP50"]
    rare_in_val = any(
        c["frequency"] == "r" and any(a["category_id"] == c["id"] for a in val["annotations"]) for c in val["categories"]
    )
    assert (metrics["APr"] is not None) == rare_in_val

    # A rerun loads the fitted heads instead of fitting again.
    import sparc_eval.tasks.detection as detection

    def no_fitting(*args, **kwargs):
        raise AssertionError("fitted again despite a cached head")

    monkeypatch.setattr(detection, "hungarian_match", no_fitting)
    again = run_evaluation(str(tiny_ckpt), "synth-det", out=results, data_dir=synth_data_dir, batch_size=16, force=True)
    assert again.record.info["cache"].startswith("reused ")
    assert again.record.metric_values() == metrics
    assert {k: v for k, v in again.record.info.items() if k != "cache"} == {k: v for k, v in record.info.items() if k != "cache"}


def _synth_card(tmp_path: Path, synth_root: Path, fmt: str, **params) -> Path:
    spec = {"format": fmt, "root": str(synth_root / "images"), "annotation": f"../{SPLIT_FILE.format('{split}')}"}
    card = {
        "name": f"synth-det-{fmt}",
        "version": 1,
        "runner": "detection",
        "dataset": {**spec, "split": "val"},
        "fit_dataset": {**spec, "split": "train"},
        "params": {"templates": "../imagefolder/templates.txt", **params},  # params may override templates
    }
    path = tmp_path / f"synth-det-{fmt}.yaml"
    path.write_text(json.dumps(card))
    return path


@pytest.mark.slow
def test_lvis_protocol_end_to_end_with_held_out_groups(tiny_ckpt, synth_root, tmp_path, monkeypatch):
    from sparc_eval.evaluation import run_evaluation

    card = _synth_card(tmp_path, synth_root, "lvis", protocol="lvis", top_k=50, epochs=1, holdout_frequencies=["c"])
    evaluation = run_evaluation(str(tiny_ckpt), card, out=tmp_path / "results", data_dir=tmp_path)
    record = evaluation.record
    train = json.loads((synth_root / SPLIT_FILE.format("train")).read_text())
    seen = {a["category_id"] for a in train["annotations"]}
    assert record.info["fit_categories"] == sum(c["frequency"] == "f" and c["id"] in seen for c in train["categories"])
    assert "federated" in record.info["evaluator"]
    # The official LVIS evaluation on the original annotation file gives the recorded numbers.
    detections = json.loads((evaluation.path.parent / record.artifacts["detections"]).read_text())
    official = lvis_box_metrics(json.loads((synth_root / SPLIT_FILE.format("val")).read_text()), detections)
    assert official == pytest.approx(record.metric_values())
    samples = load_samples(evaluation.path, record)
    assert "neg_category_ids" in samples[0]
    # ... and so does the lvis package's own LVISEval, called here directly.
    from lvis import LVIS, LVISEval, LVISResults

    monkeypatch.setattr(np, "float", float, raising=False)  # lvis 0.5.3 still calls np.float
    ground_truth = LVIS(str(synth_root / SPLIT_FILE.format("val")))
    evaluator = LVISEval(ground_truth, LVISResults(ground_truth, detections, max_dets=300), "bbox")
    evaluator.run()
    for ours, theirs in (("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"), ("APr", "APr"), ("APc", "APc"), ("APf", "APf")):
        value = float(evaluator.results[theirs])
        assert record.metric_values()[ours] == (None if value < 0 else pytest.approx(value, abs=1e-12)), ours


def _broken_tree(tmp_path: Path, synth_root: Path, break_annotation) -> Path:
    """A copy of the small tree's annotation files (images linked) with one training annotation broken."""
    root = tmp_path / "tree"
    (root / "coco" / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    for image in (synth_root / "images").iterdir():  # real folders: '..' from a linked folder leads back to synth_root
        (root / "images" / image.name).symlink_to(image)
    (root / "imagefolder").symlink_to(synth_root / "imagefolder", target_is_directory=True)
    for split in ("train", "val"):
        data = json.loads((synth_root / SPLIT_FILE.format(split)).read_text())
        if split == "train":
            break_annotation(data["annotations"][3])
        (root / SPLIT_FILE.format(split)).write_text(json.dumps(data))
    return root


@pytest.mark.parametrize(
    "break_annotation, needles",
    [
        (lambda a: a.update(bbox=[1.0, 2.0, -3.0, 4.0]), ("bbox [1.0, 2.0, -3.0, 4.0]", "negative width")),
        (lambda a: a.update(category_id=99), ("category_id 99", "outside the listed categories")),
    ],
    ids=["negative-width", "unknown-category"],
)
def test_bad_annotation_is_one_line_naming_it(tiny_ckpt, synth_root, tmp_path, break_annotation, needles):
    tree = _broken_tree(tmp_path, synth_root, break_annotation)
    broken_id = json.loads((tree / SPLIT_FILE.format("train")).read_text())["annotations"][3]["id"]
    card = _synth_card(tmp_path, tree, "coco-instances", epochs=1)
    out = tmp_path / "results"
    result = run_cli("run", "--task", card, "--ckpt", tiny_ckpt, "--out", out, "--data-dir", tmp_path)
    assert_one_line_error(result, f"annotation {broken_id}", "instances_train.json", *needles)
    assert not list(out.rglob("*.record.json")) and not list(out.rglob("*.safetensors"))


@pytest.mark.slow
def test_fine_tuning_trains_the_image_side_at_its_rate_and_caches_the_backbone(synth_root, tmp_path):
    from sparc_eval.models.sparc import create_model
    from sparc_eval.tasks.card import load_card, validate_params
    from sparc_eval.tasks.runner import RunContext, get_runner

    card = load_card(
        _synth_card(
            tmp_path,
            synth_root,
            "coco-instances",
            epochs=1,
            train_backbone=True,
            backbone_lr=1e-3,
            text_lr=0.0,
            templates="simple",
        )
    )
    runner_cls = get_runner(card.runner)
    params = validate_params(runner_cls.Params, card.params, card)
    ctx = RunContext(
        device=torch.device("cpu"),
        batch_size=64,
        precision="fp32",
        limit=8,
        num_workers=0,
        seed=0,
        data_dir=tmp_path,
        work_dir=tmp_path / "out",
        record_stem="det",
        cache_dir=tmp_path / "cache",
    )
    torch.manual_seed(0)
    model = create_model("tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runner_cls(card, params, ctx).fit(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("visual.") for k in changed) and "g_v.weight" in changed
    assert not any(k.startswith("text.") or k == "g_t.weight" for k in changed)  # text side at text_lr = 0

    # A rerun restores the fine-tuned weights into a fresh copy of the checkpoint, then evaluates with them.
    torch.manual_seed(0)
    fresh = create_model("tiny")
    rerun = runner_cls(card, params, ctx)
    rerun.fit(fresh)
    assert rerun.fit_info["cache"].startswith("reused ")
    assert all(torch.equal(v, after[k]) for k, v in fresh.state_dict().items())
    with torch.inference_mode():
        output = rerun.evaluate(fresh)
    assert output.n_samples == 8 and output.info["train_backbone"] is True
