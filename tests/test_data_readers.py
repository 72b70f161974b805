"""Every reader on the SynthScenes tree and on tiny hand-written trees in the real layouts (with their quirks),
and every bad-input case through the CLI as one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli
from PIL import Image

from sparc_eval.data.registry import open_dataset
from sparc_eval.data.voc import CONTEXT59_CLASSES, VOC_CLASSES
from sparc_eval.errors import SparcEvalError

# ------------------------------------------------------------------------------- real-layout fixtures


def _jpg(path: Path, w: int, h: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's iscrowd=1 form: run lengths over the column-major flattening, starting with a run of zeros."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for px in flat:
        if px != value:
            counts.append(run)
            value, run = px, 0
        run += 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


CROWD = np.zeros((30, 40), np.uint8)
CROWD[15:25, 20:31] = 1


def build_real(root: Path) -> Path:
    """COCO 2017, Karpathy COCO + Flickr30k, LVIS v1, VOC2012, Pascal Context (mmseg), ImageNet-style folder, pairs."""
    coco = root / "coco"
    _jpg(coco / "val2017/000000000139.jpg", 40, 30, 1)
    _jpg(coco / "val2017/000000000285.jpg", 32, 48, 2)
    _jpg(coco / "train2017/000000000285.jpg", 32, 48, 2)  # LVIS v1 val names it under train2017 (its coco_url)
    images = [
        {
            "license": 2,
            "file_name": "000000000139.jpg",
            "coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg",
            "height": 30,
            "width": 40,
            "date_captured": "2013-11-21 01:34:01",
            "id": 139,
        },
        {
            "license": 1,
            "file_name": "000000000285.jpg",
            "coco_url": "http://images.cocodataset.org/val2017/000000000285.jpg",
            "height": 48,
            "width": 32,
            "date_captured": "2013-11-18 22:48:05",
            "id": 285,
        },
    ]
    categories = [{"supercategory": "person", "id": 1, "name": "person"}, {"supercategory": "animal", "id": 18, "name": "dog"}]
    _dump(
        coco / "annotations/instances_val2017.json",
        {
            "info": {"year": 2017},
            "licenses": [],
            "images": images,
            "categories": categories,
            "annotations": [
                {
                    "segmentation": [[2.0, 3.0, 12.0, 3.0, 12.0, 11.0, 2.0, 11.0]],
                    "area": 80.0,
                    "iscrowd": 0,
                    "image_id": 139,
                    "bbox": [2.0, 3.0, 10.0, 8.0],
                    "category_id": 1,
                    "id": 1,
                },
                {
                    "segmentation": _uncompressed_rle(CROWD),
                    "area": 110.0,
                    "iscrowd": 1,
                    "image_id": 139,
                    "bbox": [20.0, 15.0, 11.0, 10.0],
                    "category_id": 18,
                    "id": 900100000139,
                },
            ],
        },
    )
    _dump(
        coco / "annotations/captions_val2017.json",
        {
            "info": {},
            "licenses": [],
            "images": images,
            "annotations": [
                {"image_id": 139, "id": 1, "caption": "A woman stands in the kitchen. "},
                {"image_id": 139, "id": 2, "caption": "A dog by a table."},
                {"image_id": 285, "id": 3, "caption": "A big brown bear.\n"},
            ],
        },
    )
    # Karpathy COCO: filepath per image, splits train / restval / val / test, raw captions with trailing space
    _jpg(coco / "train2014/COCO_train2014_000000000009.jpg", 20, 20, 3)
    _jpg(coco / "val2014/COCO_val2014_000000000042.jpg", 20, 20, 4)
    _jpg(coco / "val2014/COCO_val2014_000000000073.jpg", 20, 20, 5)
    _jpg(coco / "val2014/COCO_val2014_000000000074.jpg", 20, 20, 6)

    def entry(i, fp, name, split, cocoid, n=5):
        sents = [{"tokens": ["a", "cat"], "raw": f"A cat number {k}. ", "imgid": i, "sentid": i * 10 + k} for k in range(n)]
        return {
            "filepath": fp,
            "sentids": [s["sentid"] for s in sents],
            "filename": name,
            "imgid": i,
            "split": split,
            "sentences": sents,
            "cocoid": cocoid,
        }

    _dump(
        coco / "dataset_coco.json",
        {
            "dataset": "coco",
            "images": [
                entry(0, "train2014", "COCO_train2014_000000000009.jpg", "train", 9),
                entry(1, "val2014", "COCO_val2014_000000000042.jpg", "restval", 42, n=6),
                entry(2, "val2014", "COCO_val2014_000000000073.jpg", "val", 73),
                entry(3, "val2014", "COCO_val2014_000000000074.jpg", "test", 74),
            ],
        },
    )
    # Karpathy Flickr30k: no filepath, images in flickr30k-images/
    flickr = root / "flickr30k"
    _jpg(flickr / "flickr30k-images/1000092795.jpg", 24, 16, 7)
    _jpg(flickr / "flickr30k-images/10002456.jpg", 24, 16, 8)
    _dump(
        flickr / "dataset_flickr30k.json",
        {
            "dataset": "flickr30k",
            "images": [
                {
                    "sentids": [0, 1],
                    "imgid": 0,
                    "sentences": [
                        {"tokens": ["two", "men"], "raw": "Two young guys with shaggy hair.", "imgid": 0, "sentid": 0},
                        {"tokens": ["two", "men"], "raw": "Two friends enjoy time outside.", "imgid": 0, "sentid": 1},
                    ],
                    "split": "test",
                    "filename": "1000092795.jpg",
                },
                {
                    "sentids": [2],
                    "imgid": 1,
                    "sentences": [{"tokens": ["workers"], "raw": "Several men in hard hats.", "imgid": 1, "sentid": 2}],
                    "split": "train",
                    "filename": "10002456.jpg",
                },
            ],
        },
    )
    # LVIS v1: coco_url only, federated neg / not-exhaustive ids, polygons, no iscrowd, category frequency
    _dump(
        root / "lvis/lvis_v1_val.json",
        {
            "info": {},
            "licenses": [],
            "images": [
                {
                    "date_captured": "2013-11-21",
                    "neg_category_ids": [3],
                    "id": 139,
                    "license": 2,
                    "height": 30,
                    "width": 40,
                    "flickr_url": "http://farm9.staticflickr.com/x.jpg",
                    "coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg",
                    "not_exhaustive_category_ids": [2],
                },
                {
                    "date_captured": "2013-11-18",
                    "neg_category_ids": [],
                    "id": 285,
                    "license": 1,
                    "height": 48,
                    "width": 32,
                    "coco_url": "http://images.cocodataset.org/train2017/000000000285.jpg",
                    "not_exhaustive_category_ids": [],
                },
            ],
            "annotations": [
                {
                    "area": 80.0,
                    "id": 1,
                    "segmentation": [[2.0, 3.0, 12.0, 3.0, 12.0, 11.0, 2.0, 11.0]],
                    "image_id": 139,
                    "bbox": [2.0, 3.0, 10.0, 8.0],
                    "category_id": 1,
                },
                {
                    "area": 50.0,
                    "id": 2,
                    "segmentation": [[5.0, 5.0, 15.0, 5.0, 15.0, 10.0, 5.0, 10.0]],
                    "image_id": 285,
                    "bbox": [5.0, 5.0, 10.0, 5.0],
                    "category_id": 2,
                },
            ],
            "categories": [
                {
                    "frequency": "f",
                    "id": 1,
                    "synset": "aerosol.n.02",
                    "synonyms": ["aerosol_can"],
                    "def": "a can",
                    "name": "aerosol_can",
                    "image_count": 64,
                    "instance_count": 109,
                },
                {
                    "frequency": "c",
                    "id": 2,
                    "synset": "air_conditioner.n.01",
                    "synonyms": ["air_conditioner"],
                    "def": "x",
                    "name": "air_conditioner",
                    "image_count": 50,
                    "instance_count": 70,
                },
                {
                    "frequency": "r",
                    "id": 3,
                    "synset": "armor.n.01",
                    "synonyms": ["armor"],
                    "def": "y",
                    "name": "armor",
                    "image_count": 2,
                    "instance_count": 2,
                },
            ],
        },
    )
    # VOC2012: palette PNG labels with 255 borders
    voc = root / "VOCdevkit/VOC2012"
    for n, stem in enumerate(("2007_000032", "2007_000033")):
        _jpg(voc / f"JPEGImages/{stem}.jpg", 24, 20, 10 + n)
        label = np.zeros((20, 24), np.uint8)
        label[4:12, 4:12], label[3, 3:13], label[12:16, 14:20] = 1, 255, 15
        png = Image.fromarray(label, mode="L").convert("P")
        png.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 3 % 256, i * 5 % 256)])
        (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        png.save(voc / f"SegmentationClass/{stem}.png")
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000032\n2007_000033\n")
    # Pascal Context (mmseg layout): grey PNGs 0..59, 0 = unlabelled
    ctx = root / "VOCdevkit/VOC2010"
    _jpg(ctx / "JPEGImages/2008_000002.jpg", 16, 12, 20)
    label = np.zeros((12, 16), np.uint8)
    label[2:6, 2:6], label[6:10, 8:14] = 1, 59
    (ctx / "SegmentationClassContext").mkdir(parents=True)
    Image.fromarray(label, mode="L").save(ctx / "SegmentationClassContext/2008_000002.png")
    (ctx / "ImageSets/SegmentationContext").mkdir(parents=True)
    (ctx / "ImageSets/SegmentationContext/val.txt").write_text("2008_000002\n")
    # ImageNet-style folder: wnid folders, "wnid<TAB>name" class file, upper-case extension
    inet = root / "imagenet"
    _jpg(inet / "val/n01440764/ILSVRC2012_val_00000293.JPEG", 16, 16, 30)
    _jpg(inet / "val/n01443537/ILSVRC2012_val_00000236.JPEG", 16, 16, 31)
    _jpg(inet / "val/n01443537/ILSVRC2012_val_00000262.JPEG", 16, 16, 32)
    (inet / "classnames.txt").write_text("n01440764\ttench\nn01443537\tgoldfish\nn01484850\tgreat white shark\n")
    # pairs: CSV with commas and quotes in captions and an absolute path; JSONL
    pairs = root / "pairs"
    _jpg(pairs / "img/a.jpg", 8, 8, 40)
    pairs.joinpath("train.csv").write_text(
        'image,caption\nimg/a.jpg,"a dog, running"\n' + f'{pairs / "img/a.jpg"},"she said ""hi"""\n'
    )
    pairs.joinpath("val.jsonl").write_text(json.dumps({"image": "img/a.jpg", "caption": "one"}) + "\n")
    return root


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    return build_real(tmp_path_factory.mktemp("real"))


