"""`sparc-eval data shards`: write a dataset as webdataset tar shards (with the `webdataset` library's ShardWriter).

Sources, read with the readers a task would use (so every failure names its file, nothing is skipped):

- image-text pairs (CSV/JSONL, a folder holding {split}.jsonl/.csv, or a SynthScenes root's pairs/): one sample
  per distinct image, all its captions in `txt` (one per line), so a training batch never holds an image twice;
- COCO captions and Karpathy splits: the same sample shape (CLIP_benchmark's retrieval convention);
- ImageFolder trees: the image and `cls` (the class index), with classnames.txt beside the shards.

Each sample also carries `json` ({"source": the image's path relative to the source, "image_id"}). Images are
stored as their original bytes (jpg, png, webp; other formats are re-encoded as png) after a decode check.
Shards are named 000000.tar, 000001.tar, ... with at most `shard_size` samples; their tar headers carry mtime 0,
so the same source gives byte-identical shards. Beside them: dataset_type.txt (CLIP_benchmark's name for the
kind) and MANIFEST.json: the md5 of every file (what `data check` verifies) and a `webdataset` section with the
kind, split, source and each shard's sample count and sha256 (what the readers and the trainer check).
Everything is written into a temporary sibling folder renamed onto the output folder at the end, so an
interrupted run leaves no half-written dataset.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sparc_eval.data.webdataset import IMAGE_KEYS, MANIFEST, SHARDS_FORMAT, index_shard
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import md5_file, sha256_file, temporary_sibling, write_error
from sparc_eval.progress import track

SOURCE_FORMATS = ("pairs", "karpathy", "coco-captions", "imagefolder")
KIND_OF_SOURCE = {"pairs": "pairs", "karpathy": "retrieval", "coco-captions": "retrieval", "imagefolder": "classification"}
TEMPLATES_FILE = "zeroshot_classification_templates.txt"  # CLIP_benchmark's name; copied when the source has one


@dataclass
class ShardSummary:
    out: Path
    kind: str
    n_samples: int
    n_shards: int


def detect_format(src: Path, split: str) -> str:
    """The source format of `src` when it can be told from the layout: a pairs file or folder, or an ImageFolder tree."""
    if src.is_file():
        if src.suffix in (".csv", ".jsonl"):
            return "pairs"
        raise SparcEvalError(f"source {src} is a file but not a .csv/.jsonl pairs file; give --format")
    if (src / "pairs").is_dir() or any((src / f"{split}{ext}").is_file() for ext in (".jsonl", ".csv")):
        return "pairs"
    if (src / "classnames.txt").is_file() and (src / split).is_dir():
        return "imagefolder"
    raise SparcEvalError(f"cannot tell the format of source {src}; give --format ({', '.join(SOURCE_FORMATS)})")


def _image_bytes(path: Path) -> tuple[str, bytes]:
    """(webdataset extension, bytes) of an image file, checked to decode; other formats become png."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SparcEvalError(f"image {path} cannot be read ({exc.strerror or exc})") from None
    ext = path.suffix.lower().lstrip(".")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if ext in IMAGE_KEYS:
                img.verify()
                return ext, data
            buffer = io.BytesIO()
            img.convert("RGB").save(buffer, format="PNG")
            return "png", buffer.getvalue()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise SparcEvalError(f"image {path} does not decode ({' '.join(str(exc).split())})") from None


def _relative(path: Path, src: Path) -> str:
    base = src if src.is_dir() else src.parent
    try:
        return Path(os.path.normpath(path)).relative_to(os.path.normpath(base)).as_posix()
    except ValueError:
        return str(path)


def _one_line(caption: str) -> str:
    return " ".join(caption.split())  # captions are stored one per line


