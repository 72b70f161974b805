"""Webdataset tar shards ("webdataset"): an index of each shard, random access to its samples, and the reader.

A shard is a POSIX tar file whose consecutive members sharing a key (the name up to its first dot, as the
`webdataset` library groups them) form one sample: `000000017.jpg`, `000000017.txt`, `000000017.cls`. The
keys read here are the conventions of open_clip, img2dataset and CLIP_benchmark:

- the image: `jpg`, `jpeg`, `png` or `webp` (the first present);
- `txt`: captions, one per line (CLIP_benchmark's retrieval sets; img2dataset writes one caption);
- `cls`: the class index as decimal text (CLIP_benchmark's classification sets).

Members group into samples by the `webdataset` library's own rule (tariterators.base_plus_ext), its metadata
members skipped as it skips them. Shards are indexed by reading their tar headers only (member offsets and sizes), so a sample is read with one
seek, whatever its place in the shard: evaluation readers are ordinary map-style datasets (slices per rank,
DataLoader workers, `--limit`), and training draws any sample of any shard by (seed, step).

The reader reads two layouts of `root`:

- CLIP_benchmark's: `root/{split}/` holding `nshards.txt` and `0.tar` ... `{n-1}.tar` (or just the tars),
  `root/classnames.txt`, `root/zeroshot_classification_templates.txt` and `root/dataset_type.txt`
  (`retrieval`, else classification);
- `sparc-eval data shards`: the tars beside a MANIFEST.json whose `webdataset` section names the split,
  the kind and the sample count and sha256 of every shard (a folder `root/{split}/` of that kind too).

A shard that is not a tar, is truncated (a member's data cut short, no end-of-archive blocks, fewer samples
than its manifest says), holds a key twice or a sample without the member a task needs is one line naming the
shard (and the sample); nothing is skipped.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from sparc_eval.data.common import read_lines, resolve
from sparc_eval.errors import SparcEvalError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
MANIFEST = "MANIFEST.json"
SHARDS_FORMAT = "sparc-eval webdataset shards v1"
KINDS = ("pairs", "retrieval", "classification")
# Members the webdataset library skips: its metadata (webdataset.tariterators.tar_file_iterator's skip_meta).
_META = re.compile(r"__[^/]*__($|/)")
_BLOCK = 512


@dataclass(frozen=True)
class Sample:
    """One sample of a shard: its key and, per extension (lower case), the (offset, size) of the member's bytes."""

    key: str
    members: dict[str, tuple[int, int]]

    def image_key(self) -> str | None:
        return next((ext for ext in IMAGE_KEYS if ext in self.members), None)


def index_shard(path: str | os.PathLike) -> list[Sample]:
    """The samples of tar shard `path`, in order, from its headers alone; a corrupt or truncated shard is one line."""
    from webdataset.tariterators import base_plus_ext  # the library's own rule: key = name up to the first dot

    path = Path(path)
    samples: list[Sample] = []
    seen: set[str] = set()
    current: tuple[str, dict[str, tuple[int, int]]] | None = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isreg() or _META.match(info.name):
                    continue
                key, ext = base_plus_ext(info.name)
                if key is None:
                    continue  # a name without an extension belongs to no sample (the library skips it too)
                ext = ext.lower()
                if current is None or current[0] != key:
                    if key in seen:
                        raise SparcEvalError(f"shard {path}: sample {key!r} appears twice (its members must be consecutive)")
                    seen.add(key)
                    current = (key, {})
                    samples.append(Sample(key, current[1]))
                if ext in current[1]:
                    raise SparcEvalError(f"shard {path}: sample {key!r} holds {ext!r} twice")
                current[1][ext] = (info.offset_data, info.size)
            end = tar.offset
    except tarfile.TarError as exc:
        raise SparcEvalError(
            f"shard {path} is not a readable tar file ({' '.join(str(exc).split())}); it may be truncated"
        ) from None
    except OSError as exc:
        raise SparcEvalError(f"shard {path} cannot be read ({exc.strerror or exc})") from None
    # tarfile stops quietly when a file ends between members: a complete tar closes with zero blocks.
    with open(path, "rb") as f:
        f.seek(end)
        tail = f.read(_BLOCK)
    if len(tail) < _BLOCK or tail.count(0) != _BLOCK:
        raise SparcEvalError(f"shard {path} is truncated (it ends without the tar end-of-archive blocks)")
    return samples


