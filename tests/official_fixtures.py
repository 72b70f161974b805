"""Tiny stand-ins for the official dataset files, in their exact file names and member layouts, and a loopback
HTTP server that serves them (Range requests, a connection dropped on purpose, a request log).

Layouts follow the official archives: COCO's zips hold `train2014/COCO_train2014_*.jpg`, `val2017/*.jpg`,
`annotations/*.json`; Karpathy's caption_datasets.zip holds dataset_{coco,flickr30k,flickr8k}.json at its top;
the VOC tars hold `VOCdevkit/VOC20xx/...`; Pascal Context's trainval.tar.gz holds `trainval/<id>.mat` (a uint16
459-class `LabelMap`) and `labels.txt`; the LVIS zips hold one JSON each; ILSVRC2012_img_val.tar is a flat tar of
ILSVRC2012_val_NNNNNNNN.JPEG and the devkit holds ILSVRC2012_devkit_t12/data/{meta.mat,
ILSVRC2012_validation_ground_truth.txt}; flickr30k-images.tar.gz holds flickr30k-images/<id>.jpg.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from sparc_eval.data.download import BUILTIN_SOURCES
from sparc_eval.data.voc import CONTEXT59_CLASSES

# ------------------------------------------------------------------------------ tiny files


def jpeg(w: int = 40, h: int = 30, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def png(array: np.ndarray, mode: str = "L") -> bytes:
    img = Image.fromarray(array.astype(np.uint8), mode="L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette([c for i in range(256) for c in (i, (i * 7) % 256, (i * 13) % 256)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes], folders: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for folder in folders:
            zf.writestr(folder.rstrip("/") + "/", b"")
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_bytes(members: dict[str, bytes], gz: bool = False, folders: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for folder in folders:
            info = tarfile.TarInfo(folder.rstrip("/"))
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tf.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _caption_sentences(words: list[str]) -> list[dict]:
    return [{"raw": " ".join(words[i:] + words[:i]) + ".", "tokens": words} for i in range(5)]


# ------------------------------------------------------------------------------ COCO 2014 + Karpathy

COCO14 = {"train2014": [9, 25], "val2014": [42, 73, 74]}


def coco2014_files() -> dict[str, bytes]:
    files = {}
    for folder, ids in COCO14.items():
        files[f"{folder}.zip"] = zip_bytes({f"{folder}/COCO_{folder}_{i:012d}.jpg": jpeg(seed=i) for i in ids}, folders=(folder,))
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg", "width": 40, "height": 30} for i in COCO14["val2014"]]
    caps = {
        "images": images,
        "annotations": [{"id": n, "image_id": i, "caption": "a dog"} for n, i in enumerate(COCO14["val2014"])],
    }
    inst = {"images": images, "annotations": [], "categories": [{"id": 18, "name": "dog", "supercategory": "animal"}]}
    files["annotations_trainval2014.zip"] = zip_bytes(
        {
            "annotations/captions_val2014.json": json.dumps(caps).encode(),
            "annotations/instances_val2014.json": json.dumps(inst).encode(),
        }
    )
    splits = {9: "train", 25: "train", 42: "test", 73: "test", 74: "restval"}
    words = [["a", "dog", "on", "the", "grass"], ["a", "cat", "on", "a", "sofa"], ["a", "man", "with", "a", "dog"]]
    coco = {
        "dataset": "coco",
        "images": [
            {
                "filepath": "train2014" if splits[i] == "train" else "val2014",
                "sentids": [5 * n + k for k in range(5)],
                "filename": f"COCO_{'train2014' if splits[i] == 'train' else 'val2014'}_{i:012d}.jpg",
                "imgid": n,
                "split": splits[i],
                "sentences": [{**s, "imgid": n, "sentid": 5 * n + k} for k, s in enumerate(_caption_sentences(words[n % 3]))],
                "cocoid": i,
            }
            for n, i in enumerate(sorted(splits))
        ],
    }
    flickr = {
        "dataset": "flickr30k",
        "images": [
            {"sentids": [], "imgid": n, "sentences": _caption_sentences(words[n % 3]), "split": split, "filename": f"{fid}.jpg"}
            for n, (fid, split) in enumerate([(1000092795, "test"), (10002456, "test"), (1001465944, "train")])
        ],
    }
    files["caption_datasets.zip"] = zip_bytes(
        {
            "dataset_coco.json": json.dumps(coco).encode(),
            "dataset_flickr30k.json": json.dumps(flickr).encode(),
            "dataset_flickr8k.json": json.dumps({"dataset": "flickr8k", "images": []}).encode(),
        }
    )
    return files


FLICKR_IDS = (1000092795, 10002456, 1001465944)


def flickr30k_images_tgz() -> bytes:
    members = {f"flickr30k-images/{i}.jpg": jpeg(seed=i % 1000) for i in FLICKR_IDS}
    members["flickr30k-images/readme.txt"] = b"Flickr30k images\n"
    return tar_bytes(members, gz=True, folders=("flickr30k-images",))


# ------------------------------------------------------------------------------ COCO 2017 + LVIS + SugarCrepe

COCO17 = {"train2017": [9, 25, 30], "val2017": [139, 285]}
CATEGORIES = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "animal", "id": 17, "name": "cat"},
    {"supercategory": "animal", "id": 18, "name": "dog"},
]


def _polygon(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _instances(ids: list[int], folder: str, crowd: bool = False) -> dict:
    images = [
        {
            "license": 1,
            "file_name": f"{i:012d}.jpg",
            "coco_url": f"http://images.cocodataset.org/{folder}/{i:012d}.jpg",
            "height": 30,
            "width": 40,
            "id": i,
        }
        for i in ids
    ]
    anns, n = [], 1000 * ids[0]
    for k, i in enumerate(ids):
        for cat, (x, y, w, h) in ((1, (2, 3, 12, 20)), (18 if k % 2 else 17, (20, 6, 15, 14))):
            n += 1
            anns.append(
                {
                    "id": n,
                    "image_id": i,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": float(w * h),
                    "segmentation": _polygon(x, y, w, h),
                    "iscrowd": 0,
                }
            )
    if crowd:  # COCO writes crowd regions as uncompressed RLE
        m = np.zeros((30, 40), np.uint8)
        m[20:28, 2:38] = 1
        n += 1
        segmentation = {"size": [30, 40], "counts": _uncompressed_counts(m)}
        anns.append(
            {
                "id": n,
                "image_id": ids[0],
                "category_id": 1,
                "bbox": [2, 20, 36, 8],
                "area": 288.0,
                "iscrowd": 1,
                "segmentation": segmentation,
            }
        )
    return {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": CATEGORIES}


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return [int(c) for c in counts]


def coco2017_files() -> dict[str, bytes]:
    files = {
        f"{folder}.zip": zip_bytes({f"{folder}/{i:012d}.jpg": jpeg(seed=i) for i in ids}, folders=(folder,))
        for folder, ids in COCO17.items()
    }
    members = {}
    for split, ids in COCO17.items():
        inst = _instances(ids, split, crowd=split == "val2017")
        members[f"annotations/instances_{split}.json"] = json.dumps(inst).encode()
        caps = [
            {"id": 10 * i + k, "image_id": i, "caption": text}
            for i in ids
            for k, text in enumerate(
                ["A person with a dog on the grass.", "A cat sits next to a person.", "Two people and a dog."]
            )
        ]
        members[f"annotations/captions_{split}.json"] = json.dumps({**inst, "annotations": caps, "categories": []}).encode()
    files["annotations_trainval2017.zip"] = zip_bytes(members, folders=("annotations",))
    return files


LVIS_CATEGORIES = [
    {
        "id": 1,
        "name": "person",
        "synonyms": ["person"],
        "synset": "person.n.01",
        "def": "a human",
        "frequency": "f",
        "image_count": 3,
        "instance_count": 3,
    },
    {
        "id": 2,
        "name": "dog",
        "synonyms": ["dog"],
        "synset": "dog.n.01",
        "def": "a dog",
        "frequency": "c",
        "image_count": 2,
        "instance_count": 2,
    },
    {
        "id": 3,
        "name": "cat",
        "synonyms": ["cat"],
        "synset": "cat.n.01",
        "def": "a cat",
        "frequency": "r",
        "image_count": 1,
        "instance_count": 1,
    },
]


def _lvis(images: list[tuple[int, str]], cats: list[int]) -> dict:
    imgs, anns = [], []
    for k, (i, folder) in enumerate(images):
        imgs.append(
            {
                "id": i,
                "coco_url": f"http://images.cocodataset.org/{folder}/{i:012d}.jpg",
                "height": 30,
                "width": 40,
                "neg_category_ids": [c for c in (1, 2, 3) if c not in cats][:1],
                "not_exhaustive_category_ids": [],
                "license": 1,
                "flickr_url": "",
                "date_captured": "2013-11-14",
            }
        )
        for cat, (x, y, w, h) in ((1, (2, 3, 12, 20)), (cats[(k % (len(cats) - 1)) + 1], (20, 6, 15, 14))):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": float(w * h),
                    "segmentation": _polygon(x, y, w, h),
                }
            )
    return {"info": {}, "licenses": [], "images": imgs, "annotations": anns, "categories": LVIS_CATEGORIES}


def lvis_files() -> dict[str, bytes]:
    train = _lvis([(9, "train2017"), (25, "train2017")], [1, 2])
    # LVIS v1 val draws from both COCO folders: 139 from val2017, 30 from train2017.
    val = _lvis([(139, "val2017"), (30, "train2017")], [1, 2, 3])
    return {
        "lvis_v1_train.json.zip": zip_bytes({"lvis_v1_train.json": json.dumps(train).encode()}),
        "lvis_v1_val.json.zip": zip_bytes({"lvis_v1_val.json": json.dumps(val).encode()}),
    }


SUGARCREPE_TYPES = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def sugarcrepe_files() -> dict[str, bytes]:
    return {
        f"{kind}.json": json.dumps(
            {
                "0": {
                    "filename": "000000000139.jpg",
                    "caption": "A person with a dog.",
                    "negative_caption": f"A person without a dog ({kind}).",
                },
                "1": {
                    "filename": "000000000285.jpg",
                    "caption": "A cat near a person.",
                    "negative_caption": "A person near a cat.",
                },
            },
            indent=4,
        ).encode()
        for kind in SUGARCREPE_TYPES
    }


# ------------------------------------------------------------------------------ VOC 2012, VOC 2010 + Pascal Context

VOC12 = {"train": ["2007_000032"], "val": ["2007_000033", "2007_000039"]}
VOC10 = {"train": ["2008_000002"], "val": ["2008_000003", "2008_000007"]}


def voc2012_tar() -> bytes:
    base = "VOCdevkit/VOC2012"
    members = {}
    for n, i in enumerate(VOC12["train"] + VOC12["val"]):
        members[f"{base}/JPEGImages/{i}.jpg"] = jpeg(seed=n)
        label = np.zeros((30, 40), np.uint8)
        label[5:20, 5:20] = 15  # person
        label[18:28, 22:38] = 12  # dog
        label[4, :] = 255  # object boundary: ignored
        members[f"{base}/SegmentationClass/{i}.png"] = png(label, "P")
        members[f"{base}/Annotations/{i}.xml"] = f"<annotation><filename>{i}.jpg</filename></annotation>".encode()
    for split, ids in {**VOC12, "trainval": VOC12["train"] + VOC12["val"]}.items():
        members[f"{base}/ImageSets/Segmentation/{split}.txt"] = "".join(f"{i}\n" for i in ids).encode()
    return tar_bytes(members, folders=("VOCdevkit", base, f"{base}/JPEGImages"))


# Pascal Context 459-class ids used in the fixture: aeroplane 2 -> 1, bag 9 -> 2, person 284 -> 37, wood 458 -> 59;
# accordion 1 and 100 are not among the 59 -> 0.
CONTEXT_LABELMAP_VALUES = {2: 1, 9: 2, 284: 37, 458: 59, 1: 0, 100: 0}


def context_label_map(seed: int) -> np.ndarray:
    keys = np.array(list(CONTEXT_LABELMAP_VALUES))
    return keys[np.random.default_rng(seed).integers(0, len(keys), (30, 40))].astype(np.uint16)


def pascal_context_files() -> dict[str, bytes]:
    import scipy.io

    base = "VOCdevkit/VOC2010"
    voc = {}
    for n, i in enumerate(VOC10["train"] + VOC10["val"]):
        voc[f"{base}/JPEGImages/{i}.jpg"] = jpeg(seed=100 + n)
    for split, ids in {**VOC10, "trainval": VOC10["train"] + VOC10["val"]}.items():
        voc[f"{base}/ImageSets/Main/{split}.txt"] = "".join(f"{i}\n" for i in ids).encode()
    context = {"labels.txt": "".join(f"{k}: class{k}\n" for k in range(1, 460)).encode()}
    for n, i in enumerate(VOC10["train"] + VOC10["val"]):
        buf = io.BytesIO()
        scipy.io.savemat(buf, {"LabelMap": context_label_map(n)})
        context[f"trainval/{i}.mat"] = buf.getvalue()
    return {
        "VOCtrainval_03-May-2010.tar": tar_bytes(voc, folders=("VOCdevkit", base)),
        "trainval.tar.gz": tar_bytes(context, gz=True, folders=("trainval",)),
    }


assert CONTEXT59_CLASSES[0] == "aeroplane" and CONTEXT59_CLASSES[36] == "person" and CONTEXT59_CLASSES[58] == "wood"


# ------------------------------------------------------------------------------ ImageNet (prepare)

IMAGENET_LEAVES = [
    (1, "n01440764", "tench, Tinca tinca"),
    (2, "n01443537", "goldfish, Carassius auratus"),
    (3, "n01484850", "great white shark"),
]
IMAGENET_TRUTH = [3, 1, 2, 1, 3, 2]


def imagenet_files() -> dict[str, bytes]:
    import scipy.io

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"]
    synsets = np.zeros((len(IMAGENET_LEAVES) + 1, 1), dtype=[(f, object) for f in fields])
    for row, (ident, wnid, words) in enumerate(IMAGENET_LEAVES):
        synsets[row, 0] = (
            np.array([[ident]], np.uint16),
            wnid,
            words,
            "a fish",
            np.array([[0]], np.uint8),
            np.zeros((1, 0), np.uint16),
            np.array([[0]], np.uint8),
            np.array([[1300]], np.uint16),
        )
    # An inner node of the hierarchy (num_children > 0) is not a class.
    synsets[-1, 0] = (
        np.array([[1001]], np.uint16),
        "n01439121",
        "cyprinid",
        "a fish family",
        np.array([[2]], np.uint8),
        np.array([[1, 2]], np.uint16),
        np.array([[1]], np.uint8),
        np.array([[0]], np.uint16),
    )
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    devkit = {
        "ILSVRC2012_devkit_t12/COPYING": b"licence\n",
        "ILSVRC2012_devkit_t12/readme.txt": b"devkit\n",
        "ILSVRC2012_devkit_t12/data/meta.mat": meta.getvalue(),
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": "".join(f"{t}\n" for t in IMAGENET_TRUTH).encode(),
    }
    val = {f"ILSVRC2012_val_{k:08d}.JPEG": jpeg(seed=500 + k) for k in range(1, len(IMAGENET_TRUTH) + 1)}
    return {
        "ILSVRC2012_img_val.tar": tar_bytes(val),
        "ILSVRC2012_devkit_t12.tar.gz": tar_bytes(
            devkit, gz=True, folders=("ILSVRC2012_devkit_t12", "ILSVRC2012_devkit_t12/data")
        ),
    }


def official_files() -> dict[str, bytes]:
    """Every file the built-in sources list names, as tiny stand-ins with the official names."""
    return {
        **coco2014_files(),
        **coco2017_files(),
        **lvis_files(),
        **sugarcrepe_files(),
        "VOCtrainval_11-May-2012.tar": voc2012_tar(),
        **pascal_context_files(),
    }


# ------------------------------------------------------------------------------ the loopback server


@dataclass
class ServerState:
    files: dict[str, bytes]
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    drops: dict[str, list[int]] = field(default_factory=dict)  # name -> bytes sent before cutting, one per request
    honour_ranges: bool = True
    max_requests: int = 500


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # noqa: ANN002 (quiet)
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        name = self.path.lstrip("/")
        state.requests.append((name, dict(self.headers)))
        if len(state.requests) > state.max_requests:
            self.send_error(429)
            return
        data = state.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.match(r"^bytes=(\d+)-$", self.headers.get("Range", ""))
        if match and state.honour_ranges:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cuts = state.drops.get(name)
        if cuts:
            cut = cuts.pop(0)
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (a free port), started and stopped by the test that uses it."""

    def __init__(self, files: dict[str, bytes]):
        self.state = ServerState(dict(files))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.state = self.state  # type: ignore[attr-defined]
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def ranges_asked(self, name: str) -> list[str]:
        return [headers["Range"] for n, headers in self.state.requests if n == name and "Range" in headers]


def sources_for(server_url: str, files: dict[str, bytes], path: Path) -> Path:
    """The built-in sources list with every URL on the loopback server and each listed file's size and sha256
    those of the stand-in, marked verified: the install steps (unpack / pick / place / build) are the shipped ones."""
    raw = yaml.safe_load(BUILTIN_SOURCES.read_text(encoding="utf-8"))
    for ds in raw["datasets"].values():
        for f in ds.get("files", []):
            data = files[f["name"]]
            f.update(url=f"{server_url}/{f['name']}", size=len(data), sha256=hashlib.sha256(data).hexdigest(), verified=True)
            f.pop("md5", None)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def gzip_bomb(n_bytes: int) -> bytes:
    return gzip.compress(b"\0" * n_bytes)
