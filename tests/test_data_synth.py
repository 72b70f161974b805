"""SynthScenes: determinism, the exact layout, and agreement between the formats it writes."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from sparc_eval.data import synth
from sparc_eval.data.manifest import check_tree
from sparc_eval.data.synth import generate_synthscenes

SPLITS = ("train", "val", "test")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _json(path: Path):
    return json.loads(path.read_text())


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    a = generate_synthscenes(tmp_path / "a", seed=3, n_train=24, n_val=8, workers=1)
    generate_synthscenes(tmp_path / "b", seed=3, n_train=24, n_val=8, workers=1)
    generate_synthscenes(tmp_path / "c", seed=3, n_train=24, n_val=8, workers=2)
    generate_synthscenes(tmp_path / "d", seed=4, n_train=24, n_val=8, workers=2)
    md5 = {k: _md5(tmp_path / k / "MANIFEST.json") for k in "abcd"}
    assert md5["a"] == md5["b"] == md5["c"] != md5["d"]
    assert a["images"] == 40 and a["files"] == len(_json(tmp_path / "a" / "MANIFEST.json")["files"]) + 1
    assert a["images_per_s"] > 0 and a["seconds"] > 0


def test_manifest_lists_every_file_with_its_md5(synth_root):
    manifest = _json(synth_root / "MANIFEST.json")
    assert manifest["generator"] == "synthscenes" and manifest["generator_version"] == synth.GENERATOR_VERSION
    assert (manifest["seed"], manifest["n_train"], manifest["n_val"], manifest["n_test"], manifest["image_size"]) == (
        0,
        96,
        32,
        32,
        64,
    )
    assert len(manifest["shapes"]) >= 6 and len(manifest["colours"]) >= 6 and manifest["sizes"] == ["small", "large"]
    on_disk = {p.relative_to(synth_root).as_posix() for p in synth_root.rglob("*") if p.is_file()} - {"MANIFEST.json"}
    assert set(manifest["files"]) == on_disk
    for rel in list(manifest["files"])[::37]:
        assert _md5(synth_root / rel) == manifest["files"][rel]
    assert check_tree(synth_root).ok


def test_scenes_layout_and_caption_mentions(synth_root):
    images = _json(synth_root / "scenes.json")["images"]
    assert [img["image_id"] for img in images] == list(range(1, 161))
    assert Counter(img["split"] for img in images) == {"train": 96, "val": 32, "test": 32}
    n_objects = Counter()
    for img in images:
        assert img["file_name"] == f"images/{img['image_id']:06d}.png" and (synth_root / img["file_name"]).is_file()
        assert 1 <= len(img["objects"]) <= 4
        n_objects[len(img["objects"])] += 1
        ids = {o["instance_id"] for o in img["objects"]}
        assert len(img["captions"]) == 5 and len({c["text"] for c in img["captions"]}) == 5
        for cap in img["captions"]:
            kinds = set()
            for m in cap["mentions"]:
                assert cap["text"][m["start"] : m["end"]] == m["word"]
                assert set(m["instance_ids"]) <= ids and m["instance_ids"]
                kinds.add(m["kind"])
                objs = [o for o in img["objects"] if o["instance_id"] in m["instance_ids"]]
                if m["kind"] == "colour":
                    assert all(o["colour"] == m["word"] for o in objs)
                if m["kind"] == "shape":
                    assert all(m["word"].startswith(o["shape"]) for o in objs)
                if m["kind"] == "size":
                    assert all(o["size"] == m["word"] for o in objs)
            assert {"colour", "shape"} <= kinds
    assert set(n_objects) == {1, 2, 3, 4}


def test_captions_are_distinctive(synth_root):
    """FINDINGS.md: a quarter of images shared their object set; captions must tell scenes apart."""
    images = _json(synth_root / "scenes.json")["images"]
    caption_sets = Counter(frozenset(c["text"].rstrip(".") for c in img["captions"]) for img in images)
    assert max(caption_sets.values()) == 1
    texts = Counter(c["text"].rstrip(".") for img in images for c in img["captions"])
    assert sum(n for n in texts.values() if n > 1) / sum(texts.values()) < 0.05
    words = " ".join(c["text"] for img in images for c in img["captions"])
    for phrase in ("left", "top", "two ", "largest", "of a"):
        assert phrase in words


def test_coco_instances_load_and_boxes_match_masks(synth_root):
    scenes = {img["image_id"]: img for img in _json(synth_root / "scenes.json")["images"]}
    for split in SPLITS:
        coco = COCO(str(synth_root / f"coco/annotations/instances_{split}.json"))
        assert len(coco.getCatIds()) == 36
        for ann in coco.loadAnns(coco.getAnnIds()):
            assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
            mask = coco.annToMask(ann)
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["area"] == mask.sum() == mask_utils.area(ann["segmentation"])
            assert list(mask_utils.toBbox(ann["segmentation"])) == ann["bbox"]
        for img in coco.loadImgs(coco.getImgIds()):
            assert (synth_root / "images" / img["file_name"]).is_file()
            assert scenes[img["id"]]["split"] == split
            objects = {o["instance_id"]: o for o in scenes[img["id"]]["objects"]}
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
            assert {a["id"]: (a["bbox"], a["area"], a["category_id"]) for a in anns} == {
                i: (o["bbox"], o["area"], o["category_id"]) for i, o in objects.items()
            }
        caps = COCO(str(synth_root / f"coco/annotations/captions_{split}.json"))
        assert len(caps.getAnnIds()) == 5 * len(caps.getImgIds())


def test_masks_are_disjoint_and_match_the_pixels(synth_root):
    """Each visible pixel belongs to at most one instance, and that instance's colour is what the pixel shows."""
    coco = COCO(str(synth_root / "coco/annotations/instances_val.json"))
    colours = np.array(list(synth.COLOURS.values()), np.float32)
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = np.asarray(Image.open(synth_root / "images" / img["file_name"]).convert("RGB"), np.float32)
        masks = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))]
        assert np.stack(masks).sum(0).max() == 1
        for ann, mask in zip(coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])), masks):
            colour = coco.cats[ann["category_id"]]["name"].split()[0]
            inner = mask.astype(bool)
            mean = pixels[inner].mean(0)
            assert np.argmin(((colours - mean) ** 2).sum(1)) == list(synth.COLOURS).index(colour)