# ----------------------------------------------------------------------------------- real layouts


def test_coco_instances_real_layout(real):
    ds = open_dataset(
        "coco-instances", real / "coco/val2017", "val2017", annotation="../annotations/instances_{split}.json", masks=True
    )
    assert len(ds) == 2 and ds.image_ids == [139, 285] and [c["name"] for c in ds.categories] == ["person", "dog"]
    item = ds[0]
    assert isinstance(item["image"], Image.Image) and item["image"].mode == "RGB" and item["image"].size == (40, 30)
    assert item["boxes"].dtype == torch.float32 and item["boxes"].tolist() == [[2, 3, 10, 8], [20, 15, 11, 10]]
    assert item["category_ids"].tolist() == [1, 18] and item["iscrowd"].tolist() == [0, 1]
    assert item["masks"].dtype == torch.uint8 and item["masks"].shape == (2, 30, 40)
    assert (item["masks"][1].numpy() == CROWD).all()  # the uncompressed iscrowd RLE decodes exactly
    assert item["masks"][0].sum() > 60
    empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 48, 32)
    assert ds.coco.getImgIds() == [139, 285]


def test_coco_captions_real_layout(real):
    ds = open_dataset(
        "coco-captions", real / "coco/val2017", "val2017", annotation=str(real / "coco/annotations/captions_val2017.json")
    )
    assert [ds[i]["captions"] for i in range(2)] == [
        ["A woman stands in the kitchen.", "A dog by a table."],
        ["A big brown bear."],
    ]
    assert ds[0]["image_id"] == 139 and ds.captions_per_image == 1


