"""SynthScenes: a seeded generator of small captioned scenes of coloured shapes, in real on-disk formats.

Each image holds 1-4 objects (6 shapes x 6 colours x 2 sizes) on a textured, noisy background; later
objects are drawn over earlier ones. Objects are rasterised at SS x the final resolution and box-filtered
down, so edges are antialiased; every final pixel is labelled with the layer (background or object)
that covers most of it, so masks, boxes and areas are exact for the written image. Captions name sizes,
colours, positions, counts and spatial relations, and record which words describe which instances.

Everything random is drawn from `np.random.default_rng([seed, image_id])`, so the files do not depend on
the number of worker processes. The layout written is described in docs/synthscenes.md.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import temporary_sibling

# 2: adds hard_negatives/ (sparc_eval.data.synth_negatives); every file of version 1 keeps its bytes, and
# ensure_synthscenes upgrades a version-1 tree in place.
GENERATOR_VERSION = 2
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 225),
    "yellow": (240, 210, 35),
    "purple": (150, 60, 190),
    "cyan": (40, 205, 215),
}
SIZES = ("small", "large")
# Held-out combinations (one per shape and one per colour): never drawn in train images -> LVIS "r".
RARE = tuple((shape, list(COLOURS)[(i + 2) % len(COLOURS)]) for i, shape in enumerate(SHAPES))
# Category id of (shape, colour) = 1 + shape index * 6 + colour index; name "red circle".
COMBOS = tuple((s, c) for s in SHAPES for c in COLOURS)
TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a rendering of a {}.",
    "an image containing a {}.",
    "a {} on a textured background.",
)
SS = 4  # supersampling factor
_RADIUS = {"small": (0.075, 0.10), "large": (0.15, 0.20)}  # half-extent as a share of the image side
_MIN_VISIBLE = 0.7  # an earlier object must keep this share of its area visible when a later one lands
_NUMBERS = ("no", "one", "two", "three", "four")


def category_name(shape: str, colour: str) -> str:
    return f"{colour} {shape}"


def category_id(shape: str, colour: str) -> int:
    return COMBOS.index((shape, colour)) + 1


# ------------------------------------------------------------------------------------------ drawing


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u, v) in the unit-size shape centred at 0 (v grows downwards)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.05
    if shape == "triangle":  # apex up at v=-1, base at v=0.7 with half-width 1
        return (v <= 0.7) & (1.7 * np.abs(u) <= v + 1.0)
    if shape == "cross":
        a, b = np.abs(u), np.abs(v)
        return ((a <= 0.33) & (b <= 1.0)) | ((b <= 0.33) & (a <= 1.0))
    if shape == "star":  # five points, outer radius 1.1, inner 0.5, one point straight up
        u, v = u / 1.1, v / 1.1
        rho = np.hypot(u, v)
        sector = 2 * math.pi / 5
        t = np.mod(np.arctan2(v, u) + math.pi / 2, sector)
        d = np.minimum(t, sector - t)  # angle to the nearest point
        px, py = rho * np.cos(d), rho * np.sin(d)
        ex, ey = 0.45 * math.cos(math.pi / 5) - 1.0, 0.45 * math.sin(math.pi / 5)
        return ex * py - ey * (px - 1.0) >= 0
    raise ValueError(shape)


def _rasterise(shape: str, cx: float, cy: float, r: float, side: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """Supersampled mask of one shape: (slices into the SS*side canvas, boolean mask of that window)."""
    hi = side * SS
    lo_x, hi_x = max(0, int((cx - 1.15 * r) * SS)), min(hi, int(math.ceil((cx + 1.15 * r) * SS)))
    lo_y, hi_y = max(0, int((cy - 1.15 * r) * SS)), min(hi, int(math.ceil((cy + 1.15 * r) * SS)))
    xs = (np.arange(lo_x, hi_x) + 0.5) / SS
    ys = (np.arange(lo_y, hi_y) + 0.5) / SS
    u = (xs[None, :] - cx) / r
    v = (ys[:, None] - cy) / r
    return (slice(lo_y, hi_y), slice(lo_x, hi_x)), _inside(shape, u, v)


@functools.lru_cache(maxsize=4)
def _block_index(side: int) -> np.ndarray:
    """For each supersampled pixel (row-major), the index of the final pixel it falls in."""
    y, x = np.divmod(np.arange((side * SS) ** 2), side * SS)
    return (y // SS) * side + x // SS


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
    """A muted textured background (stripes, blotches, gradient or checks) with pixel noise, float [S,S,3]."""
    base = rng.uniform(85, 175) + rng.normal(0, 12, 3)
    yy, xx = np.mgrid[0:side, 0:side] / side
    kind = rng.integers(4)
    if kind == 0:  # stripes
        a = rng.uniform(0, math.pi)
        t = np.sin(2 * math.pi * rng.uniform(3, 9) * (xx * math.cos(a) + yy * math.sin(a)) + rng.uniform(0, 6.3))
        img = base + rng.uniform(10, 25) * t[..., None]
    elif kind == 1:  # soft blotches
        low = Image.fromarray(rng.normal(0, 1, (5, 5)).astype(np.float32), mode="F")
        t = np.asarray(low.resize((side, side), Image.BICUBIC))
        img = base + rng.uniform(12, 22) * t[..., None] * rng.uniform(0.6, 1.0, 3)
    elif kind == 2:  # two-colour gradient
        a = rng.uniform(0, 2 * math.pi)
        w = (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a) + 0.5
        img = base + np.clip(w, 0, 1)[..., None] * rng.normal(0, 30, 3)
    else:  # low-contrast checks
        n = rng.integers(3, 9)
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2) * 2 - 1
        img = base + rng.uniform(8, 18) * t[..., None]
    return img + rng.normal(0, rng.uniform(3, 10), (side, side, 1)) + rng.normal(0, 3, (side, side, 3))


def _compose(rng: np.random.Generator, side: int, combos: tuple) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Draw one scene: RGB uint8 [S,S,3], layer label uint8 [S,S] (0 = background, k = k-th object), objects."""
    hi = np.zeros((side * SS, side * SS), np.uint8)
    full: list[int] = []  # supersampled area of each placed object
    visible = [0]  # its supersampled area still visible (index 0 unused)
    objs: list[dict] = []
    for _ in range(int(rng.integers(1, 5))):
        shape, colour = combos[rng.integers(len(combos))]
        size = SIZES[rng.integers(2)]
        for _attempt in range(25):
            r = rng.uniform(*_RADIUS[size]) * side
            cx, cy = rng.uniform(1.12 * r, side - 1.12 * r, 2)
            window, m = _rasterise(shape, cx, cy, r, side)
            covered = np.bincount(hi[window][m], minlength=len(objs) + 1)
            if all(visible[k] - covered[k] >= _MIN_VISIBLE * full[k - 1] for k in range(1, len(objs) + 1)):
                hi[window][m] = len(objs) + 1
                visible = [v - int(c) for v, c in zip(visible, covered)] + [int(m.sum())]
                full.append(visible[-1])
                objs.append({"shape": shape, "colour": colour, "size": size})
                break
    # Coverage of each final pixel by each layer: one bincount over (layer, final pixel) pairs.
    layers = len(objs) + 1
    cover = np.bincount(hi.ravel().astype(np.intp) * (side * side) + _block_index(side), minlength=layers * side * side)
    cover = cover.reshape(layers, side, side).astype(np.float32) / (SS * SS)
    label = cover.argmax(0).astype(np.uint8)
    img = _background(rng, side) * cover[0][..., None]
    for k, obj in enumerate(objs, start=1):
        colour = np.asarray(COLOURS[obj["colour"]], np.float32) + rng.normal(0, 8, 3)
        img += cover[k][..., None] * colour
    img += rng.normal(0, 4, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label, objs


# ----------------------------------------------------------------------------------------- captions


class _Caption:
    """A caption built piece by piece, recording which words describe which instances."""

    def __init__(self) -> None:
        self.text = ""
        self.mentions: list[dict] = []

    def add(self, piece: str, kind: str | None = None, ids: list[int] | None = None) -> _Caption:
        if kind:
            self.mentions.append(
                {
                    "start": len(self.text),
                    "end": len(self.text) + len(piece),
                    "word": piece,
                    "kind": kind,
                    "instance_ids": list(ids),
                }
            )
        self.text += piece
        return self


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def _noun_phrase(cap: _Caption, group: list[dict]) -> None:
    """'a small red circle' or 'two red circles' (size only when the whole group shares it)."""
    ids = [o["instance_id"] for o in group]
    if len(group) == 1:
        cap.add("a ")
    else:
        cap.add(_NUMBERS[len(group)], "count", ids).add(" ")
    if len({o["size"] for o in group}) == 1:
        cap.add(group[0]["size"], "size", ids).add(" ")
    cap.add(group[0]["colour"], "colour", ids).add(" ")
    cap.add(group[0]["shape"] if len(group) == 1 else _plural(group[0]["shape"]), "shape", ids)


def _where(obj: dict, rng: np.random.Generator) -> str:
    row, col = obj["_row"], obj["_col"]
    if row and col:
        return str(rng.choice([f"in the {row} {col} corner", f"at the {row} {col}", f"on the {row} {col}"]))
    if row:
        return str(rng.choice([f"at the {row}", f"near the {row}", f"along the {row} edge"]))
    if col:
        return str(rng.choice([f"on the {col}", f"on the {col} side", f"to the {col}"]))
    return str(rng.choice(["in the centre", "in the middle", "near the centre"]))


def _relation(a: dict, b: dict, rng: np.random.Generator) -> str:
    dx, dy = b["_cx"] - a["_cx"], b["_cy"] - a["_cy"]
    if abs(dx) >= abs(dy):
        side = "left" if dx > 0 else "right"
        return str(rng.choice([f"{side} of", f"to the {side} of", f"on the {side} of"]))
    return str(rng.choice(["above", "over"] if dy > 0 else ["below", "under"]))


def _join(cap: _Caption, items: list, render) -> None:
    for i, item in enumerate(items):
        if i:
            cap.add(" and " if i == len(items) - 1 else ", ")
        render(item)


def _groups(objs: list[dict]) -> list[list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for o in objs:
        groups.setdefault((o["colour"], o["shape"]), []).append(o)
    return list(groups.values())


def _captions(objs: list[dict], rng: np.random.Generator) -> list[dict]:
    """Five distinctive captions of different styles, in a seeded order."""
    n, all_ids = len(objs), [o["instance_id"] for o in objs]

    def placed(cap: _Caption, o: dict) -> None:
        _noun_phrase(cap, [o])
        cap.add(" " + _where(o, rng))

    def inventory() -> _Caption:
        cap = _Caption().add(str(rng.choice(["", "there is ", "an image of ", "a picture showing ", "a scene with "])))
        _join(cap, objs, lambda o: placed(cap, o))
        return cap

    def counts() -> _Caption:
        cap = _Caption().add(_NUMBERS[n], "count", all_ids)
        cap.add(
            " " + ("shape" if n == 1 else str(rng.choice(["shapes", "objects"]))) + str(rng.choice([": ", ", namely ", " - "]))
        )
        _join(cap, _groups(objs), lambda g: _noun_phrase(cap, g))
        if n == 1:
            cap.add(" " + _where(objs[0], rng))
        return cap

    def relation() -> _Caption:
        cap = _Caption()
        if n == 1:
            cap.add(str(rng.choice(["a single ", "only one shape, a ", "just a "])))
            o = objs[0]
            cap.add(o["size"], "size", [o["instance_id"]]).add(" ").add(o["colour"], "colour", [o["instance_id"]]).add(" ")
            cap.add(o["shape"], "shape", [o["instance_id"]]).add(" " + _where(o, rng))
            return cap
        desc = [(o["size"], o["colour"], o["shape"]) for o in objs]
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if desc[i] != desc[j]] or [(0, 1)]
        i, j = pairs[rng.integers(len(pairs))]
        if rng.random() < 0.5:
            i, j = j, i
        a, b = objs[i], objs[j]
        _noun_phrase(cap, [a])
        cap.add(" " + _relation(a, b, rng) + " ")
        _noun_phrase(cap, [b])
        rest = [o for k, o in enumerate(objs) if k not in (i, j)]
        if rest:
            cap.add(", " + str(rng.choice(["with ", "plus ", "and "])))
            _join(cap, rest, lambda o: placed(cap, o))
        return cap

    def left_to_right() -> _Caption:
        cap = _Caption()
        if n == 1:
            cap.add(_where(objs[0], rng) + " there is ")
            _noun_phrase(cap, objs)
            cap.add(str(rng.choice([" on a textured background", " and nothing else", ""])))
            return cap
        order = sorted(objs, key=lambda o: o["_cx"])
        cap.add(str(rng.choice(["from left to right: ", "left to right, ", "reading from the left: "])))
        _join(cap, order, lambda o: _noun_phrase(cap, [o]))
        return cap

    def largest() -> _Caption:
        big = max(objs, key=lambda o: o["area"])
        cap = _Caption().add(str(rng.choice(["the largest shape is ", "the biggest object is ", "most prominent is "])))
        placed(cap, big)
        others = [o for o in objs if o is not big]
        if others:
            cap.add(", " + str(rng.choice(["next to ", "alongside ", "with "])))
            _join(cap, _groups(others), lambda g: _noun_phrase(cap, g))
        return cap

    caps = [inventory(), counts(), relation(), left_to_right(), largest()]
    out = []
    for k in rng.permutation(len(caps)):
        cap = caps[k]
        if rng.random() < 0.5:
            cap.add(".")
        out.append({"text": cap.text, "mentions": cap.mentions})
    return out


# ------------------------------------------------------------------------------------------- scenes


def _split_of(image_id: int, n_train: int, n_val: int) -> str:
    return "train" if image_id <= n_train else "val" if image_id <= n_train + n_val else "test"


def _png(array: np.ndarray, palette: list[int] | None = None) -> bytes:
    img = Image.fromarray(array)
    if palette is not None:
        img = img.convert("P") if img.mode != "P" else img
        img.putpalette(palette)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _voc_palette() -> list[int]:
    """The standard VOC colour map (bit-interleaved), 256 entries."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


_PALETTE = _voc_palette()


def _voc_label(label: np.ndarray, objs: list[dict]) -> np.ndarray:
    """Shape class (1..6) of the top visible object per pixel, 255 on a 1-px ring around each object."""
    classes = np.zeros(len(objs) + 1, np.uint8)
    classes[1:] = [SHAPES.index(o["shape"]) + 1 for o in objs]
    out = classes[label]
    ring = np.zeros(label.shape, bool)
    for k in range(1, len(objs) + 1):
        m = label == k
        grown = m.copy()
        grown[1:] |= m[:-1]
        grown[:-1] |= m[1:]
        grown[:, 1:] |= m[:, :-1]
        grown[:, :-1] |= m[:, 1:]
        ring |= grown & ~m
    out[ring] = 255
    return out


def _make_image(image_id: int, seed: int, side: int, split: str) -> dict:
    """Everything about one image: pixels, label map, objects with masks, captions (no I/O)."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng([seed, image_id])
    combos = tuple(c for c in COMBOS if c not in RARE) if split == "train" else COMBOS
    img, label, objs = _compose(rng, side, combos)
    masks = np.asfortranarray(np.stack([label == k for k in range(1, len(objs) + 1)], axis=-1).astype(np.uint8))
    rles = mask_utils.encode(masks)
    for k, (obj, rle) in enumerate(zip(objs, rles), start=1):
        ys, xs = np.nonzero(masks[..., k - 1])
        if len(xs) == 0:
            raise RuntimeError(f"SynthScenes bug: object {k} of image {image_id} is not visible")
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        obj.update(
            instance_id=image_id * 10 + k,
            category_id=category_id(obj["shape"], obj["colour"]),
            bbox=[x0, y0, x1 - x0, y1 - y0],
            area=len(xs),
        )
        obj["_rle"] = {"size": [side, side], "counts": rle["counts"].decode("ascii")}
        obj["_cx"], obj["_cy"] = (x0 + x1) / 2, (y0 + y1) / 2
        obj["_col"] = "left" if obj["_cx"] < side / 3 else "right" if obj["_cx"] > 2 * side / 3 else ""
        obj["_row"] = "top" if obj["_cy"] < side / 3 else "bottom" if obj["_cy"] > 2 * side / 3 else ""
    return {"image": img, "label": label, "objects": objs, "captions": _captions(objs, rng)}


def _work(args: tuple) -> list[dict]:
    """Worker: make and write images [start, stop); return their records and file md5s."""
    tmp, seed, side, n_train, n_val, start, stop = args
    tmp = Path(tmp)
    records = []
    for image_id in range(start, stop):
        split = _split_of(image_id, n_train, n_val)
        scene = _make_image(image_id, seed, side, split)
        objs, stem = scene["objects"], f"{image_id:06d}"
        largest = max(objs, key=lambda o: o["area"])
        files = {f"images/{stem}.png": _png(scene["image"])}
        if split != "test":
            buf = io.BytesIO()
            Image.fromarray(scene["image"]).save(buf, format="JPEG", quality=95)
            files[f"VOCdevkit/SynthScenes/JPEGImages/{stem}.jpg"] = buf.getvalue()
            files[f"VOCdevkit/SynthScenes/SegmentationClass/{stem}.png"] = _png(_voc_label(scene["label"], objs), _PALETTE)
        md5s = {}
        for rel, data in files.items():
            (tmp / rel).write_bytes(data)
            md5s[rel] = hashlib.md5(data).hexdigest()
        if split != "test":  # the ImageFolder copy is a hard link to the same PNG where the file system allows
            folder = tmp / "imagefolder" / split / category_name(largest["shape"], largest["colour"]).replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tmp / f"images/{stem}.png", folder / f"{stem}.png")
            except OSError:
                (folder / f"{stem}.png").write_bytes(files[f"images/{stem}.png"])
            md5s[f"imagefolder/{split}/{folder.name}/{stem}.png"] = md5s[f"images/{stem}.png"]
        records.append(
            {
                "image_id": image_id,
                "split": split,
                "objects": objs,
                "captions": scene["captions"],
                "md5s": md5s,
            }
        )
    return records