def test_voc_masks_agree_with_instance_masks(synth_root):
    voc = synth_root / "VOCdevkit/SynthScenes"
    assert (voc / "classnames.txt").read_text().split("\n")[:7] == ["background", *synth.SHAPES]
    scenes = {img["image_id"]: img for img in _json(synth_root / "scenes.json")["images"]}
    for split in ("train", "val"):
        ids = (voc / f"ImageSets/Segmentation/{split}.txt").read_text().split()
        assert ids == [f"{i:06d}" for i, img in scenes.items() if img["split"] == split]
        coco = COCO(str(synth_root / f"coco/annotations/instances_{split}.json"))
        for stem in ids:
            png = Image.open(voc / f"SegmentationClass/{stem}.png")
            assert png.mode == "P" and png.size == (64, 64)
            label = np.asarray(png)
            assert Image.open(voc / f"JPEGImages/{stem}.jpg").size == (64, 64)
            expected = np.zeros((64, 64), np.uint8)
            for ann in sorted(coco.loadAnns(coco.getAnnIds(imgIds=[int(stem)])), key=lambda a: a["id"]):
                expected[coco.annToMask(ann).astype(bool)] = (
                    synth.SHAPES.index(coco.cats[ann["category_id"]]["supercategory"]) + 1
                )
            keep = label != 255
            assert (label[keep] == expected[keep]).all()
            assert set(np.unique(label)) <= set(range(7)) | {255}
            # the ignore ring is one pixel wide around each object: every 255 pixel touches an object's edge
            assert 0 < (~keep).sum() < 0.5 * 64 * 64


def test_rare_categories_never_in_train(synth_root):
    for split in SPLITS:
        data = _json(synth_root / f"coco/annotations/instances_{split}.json")
        rare = {c["id"] for c in data["categories"] if c["frequency"] == "r"}
        assert len(rare) == 6
        assert {c["supercategory"] for c in data["categories"] if c["id"] in rare} == set(synth.SHAPES)
        assert {c["name"].split()[0] for c in data["categories"] if c["id"] in rare} == set(synth.COLOURS)
        assert {c["frequency"] for c in data["categories"]} == {"r", "c", "f"}
        used = {a["category_id"] for a in data["annotations"]}
        assert not (used & rare) if split == "train" else used & rare
        for img in data["images"]:
            present = {a["category_id"] for a in data["annotations"] if a["image_id"] == img["id"]}
            assert set(img["neg_category_ids"]) == set(range(1, 37)) - present and img["not_exhaustive_category_ids"] == []
    imagefolder_train = {p.name for p in (synth_root / "imagefolder/train").iterdir()}
    assert not imagefolder_train & {n.replace(" ", "_") for n in (f"{c} {s}" for s, c in synth.RARE)}