def test_karpathy_coco_restval_and_filepath(real):
    train = open_dataset("karpathy", real / "coco", "train", annotation="dataset_coco.json")
    assert [it["image_id"] for it in (train[0], train[1])] == [9, 42]  # restval counts as train
    assert train[1]["path"].endswith("val2014/COCO_val2014_000000000042.jpg") and len(train[1]["captions"]) == 6
    assert train[0]["captions"][0] == "A cat number 0." and train.captions_per_image == 5
    assert [len(open_dataset("karpathy", real / "coco", s, annotation="dataset_coco.json")) for s in ("val", "test")] == [1, 1]


def test_karpathy_flickr_without_filepath(real):
    ds = open_dataset("karpathy", real / "flickr30k", "test", annotation="dataset_flickr30k.json", images_dir="flickr30k-images")
    assert len(ds) == 1 and ds[0]["image_id"] == 0 and ds[0]["captions"][1] == "Two friends enjoy time outside."
    assert ds[0]["path"].endswith("flickr30k-images/1000092795.jpg") and ds.captions_per_image == 2


def test_lvis_real_layout(real):
    ds = open_dataset("lvis", real / "coco", "val", annotation="../lvis/lvis_v1_{split}.json", masks=True)
    assert [c["frequency"] for c in ds.categories] == ["f", "c", "r"]
    item = ds[0]
    assert item["neg_category_ids"] == [3] and item["not_exhaustive_category_ids"] == [2]
    assert item["iscrowd"].tolist() == [0] and item["boxes"].tolist() == [[2, 3, 10, 8]] and item["masks"].shape == (1, 30, 40)
    # each image lies where its coco_url says, in COCO's own train2017/ or val2017/ folder
    assert ds[0]["path"] == str(real / "coco/val2017/000000000139.jpg")
    assert ds[1]["path"] == str(real / "coco/train2017/000000000285.jpg") and ds[1]["category_ids"].tolist() == [2]
    assert ds.lvis_api.get_img_ids() == [139, 285]