# ------------------------------------------------------------------------------------------- writing


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _annotation_files(records: list[dict], side: int, splits: dict[str, list[dict]]) -> dict[str, object]:
    """Every JSON / text annotation file of the tree, as {relpath: object or str}."""
    out: dict[str, object] = {}
    pub = ("instance_id", "shape", "colour", "size", "category_id", "bbox", "area")
    out["scenes.json"] = {
        "images": [
            {
                "image_id": r["image_id"],
                "file_name": f"images/{r['image_id']:06d}.png",
                "split": r["split"],
                "width": side,
                "height": side,
                "objects": [{k: o[k] for k in pub} for o in r["objects"]],
                "captions": r["captions"],
            }
            for r in records
        ]
    }

    train_counts = {c: 0 for c in range(1, len(COMBOS) + 1)}
    for r in splits["train"]:
        for o in r["objects"]:
            train_counts[o["category_id"]] += 1
    common = [c for c in sorted(train_counts, key=lambda c: (-train_counts[c], c)) if COMBOS[c - 1] not in RARE]
    frequent = set(common[: len(common) // 2])
    categories = [
        {
            "id": cid,
            "name": category_name(s, c),
            "supercategory": s,
            "frequency": "r" if (s, c) in RARE else "f" if cid in frequent else "c",
            "image_count": 0,
        }
        for cid, (s, c) in enumerate(COMBOS, start=1)
    ]
    for r in splits["train"]:
        for cid in {o["category_id"] for o in r["objects"]}:
            categories[cid - 1]["image_count"] += 1
    all_ids = list(range(1, len(COMBOS) + 1))

    for split, recs in splits.items():
        images = [{"id": r["image_id"], "file_name": f"{r['image_id']:06d}.png", "width": side, "height": side} for r in recs]
        out[f"coco/annotations/captions_{split}.json"] = {
            "info": {"description": f"SynthScenes {split} captions"},
            "images": images,
            "annotations": [
                {"id": r["image_id"] * 10 + c, "image_id": r["image_id"], "caption": cap["text"]}
                for r in recs
                for c, cap in enumerate(r["captions"])
            ],
        }
        inst_images = []
        for img, r in zip(images, recs):
            present = {o["category_id"] for o in r["objects"]}
            # LVIS-style federated fields: SynthScenes labels are exhaustive, so every absent category is a verified negative.
            inst_images.append(
                {**img, "neg_category_ids": [c for c in all_ids if c not in present], "not_exhaustive_category_ids": []}
            )
        out[f"coco/annotations/instances_{split}.json"] = {
            "info": {"description": f"SynthScenes {split} instances"},
            "images": inst_images,
            "annotations": [
                {
                    "id": o["instance_id"],
                    "image_id": r["image_id"],
                    "category_id": o["category_id"],
                    "bbox": o["bbox"],
                    "area": o["area"],
                    "segmentation": o["_rle"],
                    "iscrowd": 0,
                }
                for r in recs
                for o in r["objects"]
            ],
            "categories": categories,
        }

    sentences, kimages = 0, []
    for imgid, r in enumerate(records):
        sents = []
        for cap in r["captions"]:
            sents.append({"raw": cap["text"], "tokens": _tokens(cap["text"]), "imgid": imgid, "sentid": sentences})
            sentences += 1
        kimages.append(
            {
                "filepath": "images",
                "filename": f"{r['image_id']:06d}.png",
                "imgid": imgid,
                "cocoid": r["image_id"],
                "split": r["split"],
                "sentids": [s["sentid"] for s in sents],
                "sentences": sents,
            }
        )
    out["karpathy/dataset_synthscenes.json"] = {"dataset": "synthscenes", "images": kimages}

    voc = "VOCdevkit/SynthScenes"
    out[f"{voc}/classnames.txt"] = "\n".join(["background", *SHAPES]) + "\n"
    out["imagefolder/classnames.txt"] = "\n".join(category_name(s, c) for s, c in COMBOS) + "\n"
    out["imagefolder/templates.txt"] = "\n".join(TEMPLATES) + "\n"
    for split in ("train", "val"):
        recs = splits[split]
        out[f"{voc}/ImageSets/Segmentation/{split}.txt"] = "".join(f"{r['image_id']:06d}\n" for r in recs)
        rows = [{"image": f"../images/{r['image_id']:06d}.png", "caption": cap["text"]} for r in recs for cap in r["captions"]]
        out[f"pairs/{split}.jsonl"] = "".join(json.dumps(row) + "\n" for row in rows)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["image", "caption"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        out[f"pairs/{split}.csv"] = buf.getvalue()
    return out


def synthscenes_dir(data_dir: str | os.PathLike, *, seed: int, n_train: int, n_val: int, image_size: int) -> Path:
    """The folder under `data_dir` of the tree with these generator parameters (task and checkpoint cards share it)."""
    return Path(data_dir) / f"synthscenes-seed{seed}-n{n_train}-v{n_val}-px{image_size}"


def ensure_synthscenes(data_dir: str | os.PathLike, **params: int) -> Path:
    """The tree with these generator parameters under `data_dir`, generated on first use."""
    target = synthscenes_dir(data_dir, **params)
    if not (target / "MANIFEST.json").is_file():
        generate_synthscenes(target, **params)
    else:
        _upgrade(target)
    return target


def _derived_files(scenes: dict, seed: int) -> dict[str, str]:
    """Files computed from scenes.json alone: written by a fresh generation and added to an older tree alike."""
    from sparc_eval.data.synth_negatives import hard_negative_files

    return hard_negative_files(scenes, seed)


def _upgrade(tree: Path) -> None:
    """Bring a tree of an older generator version to this one in place: version 1 lacks only the derived files,
    so they are written and the manifest is rewritten (last, atomically) byte for byte as a fresh generation's."""
    from sparc_eval.fileio import write_text_atomic

    manifest = json.loads((tree / "MANIFEST.json").read_text(encoding="utf-8"))
    version = manifest.get("generator_version")
    if version == GENERATOR_VERSION:
        return
    if version != 1:
        raise SparcEvalError(
            f"{tree} was written by SynthScenes generator version {version!r}, this sparc-eval writes {GENERATOR_VERSION}; "
            f"regenerate it (sparc-eval data synth --out {tree} --force)"
        )
    scenes = json.loads((tree / "scenes.json").read_text(encoding="utf-8"))
    files = dict(manifest["files"])
    for rel, text in _derived_files(scenes, manifest["seed"]).items():
        data = text.encode("utf-8")
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(tree / rel, text)
        files[rel] = hashlib.md5(data).hexdigest()
    manifest["generator_version"], manifest["files"] = GENERATOR_VERSION, dict(sorted(files.items()))
    write_text_atomic(tree / "MANIFEST.json", json.dumps(manifest, indent=1) + "\n")


def generate_synthscenes(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    n_train: int = 4000,
    n_val: int = 500,
    image_size: int = 64,
    workers: int = 0,
    force: bool = False,
) -> dict:
    """Write a SynthScenes tree under `out` (see docs/synthscenes.md); return a summary with counts and timing.

    The tree is built in a temporary sibling folder and renamed into place, so a failure leaves nothing
    behind. `out` may be missing or an empty folder; a non-empty `out` is replaced only with `force`.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if n_train < 1 or n_val < 1 or image_size < 16:
        raise SparcEvalError(
            f"SynthScenes needs n_train >= 1, n_val >= 1 and image_size >= 16 (got {n_train}, {n_val}, {image_size})"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise SparcEvalError(f"{out} already exists and is not empty; pass --force to replace it")
        if not _is_synthscenes(out):
            raise SparcEvalError(
                f"{out} is not a SynthScenes tree (no SynthScenes MANIFEST.json); refusing to replace it even with --force"
            )
    total = n_train + 2 * n_val
    workers = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    # A private temporary sibling (the tree of a killed generation is removed by the next one: fileio), made
    # readable like any folder before it is renamed into place.
    tmp = temporary_sibling(out, folder=True)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        for folder in ("images", "VOCdevkit/SynthScenes/JPEGImages", "VOCdevkit/SynthScenes/SegmentationClass"):
            (tmp / folder).mkdir(parents=True)
        chunk = max(8, min(128, total // (4 * workers) or 1))
        jobs = [(str(tmp), seed, image_size, n_train, n_val, s, min(s + chunk, total + 1)) for s in range(1, total + 1, chunk)]
        records = _run_jobs(jobs, workers, total)
        files = {rel: md5 for r in records for rel, md5 in r["md5s"].items()}
        splits = {s: [r for r in records if r["split"] == s] for s in ("train", "val", "test")}
        annotations = _annotation_files(records, image_size, splits)
        annotations.update(_derived_files(annotations["scenes.json"], seed))
        for rel, obj in annotations.items():
            text = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
            data = text.encode("utf-8")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
            files[rel] = hashlib.md5(data).hexdigest()
        manifest = {
            "generator": "synthscenes",
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "n_train": n_train,
            "n_val": n_val,
            "n_test": n_val,
            "image_size": image_size,
            "shapes": list(SHAPES),
            "colours": list(COLOURS),
            "sizes": list(SIZES),
            "files": dict(sorted(files.items())),
        }
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    return {
        "out": str(out),
        "images": total,
        "train": n_train,
        "val": n_val,
        "test": n_val,
        "files": len(files) + 1,
        "workers": workers,
        "seconds": round(seconds, 2),
        "images_per_s": round(total / seconds, 1),
    }


def _is_synthscenes(path: Path) -> bool:
    try:
        return json.loads((path / "MANIFEST.json").read_text(encoding="utf-8")).get("generator") == "synthscenes"
    except (OSError, ValueError, AttributeError):
        return False


def _run_jobs(jobs: list[tuple], workers: int, total: int) -> list[dict]:
    from sparc_eval.progress import make_progress

    records: list[dict] = []
    with make_progress(transient=True) as progress:
        task = progress.add_task("SynthScenes", total=total, info="")
        with contextlib.ExitStack() as stack:
            if workers <= 1:
                results = map(_work, jobs)
            else:
                import multiprocessing as mp

                results = stack.enter_context(mp.get_context().Pool(min(workers, len(jobs)))).imap(_work, jobs)
            for batch in results:
                records.extend(batch)
                progress.advance(task, len(batch))
    return records
