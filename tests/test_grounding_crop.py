"""Grounding on real COCO data: a mention whose object lies wholly outside the model's centre crop is not scored,
nor one whose category has only crowd regions; crowd regions never enter a word's target; both are counted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from sparc_eval.evaluation import run_evaluation

W, H = 96, 32  # the tiny model resizes the short side to 64 (image 192x64) and keeps the centre 64x64: x in [32, 64)


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}


def _box(x0: int, x1: int, y0: int = 8, y1: int = 24) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


# (annotation id, category id, mask, iscrowd)
OBJECTS = [
    (1, 1, _box(0, 20), 0),  # cat: wholly left of the crop -> outside_crop
    (2, 2, _box(40, 56), 0),  # person: inside the crop
    (3, 2, _box(60, 96), 1),  # person crowd region: never part of the person target
    (4, 3, _box(36, 60), 1),  # dog: a crowd region only -> crowd_only
    (5, 4, _box(28, 34), 0),  # bird: two of its six columns inside the crop -> scored
]
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "person"}, {"id": 3, "name": "dog"}, {"id": 4, "name": "bird"}]
CAPTION = "a cat and a person with a dog near a bird"


def _tree(root: Path) -> Path:
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "val2017" / "000000000001.jpg")
    anns = [
        {
            "id": i,
            "image_id": 1,
            "category_id": c,
            "bbox": [float(np.where(m.any(0))[0][0]), 8.0, float(m.any(0).sum()), 16.0],
            "area": float(m.sum()),
            "segmentation": _rle(m),
            "iscrowd": crowd,
        }
        for i, c, m, crowd in OBJECTS
    ]
    image = {"id": 1, "file_name": "000000000001.jpg", "width": W, "height": H}
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": [image], "annotations": anns, "categories": CATEGORIES})
    )
    captions = {"images": [image], "annotations": [{"id": 1, "image_id": 1, "caption": CAPTION}]}
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(captions))
    return root


def test_outside_crop_and_crowd_mentions_are_excluded_and_counted(tiny_sparc_ckpt, tmp_path):
    data = tmp_path / "data"
    _tree(data / "coco")
    evaluation = run_evaluation(str(tiny_sparc_ckpt), "coco-grounding", out=tmp_path / "out", data_dir=data)
    info = evaluation.record.info["mentions"]
    assert info["mentions"] == 4  # cat, person, dog, bird are matched in the caption
    assert (info["outside_crop"], info["crowd_only"], info["scored"]) == (1, 1, 2)
    samples = [json.loads(line) for line in Path(evaluation.path.parent, evaluation.record.samples_file).read_text().splitlines()]
    words = {w["word"]: w for s in samples for w in s["words"]}
    assert sorted(words) == ["bird", "person"]
    assert words["person"]["instance_ids"] == [2]  # the crowd region 3 is not a target
    # The bird covers columns 28..33 of the original; only 32..33 survive the crop, so some patch sees it.
    assert words["bird"]["area_share"] > 0