def test_voc_palette_labels(real):
    ds = open_dataset("voc", real / "VOCdevkit/VOC2012", "val")
    assert ds.classnames == list(VOC_CLASSES) and len(ds) == 2
    item = ds[0]
    assert Image.open(real / "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png").mode == "P"
    assert item["label"].dtype == torch.long and item["label"].shape == (20, 24)
    assert set(item["label"].unique().tolist()) == {0, 1, 15, 255}  # indices, not palette colours
    assert item["image_id"] == "2007_000032" and item["image"].size == (24, 20)


def test_voc_context_reduce_zero_label(real):
    ds = open_dataset("voc", real / "VOCdevkit/VOC2010", "val", layout="context")
    assert ds.classnames == list(CONTEXT59_CLASSES) and len(ds.classnames) == 59
    label = ds[0]["label"]
    assert label[0, 0] == 255 and label[3, 3] == 0 and label[7, 9] == 58


def test_imagefolder_wnid_classnames(real):
    ds = open_dataset("imagefolder", real / "imagenet", "val")
    assert ds.classnames == ["tench", "goldfish", "great white shark"] and ds.targets == [0, 1, 1]
    assert ds[2]["label"] == 1 and ds[2]["path"].endswith("ILSVRC2012_val_00000262.JPEG")