def _samples(src: Path, fmt: str, split: str, options: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str] | None]:
    """The samples to write, each {path, captions | label, image_id}, and the class names (classification)."""
    from sparc_eval.data.registry import open_dataset

    if fmt == "pairs":
        root = src / "pairs" if src.is_dir() and (src / "pairs").is_dir() else src
        dataset = open_dataset("pairs", root, split, **options)
        by_image: dict[str, dict[str, Any]] = {}
        for path, caption in zip(dataset.image_paths, dataset.captions):
            entry = by_image.setdefault(os.path.normpath(path), {"path": Path(path), "captions": [], "image_id": None})
            entry["captions"].append(caption)
        samples = list(by_image.values())
        for i, sample in enumerate(samples):
            sample["image_id"] = i
        return samples, None
    dataset = open_dataset(fmt, src, split, **options)
    if fmt == "imagefolder":
        return [{"path": p, "label": t, "image_id": i} for i, (p, t) in enumerate(zip(dataset.paths, dataset.targets))], list(
            dataset.classnames
        )
    return [
        {"path": p, "captions": c, "image_id": i} for p, c, i in zip(dataset.paths, dataset.captions, dataset.image_ids)
    ], None


def write_shards(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fmt: str | None = None,
    split: str = "train",
    shard_size: int = 10_000,
    options: dict[str, Any] | None = None,
) -> ShardSummary:
    """Write `src` (format `fmt`, detected when None) split `split` as shards of at most `shard_size` samples into the
    new folder `out`."""
    import webdataset as wds

    src, out = Path(src), Path(out)
    if not src.exists():
        raise SparcEvalError(f"source {src} does not exist")
    if out.exists():
        raise SparcEvalError(f"output {out} already exists; choose another --out or remove it")
    if shard_size < 1:
        raise SparcEvalError(f"--shard-size must be at least 1, got {shard_size}")
    fmt = fmt or detect_format(src, split)
    if fmt not in SOURCE_FORMATS:
        raise SparcEvalError(f"--format must be one of {', '.join(SOURCE_FORMATS)}, got {fmt!r}")
    kind = KIND_OF_SOURCE[fmt]
    samples, classnames = _samples(src, fmt, split, options or {})
    if not samples:
        raise SparcEvalError(f"split {split!r} of {src} holds no images")

    tmp = temporary_sibling(out, folder=True)
    try:
        with wds.ShardWriter(str(tmp / "%06d.tar"), maxcount=shard_size, maxsize=float("inf"), verbose=0, mtime=0) as sink:
            for index, sample in enumerate(track(samples, f"writing shards of {src.name}")):
                ext, data = _image_bytes(sample["path"])
                record: dict[str, Any] = {
                    "__key__": f"{index:09d}",
                    ext: data,
                    "json": json.dumps({"source": _relative(sample["path"], src), "image_id": sample["image_id"]}).encode(),
                }
                if kind == "classification":
                    record["cls"] = str(sample["label"]).encode()
                else:
                    record["txt"] = "\n".join(_one_line(c) for c in sample["captions"]).encode("utf-8")
                sink.write(record)
        shards = sorted(tmp.glob("*.tar"))
        extra: dict[str, str] = {"dataset_type.txt": "classification\n" if kind == "classification" else "retrieval\n"}
        if classnames is not None:
            extra["classnames.txt"] = "".join(f"{name}\n" for name in classnames)
        for name, text in extra.items():
            (tmp / name).write_text(text, encoding="utf-8")
        if kind == "classification" and (src / TEMPLATES_FILE).is_file():
            shutil.copyfile(src / TEMPLATES_FILE, tmp / TEMPLATES_FILE)
        entries = [{"file": p.name, "samples": len(index_shard(p)), "sha256": sha256_file(p)} for p in shards]
        if sum(e["samples"] for e in entries) != len(samples):
            raise RuntimeError(f"wrote {sum(e['samples'] for e in entries)} samples of {len(samples)}")  # a bug, not user input
        manifest = {
            "files": {p.name: md5_file(p) for p in sorted(tmp.iterdir())},
            "webdataset": {
                "format": SHARDS_FORMAT,
                "kind": kind,
                "split": split,
                "source": str(src),
                "source_format": fmt,
                "samples": len(samples),
                "shard_size": shard_size,
                "shards": entries,
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for path in tmp.iterdir():
            os.chmod(path, 0o644)
        os.chmod(tmp, 0o755)
        os.rename(tmp, out)
    except OSError as exc:
        raise write_error(out, exc) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return ShardSummary(out, kind, len(samples), len(shards))
