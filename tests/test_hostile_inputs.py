"""The catalogue of hostile inputs (docs/reliability.md): every command, fed a bad file or a bad option value.

Each case asserts the promise of DESIGN.md's conventions: exit code 2, exactly one line on stderr that names
the file or value, no traceback, nothing new or changed anywhere under the test's folder (the command failed
before writing: nothing half-written, no temporary left) and nothing new in the repository. Cases run the real
`sparc-eval` entry point in this process (`sparc_eval.cli.main.main(argv)`), from an empty working folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from PIL import Image
from record_factory import write_run

import sparc_eval
from sparc_eval.cli.main import main

REPO = Path(sparc_eval.__file__).resolve().parents[1]
_SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", ".mypy_cache"}


@dataclass
class World:
    """What a case may use: its own empty folder, a valid tiny checkpoint, a data folder with SynthScenes."""

    tmp: Path
    ckpt: Path
    data_dir: Path


Build = Callable[[World], tuple[list[str], tuple[str, ...]]]
CASES: list[tuple[str, Build]] = []


def case(name: str) -> Callable[[Build], Build]:
    def register(build: Build) -> Build:
        CASES.append((name, build))
        return build

    return register


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` (links not followed) with its size and modification time."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            found[str(path.relative_to(root))] = (st.st_size if not path.is_dir() else 0, st.st_mtime_ns)
    return found


# --------------------------------------------------------------------------------------------- builders


def png(path: Path, size: tuple[int, int] = (16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 60)).save(path)
    return path


def coco(t: Path, kind: str = "instances") -> tuple[Path, Path, dict]:
    """A valid two-image COCO file (captions or instances, LVIS-flavoured with kind="lvis"): (images, json, data)."""
    images = t / "images"
    for name in ("a.png", "b.png"):
        png(images / name)
    data: dict = {"images": [{"id": i, "file_name": n, "width": 16, "height": 16} for i, n in ((1, "a.png"), (2, "b.png"))]}
    if kind == "captions":
        data["annotations"] = [{"id": 10 + i, "image_id": i, "caption": f"a red circle {i}"} for i in (1, 2)]
    else:
        data["categories"] = [{"id": 1, "name": "circle", "frequency": "f"}, {"id": 2, "name": "square", "frequency": "r"}]
        data["annotations"] = [
            {"id": 10 + i, "image_id": i, "category_id": i, "bbox": [2, 2, 6, 6], "area": 36, "iscrowd": 0} for i in (1, 2)
        ]
    return images, t / f"{kind}.json", data


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def inspect_coco(kind: str, mutate: Callable[[dict], None]) -> Build:
    def build(w: World):
        images, ann, data = coco(w.tmp, kind)
        mutate(data)
        write_json(ann, data)
        fmt = {"instances": "coco-instances", "captions": "coco-captions", "lvis": "lvis"}[kind]
        return ["data", "inspect", fmt, str(images), "--split", "val", "-o", f"annotation={ann}"], (str(ann),)

    return build


def karpathy(t: Path) -> tuple[Path, dict]:
    for name in ("a.png", "b.png"):
        png(t / "images" / name)
    data = {
        "images": [
            {
                "filepath": "images",
                "filename": n,
                "imgid": i,
                "cocoid": i,
                "split": "test",
                "sentences": [{"raw": "a red circle"}],
            }
            for i, n in ((1, "a.png"), (2, "b.png"))
        ]
    }
    return t / "dataset.json", data


def inspect_karpathy(mutate: Callable[[dict], None]) -> Build:
    def build(w: World):
        ann, data = karpathy(w.tmp)
        mutate(data)
        write_json(ann, data)
        return ["data", "inspect", "karpathy", str(w.tmp), "--split", "test", "-o", f"annotation={ann}"], (str(ann),)

    return build


def record(w: World, name: str = "results", **edits) -> Path:
    """A valid result record under tmp/`name`, then `edits` applied to its JSON (a value None deletes the key)."""
    path = write_run(w.tmp / name, ckpt="tiny", task="synth-cls", metrics={"top1": 0.5, "top5": 0.9})
    raw = json.loads(path.read_text())
    for key, value in edits.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    path.write_text(json.dumps(raw))
    return path


def bad_config(mutate: Callable[[dict], None]) -> Build:
    """A checkpoint folder whose config.json is edited (weights linked from the valid checkpoint)."""

    def build(w: World):
        folder = w.tmp / "ckpt"
        folder.mkdir()
        (folder / "model.safetensors").symlink_to(w.ckpt / "model.safetensors")
        config = json.loads((w.ckpt / "config.json").read_text())
        mutate(config["model"])
        write_json(folder / "config.json", config)
        argv = ["run", "--task", "synth-cls", "--ckpt", str(folder), "--out", str(w.tmp / "out"), "--data-dir", str(w.data_dir)]
        return argv, (str(folder / "config.json"),)

    return build


def task_card(w: World, **edits) -> Path:
    raw = yaml.safe_load((REPO / "tasks" / "synth-cls.yaml").read_text())
    raw.update(edits)
    path = w.tmp / "card.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_args(w: World, *extra: str, task: str = "synth-cls") -> list[str]:
    return ["run", "--task", task, "--ckpt", str(w.ckpt), "--out", str(w.tmp / "out"), "--data-dir", str(w.data_dir), *extra]


# --------------------------------------------------------------------------------------------- data synth

for flag, value in (("--workers", "-3"), ("--seed", "-1"), ("--n-train", "0"), ("--n-val", "-5"), ("--image-size", "7")):
    case(f"synth {flag} {value}")(lambda w, f=flag, v=value: (["data", "synth", "--out", str(w.tmp / "s"), f, v], (f, v)))


@case("synth --out is a file")
def _(w):
    (w.tmp / "f").write_text("x")
    return ["data", "synth", "--out", str(w.tmp / "f"), "--n-train", "4", "--n-val", "2"], (str(w.tmp / "f"),)


@case("synth --out under a file")
def _(w):
    (w.tmp / "f").write_text("x")
    return ["data", "synth", "--out", str(w.tmp / "f" / "s"), "--n-train", "4", "--n-val", "2"], (str(w.tmp / "f"),)


# --------------------------------------------------------------------------------------------- data check


def manifest(files) -> Build:
    def build(w: World):
        root = w.tmp / "tree"
        png(root / "images" / "a.png")
        write_json(root / "MANIFEST.json", {"files": files})
        return ["data", "check", str(root)], ("MANIFEST.json",)

    return build


case("check manifest entry ../../etc/hostname")(manifest({"../../etc/hostname": "0" * 32}))
case("check manifest entry absolute")(manifest({"/etc/hostname": "0" * 32}))
case("check manifest entry images/../../outside.txt")(manifest({"images/../../outside.txt": "0" * 32}))
case("check manifest files is a list")(manifest(["images/a.png"]))
case("check manifest md5 not hex")(manifest({"images/a.png": "not-an-md5"}))
case("check manifest md5 is a number")(manifest({"images/a.png": 5}))


@case("check manifest not JSON")
def _(w):
    root = w.tmp / "tree"
    root.mkdir()
    (root / "MANIFEST.json").write_bytes(b"\xff\xfe{")
    return ["data", "check", str(root)], ("MANIFEST.json",)


@case("check scenes.json file_name outside")
def _(w):
    import hashlib

    root = w.tmp / "tree"
    scenes = write_json(root / "scenes.json", {"images": [{"file_name": "../../etc/hostname", "objects": []}]})
    write_json(root / "MANIFEST.json", {"files": {"scenes.json": hashlib.md5(scenes.read_bytes()).hexdigest()}})
    return ["data", "check", str(root)], ("scenes.json", "../../etc/hostname")


# --------------------------------------------------------------------------------------------- readers (data inspect)

case("coco image without id")(inspect_coco("instances", lambda d: d["images"][0].pop("id")))
case("coco image without file_name")(inspect_coco("instances", lambda d: d["images"][0].pop("file_name")))
case("coco file_name leads outside")(inspect_coco("instances", lambda d: d["images"][0].update(file_name="../../../etc/passwd")))
case("coco image width is a string")(inspect_coco("instances", lambda d: d["images"][0].update(width="16")))
case("coco duplicate image ids")(inspect_coco("instances", lambda d: d["images"][1].update(id=1)))
case("coco annotation without id")(inspect_coco("instances", lambda d: d["annotations"][0].pop("id")))
case("coco annotation without category_id")(inspect_coco("instances", lambda d: d["annotations"][0].pop("category_id")))
case("coco unknown category")(inspect_coco("instances", lambda d: d["annotations"][0].update(category_id=99)))
case("coco unknown image")(inspect_coco("instances", lambda d: d["annotations"][0].update(image_id=99)))
case("coco bbox of 3 numbers")(inspect_coco("instances", lambda d: d["annotations"][0].update(bbox=[1, 2, 3])))
case("coco bbox with a string")(inspect_coco("instances", lambda d: d["annotations"][0].update(bbox=[1, 2, "3", 4])))
case("coco bbox NaN")(inspect_coco("instances", lambda d: d["annotations"][0].update(bbox=[1, 2, float("nan"), 4])))
case("coco bbox outside the image")(inspect_coco("instances", lambda d: d["annotations"][0].update(bbox=[10, 10, 12, 12])))
case("coco bbox negative width")(inspect_coco("instances", lambda d: d["annotations"][0].update(bbox=[4, 4, -2, 2])))
case("coco duplicate annotation ids")(inspect_coco("instances", lambda d: d["annotations"][1].update(id=11)))
case("coco iscrowd 7")(inspect_coco("instances", lambda d: d["annotations"][0].update(iscrowd=7)))
case("coco top level is a list")(inspect_coco("instances", lambda d: d.update(images="not a list")))
case("coco captions caption is a number")(inspect_coco("captions", lambda d: d["annotations"][0].update(caption=5)))
case("coco captions annotation without id")(inspect_coco("captions", lambda d: d["annotations"][0].pop("id")))
case("lvis frequency x")(inspect_coco("lvis", lambda d: d["categories"][0].update(frequency="x")))
case("lvis neg_category_ids unknown")(inspect_coco("lvis", lambda d: d["images"][0].update(neg_category_ids=[42])))
case("lvis bbox outside the image")(inspect_coco("lvis", lambda d: d["annotations"][1].update(bbox=[0, 0, 40, 4])))


@case("coco annotation file not UTF-8")
def _(w):
    images, ann, _ = coco(w.tmp)
    ann.write_bytes(b'{"images": "\xff\xfe"}')
    return ["data", "inspect", "coco-instances", str(images), "-o", f"annotation={ann}"], (str(ann),)


case("karpathy entry without filename")(inspect_karpathy(lambda d: d["images"][0].pop("filename")))
case("karpathy cocoid is a string")(inspect_karpathy(lambda d: d["images"][0].update(cocoid="1")))
case("karpathy duplicate ids")(inspect_karpathy(lambda d: d["images"][1].update(cocoid=1)))
case("karpathy sentence without raw")(inspect_karpathy(lambda d: d["images"][0].update(sentences=[{"tokens": []}])))
case("karpathy filepath leads outside")(inspect_karpathy(lambda d: d["images"][0].update(filepath="../../..")))
case("karpathy images is a dict")(inspect_karpathy(lambda d: d.update(images={"a": 1})))


@case("voc split id leads outside")
def _(w):
    root = w.tmp / "VOCdevkit" / "VOC2012"
    png(root / "JPEGImages" / "x.jpg")
    split = root / "ImageSets" / "Segmentation" / "val.txt"
    split.parent.mkdir(parents=True)
    split.write_text("../../../../etc/passwd\n")
    return ["data", "inspect", "voc", str(root), "--split", "val"], (str(split), "../../../../etc/passwd")


def pairs(text: str, suffix: str = ".jsonl") -> Build:
    def build(w: World):
        png(w.tmp / "a.png")
        path = w.tmp / f"train{suffix}"
        path.write_text(text)
        return ["data", "inspect", "pairs", str(path), "--split", "train"], (str(path),)

    return build


case("pairs caption is a number")(pairs('{"image": "a.png", "caption": 5}\n'))
case("pairs image is a list")(pairs('{"image": ["a.png"], "caption": "x"}\n'))
case("pairs line not JSON")(pairs('{"image": "a.png", "caption": \n'))
case("pairs csv without caption column")(pairs("image,text\na.png,x\n", ".csv"))


@case("inspect --limit -1")
def _(w):
    return ["data", "inspect", "pairs", str(w.tmp), "--limit", "-1"], ("--limit", "-1")


# --------------------------------------------------------------------------------------------- train


def train_args(w: World, *extra: str, out: str = "ckpt") -> list[str]:
    png(w.tmp / "data" / "a.png")
    (w.tmp / "data" / "train.jsonl").write_text('{"image": "a.png", "caption": "a red circle"}\n')
    return ["train", "--data", str(w.tmp / "data"), "--out", str(w.tmp / out), "--steps", "2", "--batch-size", "1", *extra]


for flag, value in (
    ("--seed", "-1"),
    ("--lr", "nan"),
    ("--weight-decay", "inf"),
    ("--steps", "0"),
    ("--batch-size", "0"),
    ("--grad-clip", "-1"),
    ("--lambda-f", "nan"),
):
    case(f"train {flag} {value}")(lambda w, f=flag, v=value: (train_args(w, f, v), (f,)))


@case("train --out is a file")
def _(w):
    argv = train_args(w)
    (w.tmp / "ckpt").write_text("x")
    return argv, ("--out", str(w.tmp / "ckpt"))


@case("train --out exists")
def _(w):
    argv = train_args(w)
    (w.tmp / "ckpt").mkdir()
    return argv, ("--out", str(w.tmp / "ckpt"))


@case("train --data missing")
def _(w):
    return ["train", "--data", str(w.tmp / "nope"), "--out", str(w.tmp / "ckpt")], (str(w.tmp / "nope"),)


@case("train pairs image leads nowhere")
def _(w):
    argv = train_args(w)
    (w.tmp / "data" / "train.jsonl").write_text('{"image": 3, "caption": "x"}\n')
    return argv, (str(w.tmp / "data" / "train.jsonl"),)


# --------------------------------------------------------------------------------------------- tasks, cards


@case("tasks with an unreadable user card")
def _(w):
    folder = w.tmp / "cards"
    folder.mkdir()
    (folder / "broken.yaml").write_bytes(b"name: \xff\xfe\n")
    return ["tasks", "--cards", str(folder)], ("broken.yaml",)


@case("cards validate version true")
def _(w):
    return ["cards", "validate", str(task_card(w, version=True))], ("card.yaml", "version")


@case("cards validate name with ../")
def _(w):
    return ["cards", "validate", str(task_card(w, name="../../evil"))], ("card.yaml",)


@case("cards validate YAML alias bomb")
def _(w):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = w.tmp / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    return ["cards", "validate", str(path)], ("bomb.yaml",)


# --------------------------------------------------------------------------------------------- run

for flag, value in (
    ("--num-workers", "-2"),
    ("--num-workers", "100000"),
    ("--seed", "-1"),
    ("--limit", "0"),
    ("--batch-size", "0"),
    ("--precision", "fp16"),
):
    case(f"run {flag} {value}")(lambda w, f=flag, v=value: (run_args(w, f, v), (f, v)))


@case("run --seed not a number")
def _(w):
    return run_args(w, "--seed", "many"), ("--seed",)


@case("run --out is a file")
def _(w):
    (w.tmp / "out").write_text("x")
    return run_args(w), ("--out", str(w.tmp / "out"))


@case("run --data-dir is a file")
def _(w):
    (w.tmp / "d").write_text("x")
    argv = run_args(w)
    argv[argv.index("--data-dir") + 1] = str(w.tmp / "d")
    return argv, ("--data-dir", str(w.tmp / "d"))


@case("run second task unknown: the first does not run")
def _(w):
    return [*run_args(w), "--task", "no-such-task"], ("no-such-task",)


@case("run task card named ../../evil")
def _(w):
    return run_args(w, task=str(task_card(w, name="../../evil"))), ("card.yaml",)


@case("run task card named /tmp/evil")
def _(w):
    return run_args(w, task=str(task_card(w, name="/tmp/evil"))), ("card.yaml",)


@case("run task card version true")
def _(w):
    return run_args(w, task=str(task_card(w, version=True))), ("card.yaml", "version")


@case("run task card not UTF-8")
def _(w):
    path = w.tmp / "card.yaml"
    path.write_bytes(b"name: synth-cls\nversion: 1\ndescription: \xff\xfe\n")
    return run_args(w, task=str(path)), ("card.yaml",)


@case("run --ckpt card:../x")
def _(w):
    argv = run_args(w)
    argv[argv.index("--ckpt") + 1] = "card:../x"
    return argv, ("../x",)


@case("run checkpoint card named ../../evil")
def _(w):
    card = yaml.safe_load((REPO / "checkpoints" / "tiny-clip.yaml").read_text())
    card["name"] = "../../evil"
    path = w.tmp / "evil.yaml"
    path.write_text(yaml.safe_dump(card))
    argv = run_args(w)
    argv[argv.index("--ckpt") + 1] = f"card:{path}"
    return argv, ("evil.yaml",)


case("run config layers 'four'")(bad_config(lambda m: m["vision_cfg"].update(layers="four")))
case("run config width negative")(bad_config(lambda m: m["vision_cfg"].update(width=-128)))
case("run config width absurd")(bad_config(lambda m: m["text_cfg"].update(width=10**9)))
case("run config vision_cfg null")(bad_config(lambda m: m.update(vision_cfg=None)))
case("run config arch disagrees with towers")(bad_config(lambda m: m.update(arch="vit-b-16")))
case("run config undeclared tower change")(bad_config(lambda m: m["text_cfg"].update(layers=2)))
case("run config heads do not divide width")(bad_config(lambda m: m["text_cfg"].update(heads=3)))


@case("run pickled weights that would call os.system")
def _(w):
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    path = w.tmp / "evil.pt"
    torch.save({"w": Evil()}, path)
    argv = run_args(w)
    argv[argv.index("--ckpt") + 1] = f"openclip:ViT-B-32@{path}"
    return argv, (str(path), "system")


@case("run raw pickle of protocol 4 (torch would warn)")
def _(w):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    path = w.tmp / "raw.bin"
    path.write_bytes(pickle.dumps({"w": Evil()}, protocol=4))
    argv = run_args(w)
    argv[argv.index("--ckpt") + 1] = f"openclip:ViT-B-32@{path}"
    return argv, (str(path), "system")


@case("run task card that is a YAML alias bomb")
def _(w):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = w.tmp / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    return run_args(w, task=str(path)), ("bomb.yaml",)


# --------------------------------------------------------------------------------------------- table, regress, leaderboard


def records_case(command: Callable[[World], list[str]], needles: tuple[str, ...] = (), **edits) -> Build:
    def build(w: World):
        path = record(w, **edits)
        return command(w), (str(path), *needles)

    return build


def table(w: World) -> list[str]:
    return ["table", str(w.tmp / "results")]


def regress(w: World) -> list[str]:
    write_run(w.tmp / "baseline", ckpt="tiny", task="synth-cls", metrics={"top1": 0.5, "top5": 0.9})
    return ["regress", "--baseline", str(w.tmp / "baseline"), "--results", str(w.tmp / "results")]


def leaderboard(w: World) -> list[str]:
    return ["leaderboard", "build", str(w.tmp / "results"), "--out", str(w.tmp / "board")]


for command in (table, regress, leaderboard):
    name = command.__name__
    case(f"{name}: samples_file ../../../etc/passwd")(
        records_case(command, ("samples_file",), samples_file="../../../etc/passwd")
    )
    case(f"{name}: metrics is a list")(records_case(command, ("metrics",), metrics=[0.5]))
    case(f"{name}: metric value is a string")(
        records_case(command, ("top1",), metrics={"top1": {"value": "high", "higher_is_better": True}})
    )
case("table: artifact leads outside")(records_case(table, ("../../x",), artifacts={"detections": "../../x"}))
case("regress: record without seed")(records_case(regress, ("seed",), seed=None))
case("leaderboard: record with a negative n_samples")(records_case(leaderboard, ("n_samples",), n_samples=-4))


@case("table: record not UTF-8")
def _(w):
    path = record(w)
    path.write_bytes(b'{"schema_version": 2, "task": "\xff"}')
    return table(w), (str(path),)


@case("table --format yaml")
def _(w):
    record(w)
    return [*table(w), "--format", "yaml"], ("yaml",)


@case("table results folder is a file")
def _(w):
    (w.tmp / "r").write_text("x")
    return ["table", str(w.tmp / "r")], (str(w.tmp / "r"),)


@case("regress --alpha 2")
def _(w):
    record(w)
    return [*regress(w), "--alpha", "2"], ("--alpha", "2")


@case("regress --tolerance -0.1")
def _(w):
    record(w)
    return [*regress(w), "--tolerance", "-0.1"], ("--tolerance",)


@case("regress --bootstrap 0")
def _(w):
    record(w)
    return [*regress(w), "--bootstrap", "0"], ("--bootstrap", "0")


@case("regress baseline missing")
def _(w):
    record(w)
    return ["regress", "--baseline", str(w.tmp / "nope"), "--results", str(w.tmp / "results")], (str(w.tmp / "nope"),)


@case("leaderboard --out is a file")
def _(w):
    record(w)
    (w.tmp / "board").write_text("x")
    return leaderboard(w), ("--out", str(w.tmp / "board"))


@case("leaderboard results folder holds no records")
def _(w):
    (w.tmp / "results").mkdir()
    return leaderboard(w), (str(w.tmp / "results"),)


# --------------------------------------------------------------------------------------------- quickstart, viz, kprecision


@case("quickstart --out is a file")
def _(w):
    (w.tmp / "q").write_text("x")
    return ["quickstart", "--fast", "--out", str(w.tmp / "q"), "--data-dir", str(w.data_dir)], ("--out", str(w.tmp / "q"))


@case("quickstart --data-dir is a file")
def _(w):
    (w.tmp / "d").write_text("x")
    return ["quickstart", "--fast", "--out", str(w.tmp / "q"), "--data-dir", str(w.tmp / "d")], ("--data-dir",)


def viz_align(w: World, *extra: str) -> list[str]:
    png(w.tmp / "img.png")
    return ["viz", "align", "--ckpt", str(w.ckpt), "--image", str(w.tmp / "img.png"), "--caption", "a red circle", *extra]


case("viz align --image missing")(
    lambda w: (
        [
            "viz",
            "align",
            "--ckpt",
            str(w.ckpt),
            "--image",
            str(w.tmp / "no.png"),
            "--caption",
            "x",
            "--out",
            str(w.tmp / "a.png"),
        ],
        ("--image",),
    )
)
case("viz align --out is a folder")(lambda w: (viz_align(w, "--out", str(w.tmp)), ("--out", str(w.tmp))))
case("viz align --head middle")(lambda w: (viz_align(w, "--out", str(w.tmp / "a.png"), "--head", "middle"), ("--head", "middle")))


def viz_seg(w: World, *extra: str) -> list[str]:
    return ["viz", "seg", "--ckpt", str(w.ckpt), "--task", "synth-seg", "--data-dir", str(w.data_dir), *extra]


case("viz seg --batch-size 0")(lambda w: (viz_seg(w, "--out", str(w.tmp / "p"), "--batch-size", "0"), ("--batch-size", "0")))
case("viz seg --n 0")(lambda w: (viz_seg(w, "--out", str(w.tmp / "p"), "--n", "0"), ("--n", "0")))


@case("viz seg --out is a file")
def _(w):
    (w.tmp / "p").write_text("x")
    return viz_seg(w, "--out", str(w.tmp / "p")), ("--out", str(w.tmp / "p"))


def kprecision(w: World, pred: bytes, refs: bytes) -> list[str]:
    (w.tmp / "pred.json").write_bytes(pred)
    (w.tmp / "refs.json").write_bytes(refs)
    return ["kprecision", "--pred", str(w.tmp / "pred.json"), "--refs", str(w.tmp / "refs.json")]


REFS = json.dumps({"annotations": [{"image_id": 1, "caption": "a red circle"}]}).encode()
case("kprecision --pred missing")(
    lambda w: (["kprecision", "--pred", str(w.tmp / "none.json"), "--refs", str(w.tmp / "none2.json")], ("--pred",))
)
case("kprecision --refs not JSON")(lambda w: (kprecision(w, b'[{"image_id": 1, "caption": "x"}]', b"{oops"), ("refs.json",)))
case("kprecision --pred not UTF-8")(lambda w: (kprecision(w, b'[{"caption": "\xff"}]', REFS), ("pred.json",)))


# --------------------------------------------------------------------------------------------- the test


def test_catalogue_is_large_and_covers_every_command():
    commands = {name.split()[0].rstrip(":") for name, _ in CASES}
    assert len(CASES) >= 60, len(CASES)
    expected = {"synth", "check", "coco", "lvis", "karpathy", "voc", "pairs", "inspect", "train", "tasks", "cards", "run"}
    expected |= {"table", "regress", "leaderboard", "quickstart", "viz", "kprecision"}
    assert expected <= commands, expected - commands


@pytest.fixture
def world(tmp_path, tiny_sparc_ckpt, synth_data_dir, monkeypatch) -> World:
    cwd = tmp_path / "cwd"  # the working folder: relative defaults (results/, data/) would land here
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for var in ("SPARC_EVAL_CARDS", "SPARC_EVAL_CHECKPOINTS", "SPARC_EVAL_DATA"):
        monkeypatch.delenv(var, raising=False)
    return World(tmp=tmp_path, ckpt=tiny_sparc_ckpt, data_dir=synth_data_dir)


@pytest.mark.parametrize("name,build", CASES, ids=[name for name, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, build, world, capsys):
    argv, needles = build(world)
    environ = dict(os.environ)
    before, repo_before = tree(world.tmp), tree(REPO)
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
    finally:
        os.environ.clear()
        os.environ.update(environ)  # commands export settings (e.g. --cards) to the processes they start
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, (exit_info.value.code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    after = tree(world.tmp)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}
    # Left out: source and docs (.py, .md), and the default output folders runs/ and data/. In a shared checkout other
    # people add those while the suite runs; every case here runs from an empty folder with absolute paths, so a
    # command of this test writing there would need the repository's path, which no case gives it.
    new_in_repo = sorted(
        p
        for p in set(tree(REPO)) - set(repo_before)
        if not p.endswith((".py", ".md")) and p.split("/")[0] not in ("runs", "data")
    )
    assert not new_in_repo, new_in_repo
    assert not (world.tmp / "cwd" / "pwned").exists()


# --------------------------------------------------------------------------------------------- NaN records


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    "command",
    [
        lambda w: ["table", str(w.tmp / "results")],
        lambda w: ["table", str(w.tmp / "results"), "--format", "csv"],
        lambda w: ["regress", "--baseline", str(w.tmp / "results"), "--results", str(w.tmp / "other")],
        lambda w: ["regress", "--baseline", str(w.tmp / "other"), "--results", str(w.tmp / "results")],
        lambda w: ["regress", "--baseline", str(w.tmp / "other"), "--results", str(w.tmp / "results"), "--exact"],
        lambda w: ["leaderboard", "build", str(w.tmp / "results"), "--out", str(w.tmp / "board")],
    ],
    ids=["table", "table-csv", "regress-baseline", "regress-results", "regress-exact", "leaderboard"],
)
def test_every_reader_of_records_refuses_a_non_finite_metric(command, literal, world, capsys):
    path = record(world)
    path.write_text(path.read_text().replace('"value": 0.5', f'"value": {literal}'))
    assert literal in path.read_text()
    write_run(world.tmp / "other", ckpt="tiny", task="synth-cls", metrics={"top1": 0.5, "top5": 0.9})
    before = tree(world.tmp)
    with pytest.raises(SystemExit) as exit_info:
        main(command(world))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert str(path) in lines[0] and "top1" in lines[0], lines[0]
    assert tree(world.tmp) == before


def test_a_clean_record_passes_the_same_readers(world, capsys):
    """The NaN test above is not passing because every record is refused: the same folders, finite, succeed."""
    record(world)
    write_run(world.tmp / "other", ckpt="tiny", task="synth-cls", metrics={"top1": 0.5, "top5": 0.9})
    for argv in (
        ["table", str(world.tmp / "results")],
        ["regress", "--baseline", str(world.tmp / "other"), "--results", str(world.tmp / "results"), "--exact"],
        ["leaderboard", "build", str(world.tmp / "results"), "--out", str(world.tmp / "board")],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0, (argv, capsys.readouterr().err)
    assert sorted(p.name for p in (world.tmp / "board").iterdir()) == ["index.html", "leaderboard.csv", "leaderboard.md"]


# --------------------------------------------------------------------------------------------- cases outside the table above


def test_resume_state_beyond_steps_is_refused(world, capsys, monkeypatch):
    """A periodic checkpoint whose training state was edited to a step past --steps: one line, nothing published."""
    from micro_training import MICRO

    from sparc_eval.models.sparc import PRESETS
    from sparc_eval.train import loop

    monkeypatch.setitem(PRESETS, "micro", MICRO)
    argv = train_args(world, "--arch", "micro", "--steps", "4", "--save-every", "2", "--warmup", "1", out="run")
    with monkeypatch.context() as patch, pytest.raises(SystemExit) as exit_info:
        patch.setattr(loop.shutil, "rmtree", lambda *a, **k: None)  # keep the periodic folder of the finished run
        main(argv)
    assert exit_info.value.code == 0, capsys.readouterr().err
    periodic = world.tmp / "run2.periodic"
    shutil.copytree(world.tmp / "run.periodic", periodic)
    state = periodic / "step_0000002" / "train_state.json"
    info = json.loads(state.read_text())
    info["step"] = 50
    state.write_text(json.dumps(info))
    (periodic / "step_0000002").rename(periodic / "step_0000050")
    argv = [*train_args(world, "--arch", "micro", "--steps", "4", "--save-every", "2", "--warmup", "1", out="run2"), "--resume"]
    before = tree(world.tmp)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert "step 50" in lines[0] and "train_state.json" in lines[0], lines[0]
    assert not (world.tmp / "run2").exists() and tree(world.tmp) == before


def test_full_disk_is_one_line_naming_the_file(world, capsys, monkeypatch):
    """An OSError (ENOSPC) while a record is written: one line naming the record's path, no temporary left."""
    import errno

    from sparc_eval import fileio

    real = fileio.os.replace

    def full(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))

    results = record(world).parent.parent
    monkeypatch.setattr(fileio.os, "replace", full)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["leaderboard", "build", str(results), "--out", str(world.tmp / "board")])
    finally:
        monkeypatch.setattr(fileio.os, "replace", real)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert str(world.tmp / "board") in lines[0] and "No space left on device" in lines[0], lines[0]
    assert not (world.tmp / "board").exists() or not any((world.tmp / "board").iterdir())


def test_free_space_check_stops_a_command_before_work(world, capsys, monkeypatch):
    import shutil as shutil_module
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**9, 10**9, 1 << 20))
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synth", "--out", str(world.tmp / "s"), "--n-train", "4000"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and "MiB free" in lines[0], lines
    assert not (world.tmp / "s").exists()