def test_pairs_csv_quirks_and_jsonl(real):
    ds = open_dataset("pairs", real / "pairs/train.csv", "ignored")
    assert ds.captions == ["a dog, running", 'she said "hi"'] and ds.image_paths[0] == ds.image_paths[1]
    assert ds[1]["caption"] == 'she said "hi"' and ds[1]["image"].size == (8, 8)
    assert open_dataset("pairs", real / "pairs", "val").captions == ["one"]


def test_transform_is_applied(real):
    to_tensor = lambda img: torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255  # noqa: E731
    for fmt, root, split, opts in [
        ("voc", real / "VOCdevkit/VOC2012", "val", {}),
        ("imagefolder", real / "imagenet", "val", {}),
        ("coco-instances", real / "coco/val2017", "val2017", {"annotation": "../annotations/instances_val2017.json"}),
    ]:
        image = open_dataset(fmt, root, split, transform=to_tensor, **opts)[0]["image"]
        assert isinstance(image, torch.Tensor) and image.shape[0] == 3


# ------------------------------------------------------------------------------------------ SynthScenes


def test_every_reader_on_synthscenes(synth_root):
    scenes = {img["image_id"]: img for img in json.loads((synth_root / "scenes.json").read_text())["images"]}
    ann = "../coco/annotations/{kind}_{{split}}.json"
    inst = open_dataset("coco-instances", synth_root / "images", "val", annotation=ann.format(kind="instances"), masks=True)
    assert len(inst) == 32 and {c["frequency"] for c in inst.categories} == {"r", "c", "f"}
    item = inst[0]
    objects = scenes[item["image_id"]]["objects"]
    assert item["boxes"].tolist() == [o["bbox"] for o in objects] and item["masks"].sum((1, 2)).tolist() == [
        o["area"] for o in objects
    ]

    lvis = open_dataset("lvis", synth_root / "images", "test", annotation=ann.format(kind="instances"))
    assert len(lvis) == 32 and len(lvis[0]["neg_category_ids"]) == 36 - len(set(lvis[0]["category_ids"].tolist()))

    caps = open_dataset("coco-captions", synth_root / "images", "test", annotation=ann.format(kind="captions"))
    kp = open_dataset("karpathy", synth_root, "test", annotation="karpathy/dataset_synthscenes.json")
    assert caps.captions_per_image == kp.captions_per_image == 5 and len(kp) == 32
    assert (
        [kp[i]["captions"] for i in range(3)]
        == [caps[i]["captions"] for i in range(3)]
        == [[c["text"] for c in scenes[129 + i]["captions"]] for i in range(3)]
    )
    assert len(open_dataset("karpathy", synth_root, "train", annotation="karpathy/dataset_synthscenes.json")) == 96

    voc = open_dataset("voc", synth_root / "VOCdevkit/SynthScenes", "train", classnames="classnames.txt")
    assert len(voc) == 96 and voc.classnames[0] == "background" and len(voc.classnames) == 7
    assert set(voc[0]["label"].unique().tolist()) <= set(range(7)) | {255}

    folder = open_dataset("imagefolder", synth_root / "imagefolder", "val")
    assert len(folder.classnames) == 36 and len(folder) == 32
    item = folder[0]
    largest = max(scenes[int(Path(item["path"]).stem)]["objects"], key=lambda o: o["area"])
    assert folder.classnames[item["label"]] == f"{largest['colour']} {largest['shape']}"

    pairs = open_dataset("pairs", synth_root / "pairs", "train")
    assert len(pairs) == 96 * 5 and pairs.captions[:5] == [c["text"] for c in scenes[1]["captions"]]
    assert (
        open_dataset("pairs", synth_root / "pairs/val.csv", "val").captions
        == open_dataset("pairs", synth_root / "pairs", "val").captions
    )