def read_member(path: Path, sample: Sample, ext: str, handle: Any = None) -> bytes:
    """The bytes of member `ext` of `sample` in shard `path` (through an open `handle` when given)."""
    if ext not in sample.members:
        raise SparcEvalError(f"shard {path}: sample {sample.key!r} has no {ext!r} member (it has {', '.join(sample.members)})")
    offset, size = sample.members[ext]
    f = handle if handle is not None else open(path, "rb")
    try:
        f.seek(offset)
        data = f.read(size)
    finally:
        if handle is None:
            f.close()
    if len(data) != size:
        raise SparcEvalError(f"shard {path} is truncated (sample {sample.key!r} is cut short)")
    return data


def decode_image(data: bytes, where: str) -> Image.Image:
    """Image bytes as an RGB PIL image, or one line naming `where` (shard and sample)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise SparcEvalError(f"{where}: image does not decode ({' '.join(str(exc).split())})") from None


def decode_text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SparcEvalError(f"{where}: text is not UTF-8") from None


def captions_of(data: bytes, where: str) -> list[str]:
    """A `txt` member's captions: its non-empty lines (at least one)."""
    captions = [line.strip() for line in decode_text(data, where).splitlines() if line.strip()]
    if not captions:
        raise SparcEvalError(f"{where}: the txt member holds no caption")
    return captions


def label_of(data: bytes, where: str) -> int:
    text = decode_text(data, where).strip()
    if not text.isdigit():
        raise SparcEvalError(f"{where}: cls member {text[:40]!r} is not a class index")
    return int(text)


# ------------------------------------------------------------------------------------------ manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The `webdataset` section of folder/MANIFEST.json (shard list with samples and sha256), or None without one."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        section = json.loads(path.read_text(encoding="utf-8")).get("webdataset")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise SparcEvalError(f"manifest {path} does not read ({exc})") from None
    if section is None:
        return None
    shards = section.get("shards") if isinstance(section, dict) else None
    if (
        not isinstance(shards, list)
        or section.get("kind") not in KINDS
        or not all(
            isinstance(s, dict)
            and isinstance(s.get("file"), str)
            and isinstance(s.get("samples"), int)
            and s["samples"] >= 0
            and isinstance(s.get("sha256"), str)
            for s in shards
        )
    ):
        raise SparcEvalError(
            f"manifest {path}: its webdataset section needs a kind ({', '.join(KINDS)}) and shards with file, samples and sha256"
        )
    for shard in shards:
        if "/" in shard["file"] or "\\" in shard["file"] or shard["file"] in ("", ".", ".."):
            raise SparcEvalError(f"manifest {path}: shard {shard['file']!r} is not a file name in {folder}")
    return section


def manifest_counts(shards: Sequence[Path]) -> dict[Path, int]:
    """Sample counts of `shards` that a MANIFEST.json beside them states (shards it does not list are absent)."""
    counts: dict[Path, int] = {}
    for folder in dict.fromkeys(p.parent for p in shards):
        section = read_manifest(folder)
        if section is not None:
            counts.update({folder / s["file"]: s["samples"] for s in section["shards"]})
    return {p: counts[p] for p in shards if p in counts}


def checked_index(path: Path, expected: int | None) -> list[Sample]:
    """index_shard(path), refused when a manifest states another sample count (a shard cut at a member boundary)."""
    samples = index_shard(path)
    if expected is not None and len(samples) != expected:
        raise SparcEvalError(
            f"shard {path} holds {len(samples)} samples, its manifest says {expected}; it is truncated or was replaced"
        )
    return samples


def expand_shards(pattern: str) -> list[Path]:
    """Shard paths of a brace pattern ('DIR/{000000..000031}.tar', as open_clip and webdataset take them),
    each of which must exist."""
    from webdataset.shardlists import expand_urls

    try:
        paths = [Path(p) for p in expand_urls(pattern)]
    except Exception as exc:  # noqa: BLE001 (braceexpand raises its own error types for bad ranges)
        raise SparcEvalError(f"shard pattern {pattern!r} does not expand ({exc})") from None
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SparcEvalError(f"shard pattern {pattern!r} names {missing[0]}, which does not exist{more}")
    if not paths:
        raise SparcEvalError(f"shard pattern {pattern!r} names no shard")
    return paths