def test_karpathy_imagefolder_and_pairs_layout(synth_root):
    kp = _json(synth_root / "karpathy/dataset_synthscenes.json")
    assert kp["dataset"] == "synthscenes" and len(kp["images"]) == 160
    sentids = [s for img in kp["images"] for s in img["sentids"]]
    assert sentids == list(range(len(sentids)))
    first = kp["images"][0]
    assert (first["filepath"], first["filename"], first["cocoid"], first["split"]) == ("images", "000001.png", 1, "train")
    assert first["sentences"][0]["tokens"] == [
        t.strip(".,:") for t in first["sentences"][0]["raw"].replace(",", " ").split() if t.strip(".,:-")
    ]

    names = (synth_root / "imagefolder/classnames.txt").read_text().splitlines()
    assert len(names) == 36 and names[0] == "red circle"
    assert "{}" in (synth_root / "imagefolder/templates.txt").read_text()
    scenes = {img["image_id"]: img for img in _json(synth_root / "scenes.json")["images"]}
    for split in ("train", "val"):
        files = sorted((synth_root / "imagefolder" / split).glob("*/*.png"))
        assert len(files) == sum(img["split"] == split for img in scenes.values())
        for path in files:
            largest = max(scenes[int(path.stem)]["objects"], key=lambda o: o["area"])
            assert path.parent.name == f"{largest['colour']}_{largest['shape']}"
            assert path.read_bytes() == (synth_root / "images" / path.name).read_bytes()
        rows = [json.loads(line) for line in (synth_root / f"pairs/{split}.jsonl").read_text().splitlines()]
        assert len(rows) == 5 * len(files)
        assert all((synth_root / "pairs" / r["image"]).is_file() for r in rows)
        import csv

        with open(synth_root / f"pairs/{split}.csv", newline="") as f:
            assert list(csv.DictReader(f)) == rows


def test_antialiased_edges(synth_root):
    """Drawn at 4x and box-filtered: a mask's edge pixels are blends, further from the object's colour than its interior."""
    coco = COCO(str(synth_root / "coco/annotations/instances_train.json"))
    edge_spread, inner_spread = [], []
    for ann in coco.loadAnns(coco.getAnnIds()):
        pixels = np.asarray(
            Image.open(synth_root / "images" / coco.imgs[ann["image_id"]]["file_name"]).convert("RGB"), np.float32
        )
        mask = coco.annToMask(ann).astype(bool)
        inner = np.zeros_like(mask)
        inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
        if inner.sum() >= 5:
            colour = np.median(pixels[inner], 0)
            edge_spread.append(np.linalg.norm(pixels[mask & ~inner] - colour, axis=1).mean())
            inner_spread.append(np.linalg.norm(pixels[inner] - colour, axis=1).mean())
    assert np.mean(np.array(edge_spread) > 1.5 * np.array(inner_spread)) > 0.8


def test_replaces_only_synthscenes_trees_and_only_with_force(tmp_path):
    out = tmp_path / "tree"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ("data", "synth", "--out", out, "--n-train", "4", "--n-val", "2", "--workers", "1")
    assert_one_line_error(run_cli(*args), str(out), "--force")
    assert_one_line_error(run_cli(*args, "--force"), str(out), "not a SynthScenes tree")
    assert (out / "keep.txt").read_text() == "mine"
    out = tmp_path / "synth"
    generate_synthscenes(out, n_train=2, n_val=1, workers=1)
    assert_one_line_error(run_cli(*args[:3], out, *args[4:]), "--force")
    assert run_cli(*args[:3], out, *args[4:], "--force").code == 0
    assert _json(out / "MANIFEST.json")["n_train"] == 4 and check_tree(out).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth", "tree"]  # no temporary folder left behind


def test_data_check_detects_corruption(synth_root, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(synth_root, tree)
    ok = run_cli("data", "check", tree)
    assert ok.code == 0, ok.stderr
    assert "coco" in ok.stdout and "voc" in ok.stdout and "ok" in ok.stdout

    jpg = tree / "VOCdevkit/SynthScenes/JPEGImages/000005.jpg"
    jpg.write_bytes(jpg.read_bytes()[:100])
    assert_one_line_error(run_cli("data", "check", tree), "000005.jpg", "md5")

    manifest = _json(tree / "MANIFEST.json")
    manifest["files"]["VOCdevkit/SynthScenes/JPEGImages/000005.jpg"] = _md5(jpg)
    (tree / "MANIFEST.json").write_text(json.dumps(manifest))
    assert_one_line_error(run_cli("data", "check", tree), "000005.jpg", "does not decode")

    (tree / "images/000007.png").unlink()
    report = check_tree(tree)
    assert not report.ok and any("000007.png" in p and "missing" in p for p in report.problems)

    assert_one_line_error(run_cli("data", "check", tmp_path / "nowhere"), "MANIFEST.json")


def test_data_check_detects_dangling_annotation(synth_root, tmp_path):
    """A consistent manifest whose annotations point at an image that is not there."""
    tree = tmp_path / "tree"
    shutil.copytree(synth_root, tree)
    path = tree / "pairs/val.jsonl"
    path.write_text(path.read_text() + json.dumps({"image": "../images/999999.png", "caption": "a ghost"}) + "\n")
    manifest = _json(tree / "MANIFEST.json")
    manifest["files"]["pairs/val.jsonl"] = _md5(path)
    (tree / "MANIFEST.json").write_text(json.dumps(manifest))
    assert_one_line_error(run_cli("data", "check", tree), "999999.png", "val.jsonl")


@pytest.mark.parametrize("size", [32, 96])
def test_other_image_sizes(tmp_path, size):
    generate_synthscenes(tmp_path / "t", seed=1, n_train=6, n_val=2, image_size=size, workers=1)
    assert Image.open(tmp_path / "t/images/000001.png").size == (size, size)
    assert check_tree(tmp_path / "t").ok