def test_data_inspect_reads_every_item(synth_root):
    result = run_cli(
        "data",
        "inspect",
        "coco-instances",
        synth_root / "images",
        "--split",
        "train",
        "-o",
        "annotation=../coco/annotations/instances_{split}.json",
        "-o",
        "masks=true",
        "--json",
    )
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["items"] == summary["items_read"] == 96 and summary["item"]["masks"].startswith("Tensor[")


# ------------------------------------------------------------------------------------ bad input, via CLI


def _write_png(path: Path, array: np.ndarray, mode: str = "P") -> None:
    img = Image.fromarray(array.astype(np.uint8), mode="L")
    (img.convert("P") if mode == "P" else img.convert(mode)).save(path)


def _break(root: Path, case: str) -> tuple[list, tuple[str, ...]]:
    """Damage a fresh real-layout tree for one case; return (CLI args, words the one-line error must contain)."""
    coco_inst = [
        "coco-instances",
        root / "coco/val2017",
        "--split",
        "val2017",
        "-o",
        "annotation=../annotations/instances_{split}.json",
    ]
    voc = ["voc", root / "VOCdevkit/VOC2012", "--split", "val"]
    if case == "missing root":
        return ["voc", root / "VOCdevkit/VOC2099"], ("VOC2099", "does not exist")
    if case == "missing split file":
        return ["voc", root / "VOCdevkit/VOC2012", "--split", "train"], ("train.txt", "does not exist")
    if case == "missing split folder":
        return ["imagefolder", root / "imagenet", "--split", "train"], ("imagenet/train", "does not exist")
    if case == "missing annotation file":
        return coco_inst[:-1] + ["annotation=../annotations/instances_val2014.json"], ("instances_val2014.json", "does not exist")
    if case == "missing annotation option":
        return coco_inst[:-2], ("annotation",)
    if case == "unknown option":
        return voc + ["-o", "palette=yes"], ("palette",)
    if case == "image does not decode":
        (root / "coco/val2017/000000000285.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        return coco_inst, ("000000000285.jpg", "does not decode")
    if case == "annotation points at missing image":
        (root / "coco/val2017/000000000139.jpg").unlink()
        return coco_inst, ("000000000139.jpg", "instances_val2017.json")
    if case == "karpathy points at missing image":
        (root / "flickr30k/flickr30k-images/1000092795.jpg").unlink()
        return [
            "karpathy",
            root / "flickr30k",
            "--split",
            "test",
            "-o",
            "annotation=dataset_flickr30k.json",
            "-o",
            "images_dir=flickr30k-images",
        ], ("1000092795.jpg",)
    if case in ("annotation points at unlisted image", "category outside range"):
        path = root / "coco/annotations/instances_val2017.json"
        data = json.loads(path.read_text())
        key, value = ("image_id", 4242) if case == "annotation points at unlisted image" else ("category_id", 91)
        data["annotations"][0][key] = value
        path.write_text(json.dumps(data))
        return coco_inst, ("instances_val2017.json", str(value))
    if case == "label outside class range":
        label = np.zeros((20, 24))
        label[5, 5] = 30
        _write_png(root / "VOCdevkit/VOC2012/SegmentationClass/2007_000033.png", label)
        return voc, ("2007_000033.png", "30")
    if case == "context label outside range":
        label = np.zeros((12, 16))
        label[0, 0] = 60
        _write_png(root / "VOCdevkit/VOC2010/SegmentationClassContext/2008_000002.png", label, "L")
        return ["voc", root / "VOCdevkit/VOC2010", "--split", "val", "-o", "layout=context"], ("2008_000002.png", "60")
    if case == "label size differs":
        _write_png(root / "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png", np.zeros((10, 24)))
        return voc, ("2007_000032.png", "24x10")
    if case == "label is RGB":
        _write_png(root / "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png", np.zeros((20, 24)), "RGB")
        return voc, ("2007_000032.png", "RGB")
    if case == "empty split":
        (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").write_text("\n")
        return voc, ("val.txt", "no images")
    if case == "empty karpathy split":
        return ["karpathy", root / "flickr30k", "--split", "val", "-o", "annotation=dataset_flickr30k.json"], (
            "dataset_flickr30k.json",
            "no images",
        )
    if case == "class folder not in class file":
        (root / "imagenet/val/n99999999").mkdir()
        return ["imagefolder", root / "imagenet", "--split", "val"], ("n99999999", "classnames.txt")
    if case == "pairs without caption column":
        (root / "pairs/train.csv").write_text("image,text\nimg/a.jpg,hello\n")
        return ["pairs", root / "pairs/train.csv"], ("train.csv", "caption")
    if case == "pairs image missing":
        (root / "pairs/val.jsonl").write_text(json.dumps({"image": "img/b.jpg", "caption": "x"}) + "\n")
        return ["pairs", root / "pairs", "--split", "val"], ("img/b.jpg", "val.jsonl")
    if case == "not JSON":
        (root / "lvis/lvis_v1_val.json").write_text("{ nope")
        return ["lvis", root / "coco/val2017", "-o", f"annotation={root / 'lvis/lvis_v1_val.json'}"], ("lvis_v1_val.json",)
    raise AssertionError(case)


CASES = [
    "missing root",
    "missing split file",
    "missing split folder",
    "missing annotation file",
    "missing annotation option",
    "unknown option",
    "image does not decode",
    "annotation points at missing image",
    "karpathy points at missing image",
    "annotation points at unlisted image",
    "category outside range",
    "label outside class range",
    "context label outside range",
    "label size differs",
    "label is RGB",
    "empty split",
    "empty karpathy split",
    "class folder not in class file",
    "pairs without caption column",
    "pairs image missing",
    "not JSON",
]


# The CLI costs a fresh process (a torch import) per call: the brief's core cases go through it, and every
# case (those included) also goes through the same reader call in-process.
CLI_CASES = [
    "missing root",
    "missing split file",
    "missing annotation file",
    "image does not decode",
    "annotation points at missing image",
    "label outside class range",
    "empty split",
    "class folder not in class file",
]


@pytest.mark.parametrize("case", CLI_CASES)
def test_bad_input_through_cli_is_one_line_naming_the_file(tmp_path, case):
    args, needles = _break(build_real(tmp_path), case)
    assert_one_line_error(run_cli("data", "inspect", *args), *needles)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_sentence_naming_the_file(tmp_path, case):
    """What `data inspect` does, in-process: open the dataset with the reader, then read every item."""
    import yaml

    args, needles = _break(build_real(tmp_path), case)
    fmt, root, rest = args[0], args[1], iter(args[2:])
    split, options = "val", {}
    for flag in rest:
        value = next(rest)
        if flag == "--split":
            split = value
        else:
            key, _, text = value.partition("=")
            options[key] = yaml.safe_load(text)
    with pytest.raises(SparcEvalError) as info:
        ds = open_dataset(fmt, root, split, **options)
        for i in range(len(ds)):
            ds[i]
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_undecodable_image_raises_when_read_not_at_open(tmp_path):
    root = build_real(tmp_path)
    (root / "imagenet/val/n01440764/ILSVRC2012_val_00000293.JPEG").write_bytes(b"garbage")
    ds = open_dataset("imagefolder", root / "imagenet", "val")
    assert ds[1]["label"] == 1
    with pytest.raises(SparcEvalError, match="ILSVRC2012_val_00000293.JPEG"):
        ds[0]


def test_classname_file_must_match(tmp_path):
    root = build_real(tmp_path)
    (root / "imagenet/other.txt").write_text("tench\ngoldfish\n")  # folder names would be 'tench', 'goldfish'
    with pytest.raises(SparcEvalError, match="n01440764"):
        open_dataset("imagefolder", root / "imagenet", "val", classnames="other.txt")