# ------------------------------------------------------------------------------------------ datasets


class ShardReader:
    """Reads members of shards by offset, keeping one open file per shard in each process (workers included)."""

    def __init__(self) -> None:
        self._handles: dict[Path, Any] = {}
        self._pid = os.getpid()

    def read(self, path: Path, sample: Sample, ext: str) -> bytes:
        if self._pid != os.getpid():  # a forked DataLoader worker: its parent's file offsets are shared, so reopen
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(path)
        if handle is None:
            if len(self._handles) >= 64:
                self.close()
            try:
                handle = self._handles[path] = open(path, "rb")
            except OSError as exc:
                raise SparcEvalError(f"shard {path} cannot be read ({exc.strerror or exc})") from None
        return read_member(path, sample, ext, handle)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __getstate__(self) -> dict:
        return {"_handles": {}, "_pid": -1}  # a pickled copy (spawned worker) opens its own files


class ShardDataset(Dataset):
    """The samples of a list of shards in order. Items: {image, path} plus `label` (classification) or `captions`
    and `image_id` (retrieval). Attributes as the other readers': `paths` ("SHARD#KEY", unique), and `classnames` /
    `targets` or `captions` / `image_ids` / `captions_per_image`."""

    def __init__(self, shards: list[tuple[Path, list[Sample]]], kind: str, transform: Callable | None, root: Path):
        self.kind = kind
        self.transform = transform
        self.items = [(path, sample) for path, samples in shards for sample in samples]
        self.paths = [f"{path}#{sample.key}" for path, sample in self.items]
        self.shard_files = [path for path, _ in shards]
        self._reader = ShardReader()
        for path, sample in self.items:
            if sample.image_key() is None:
                raise SparcEvalError(f"shard {path}: sample {sample.key!r} has no image ({'/'.join(IMAGE_KEYS)} member)")

    def __len__(self) -> int:
        return len(self.items)

    def where(self, index: int) -> str:
        path, sample = self.items[index]
        return f"shard {path}, sample {sample.key!r}"

    def load(self, index: int) -> Any:
        path, sample = self.items[index]
        img = decode_image(self._reader.read(path, sample, sample.image_key()), self.where(index))  # type: ignore[arg-type]
        return self.transform(img) if self.transform is not None else img

    def text(self, index: int, ext: str) -> bytes:
        path, sample = self.items[index]
        return self._reader.read(path, sample, ext)

    def __getitem__(self, index: int) -> dict:
        item: dict[str, Any] = {"image": self.load(index), "path": self.paths[index]}
        if self.kind == "classification":
            item["label"] = self.targets[index]
        else:
            item["captions"] = self.captions[index]
            item["image_id"] = self.image_ids[index]
        return item


def _dataset_folder(root: Path, split: str) -> tuple[Path, dict[str, Any] | None]:
    """The folder holding the split's shards, and its manifest section (None for CLIP_benchmark's layout)."""
    for folder in (root / split, root):
        section = read_manifest(folder) if folder.is_dir() else None
        if section is not None and section.get("split", split) == split:
            return folder, section
    if (root / split).is_dir():
        return root / split, None
    raise SparcEvalError(
        f"webdataset {root} has no split {split!r}: neither a folder {root / split} of shards nor a {MANIFEST} for that split"
    )


def _clip_benchmark_shards(folder: Path) -> list[Path]:
    """nshards.txt's 0.tar ... {n-1}.tar, or every .tar of the folder in numeric order."""
    count_file = folder / "nshards.txt"
    if count_file.is_file():
        text = count_file.read_text(encoding="utf-8").strip()
        if not text.isdigit() or int(text) < 1:
            raise SparcEvalError(f"{count_file} must hold a positive number of shards, got {text[:40]!r}")
        paths = [folder / f"{i}.tar" for i in range(int(text))]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise SparcEvalError(f"{count_file} says {len(paths)} shards but {missing[0]} does not exist")
        return paths
    paths = sorted(folder.glob("*.tar"), key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.name))
    if not paths:
        raise SparcEvalError(f"webdataset split folder {folder} holds no .tar shard")
    return paths


def _dataset_kind(root: Path, section: dict[str, Any] | None) -> str:
    if section is not None:
        return "retrieval" if section["kind"] == "pairs" else section["kind"]
    type_file = root / "dataset_type.txt"
    kind = type_file.read_text(encoding="utf-8").strip().lower() if type_file.is_file() else "classification"
    if kind not in ("retrieval", "classification"):
        raise SparcEvalError(f"{type_file} says {kind[:40]!r}; sparc-eval reads retrieval and classification webdatasets")
    return kind


def shard_list(root: Path, split: str) -> tuple[list[Path], dict[Path, int], str]:
    """(shards of the split in order, manifest sample counts, kind) of a webdataset at `root`."""
    folder, section = _dataset_folder(root, split)
    if section is None:
        return _clip_benchmark_shards(folder), {}, _dataset_kind(root, None)
    shards = [folder / s["file"] for s in section["shards"]]
    missing = [p for p in shards if not p.is_file()]
    if missing:
        raise SparcEvalError(f"{folder / MANIFEST} lists shard {missing[0]}, which does not exist")
    return shards, {folder / s["file"]: s["samples"] for s in section["shards"]}, _dataset_kind(root, section)


def open_shards(shards: Iterable[Path], counts: dict[Path, int]) -> list[tuple[Path, list[Sample]]]:
    from sparc_eval.progress import track

    shards = list(shards)
    return [(p, checked_index(p, counts.get(p))) for p in track(shards, "indexing shards", total=len(shards))]


def read_webdataset(root: Path, split: str, *, transform: Callable | None = None, classnames: str | None = None) -> ShardDataset:
    """Option: `classnames` (classification: class-name file, relative to root or absolute; default
    root/classnames.txt, CLIP_benchmark's name). Retrieval when dataset_type.txt says so or the manifest's kind is
    retrieval or pairs."""
    shards, counts, kind = shard_list(root, split)
    dataset = ShardDataset(open_shards(shards, counts), kind, transform, root)
    if not len(dataset):
        raise SparcEvalError(f"split {split!r} of webdataset {root} holds no samples")
    if kind == "classification":
        names_file = resolve(root, classnames or "classnames.txt")
        dataset.classnames = read_lines(names_file, "class-name file")
        dataset.targets = [label_of(dataset.text(i, "cls"), dataset.where(i)) for i in range(len(dataset))]
        for i, label in enumerate(dataset.targets):
            if label >= len(dataset.classnames):
                raise SparcEvalError(
                    f"{dataset.where(i)}: class {label} is outside the {len(dataset.classnames)} classes of {names_file}"
                )
    else:
        dataset.captions = [captions_of(dataset.text(i, "txt"), dataset.where(i)) for i in range(len(dataset))]
        dataset.image_ids = list(range(len(dataset)))
        dataset.captions_per_image = min(len(c) for c in dataset.captions)
    return dataset


read_webdataset.requires = {"webdataset": "wds"}  # type: ignore[attr-defined]


def verify_shards(folder: Path) -> int:
    """`data check` of a folder written by `data shards`: every shard its manifest lists indexed (sample counts as
    stated), every image decoded and every txt / cls member parsed. Returns the number of samples."""
    from sparc_eval.fileio import inside

    section = read_manifest(folder)
    if section is None:
        raise SparcEvalError(f"{folder / MANIFEST} has no webdataset section")
    total = 0
    for entry in section["shards"]:
        path = inside(folder, entry["file"], f"{folder / MANIFEST}: shard", follow_links=False)
        samples = checked_index(path, entry["samples"])
        with open(path, "rb") as handle:
            for sample in samples:
                where = f"shard {path}, sample {sample.key!r}"
                image = sample.image_key()
                if image is None:
                    raise SparcEvalError(f"{where} has no image ({'/'.join(IMAGE_KEYS)} member)")
                decode_image(read_member(path, sample, image, handle), where)
                if section["kind"] == "classification":
                    label_of(read_member(path, sample, "cls", handle), where)
                else:
                    captions_of(read_member(path, sample, "txt", handle), where)
        total += len(samples)
    return total
