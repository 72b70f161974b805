"""Build the layouts the real cards read from official files that need converting, not just unpacking.

- ImageNet (`data prepare imagenet`): ILSVRC2012_img_val.tar (50,000 JPEGs in one flat folder) and the devkit
  ILSVRC2012_devkit_t12.tar.gz become imagenet/val/<wnid>/ILSVRC2012_val_NNNNNNNN.JPEG, the ImageFolder layout
  imagenet-zs reads. The devkit's data/meta.mat lists the synsets; the 1,000 leaves (num_children == 0) carry
  the ILSVRC2012_ID (1..1000) that data/ILSVRC2012_validation_ground_truth.txt gives for each validation image,
  line k for ILSVRC2012_val_{k:08d}.JPEG. These are the facts torchvision.datasets.ImageNet relies on too.
- Flickr30k (`data prepare flickr30k`): flickr30k-images.tar.gz (or .zip) and the Karpathy split file become
  flickr30k/flickr30k-images/<id>.jpg beside flickr30k/dataset_flickr30k.json.
- Pascal Context 59 (run by `data get pascal-context`): the VOC 2010 trainval tar and the Pascal Context
  release's trainval.tar.gz (trainval/<id>.mat, each a 459-class `LabelMap`) become mmsegmentation's layout:
  VOCdevkit/VOC2010/SegmentationClassContext/<id>.png with 0 = every class outside the 59 and 1..59 the 59
  classes in ascending order of their 459-class ids (mmsegmentation's `_mapping`, which is the alphabetical
  order of its CLASSES), plus ImageSets/SegmentationContext/{train,val}.txt = VOC 2010 Main/{train,val}.txt.

Every archive is unpacked as hostile input (sparc_eval.data.archives), into a temporary folder that is renamed
into place only when the whole layout was built and checked.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from sparc_eval.data.archives import UnpackLimits, move_into_place, staged, unpack
from sparc_eval.errors import SparcEvalError
from sparc_eval.progress import track

# torchvision.datasets.imagenet.ARCHIVE_META: the md5 of the official files (reported, not enforced: a user may
# hold a repacked copy, and the layout checks below are what the card depends on).
IMAGENET_MD5 = {"val": "29b22e2961454d5413ddabcf34fc5622", "devkit": "fa75699e90414af021442c21a62c3abf"}
_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$")

# The 59 Pascal Context classes as ids of the 459-class release (mmsegmentation's pascal_context.py `_mapping`
# without its 0); in ascending order they are CONTEXT59_CLASSES' order (sparc_eval.data.voc).
CONTEXT59_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115, 144, 158, 159,
    162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354, 355, 360, 366, 368, 397,
    415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise SparcEvalError(f"{what} {path} does not exist")
    return path


def _fresh(dest: Path, force: bool, command: str) -> None:
    if (dest.exists() or dest.is_symlink()) and not force:
        raise SparcEvalError(f"{dest} already exists; pass --force to replace it ({command})")


def _replace(staged_path: Path, dest: Path) -> None:
    """Put `staged_path` at `dest`, replacing an older tree there (renamed aside first, removed after)."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.replaced")
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        dest.rename(old)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged_path.rename(dest)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


# ------------------------------------------------------------------------------ ImageNet


def _one_member(archive: Path, suffix: str, tmp: Path, limits: UnpackLimits) -> Path:
    """Unpack the single member of `archive` whose path ends with `suffix` into `tmp`."""
    found: list[PurePosixPath] = []

    def select(rel: PurePosixPath) -> PurePosixPath | None:
        if str(rel).endswith(suffix):
            found.append(rel)
            return PurePosixPath(f"{len(found)}", rel.name)
        return None

    unpack(archive, tmp, limits=limits, select=select)
    if len(found) != 1:
        how = "no member" if not found else f"{len(found)} members"
        raise SparcEvalError(f"devkit {archive} has {how} ending in {suffix} (expected ILSVRC2012_devkit_t12/{suffix})")
    return tmp / "1" / found[0].name


def read_devkit(devkit: Path, tmp: Path, limits: UnpackLimits) -> tuple[dict[int, str], list[int]]:
    """(ILSVRC2012_ID -> wnid of the 1,000 leaf synsets, the ground-truth ID of each validation image in order)."""
    import scipy.io

    meta_path = _one_member(devkit, "data/meta.mat", tmp / "meta", limits)
    truth_path = _one_member(devkit, "data/ILSVRC2012_validation_ground_truth.txt", tmp / "truth", limits)
    try:
        synsets = scipy.io.loadmat(str(meta_path), squeeze_me=True)["synsets"]
        fields = synsets.dtype.names or ()
    except (ValueError, KeyError, TypeError, OSError, NotImplementedError) as exc:
        raise SparcEvalError(f"devkit {devkit}: data/meta.mat is not the ILSVRC2012 synset table ({exc})") from None
    needed = ("ILSVRC2012_ID", "WNID", "num_children")
    if any(name not in fields for name in needed):
        raise SparcEvalError(f"devkit {devkit}: data/meta.mat 'synsets' lacks one of the fields {', '.join(needed)}")
    id_to_wnid: dict[int, str] = {}
    for record in np.atleast_1d(synsets):
        if int(record["num_children"]) != 0:
            continue  # an inner node of the WordNet hierarchy, not a class
        ident, wnid = int(record["ILSVRC2012_ID"]), str(record["WNID"])
        if ident in id_to_wnid or not re.match(r"^n\d{8}$", wnid):
            raise SparcEvalError(f"devkit {devkit}: data/meta.mat lists ILSVRC2012_ID {ident} twice or WNID {wnid!r}")
        id_to_wnid[ident] = wnid
    try:
        truth = [int(line) for line in truth_path.read_text(encoding="ascii").split()]
    except (ValueError, UnicodeDecodeError):
        raise SparcEvalError(
            f"devkit {devkit}: data/ILSVRC2012_validation_ground_truth.txt is not one integer per line"
        ) from None
    unknown = sorted({t for t in truth if t not in id_to_wnid})
    if unknown:
        raise SparcEvalError(
            f"devkit {devkit}: the validation ground truth names ILSVRC2012_ID {unknown[0]}, not a leaf synset of meta.mat"
        )
    return id_to_wnid, truth


def prepare_imagenet(
    val_tar: str | Path, devkit: str | Path, root: str | Path, *, force: bool = False, limits: UnpackLimits = UnpackLimits()
) -> list[str]:
    """Build ROOT/imagenet/val/<wnid>/ from the official validation tar and devkit; returns report lines."""
    from sparc_eval.builtin import HERE as BUILTIN_DIR
    from sparc_eval.data.imagefolder import read_classnames

    val_tar, devkit, root = _require_file(Path(val_tar), "--val-tar"), _require_file(Path(devkit), "--devkit"), Path(root)
    dest = root / "imagenet" / "val"
    command = "data prepare imagenet"
    _fresh(dest, force, command)
    known = set(read_classnames(BUILTIN_DIR / "classnames" / "imagenet.txt")[0])
    lines = []
    with staged(dest) as tmp:
        id_to_wnid, truth = read_devkit(devkit, tmp / "devkit", limits)
        strange = sorted(set(id_to_wnid.values()) - known)
        if strange:
            raise SparcEvalError(
                f"devkit {devkit}: synset {strange[0]} is not one of the 1,000 ImageNet classes imagenet-zs knows"
            )
        seen: set[int] = set()

        def select(rel: PurePosixPath) -> PurePosixPath | None:
            match = _VAL_NAME.match(rel.name)
            if match is None or len(rel.parts) > 2:
                raise SparcEvalError(f"--val-tar {val_tar}: member {str(rel)!r} is not an ILSVRC2012_val_NNNNNNNN.JPEG image")
            index = int(match.group(1))
            if not 1 <= index <= len(truth) or index in seen:
                raise SparcEvalError(
                    f"--val-tar {val_tar}: image {rel.name} has no line in the devkit's ground truth ({len(truth)} lines) or comes twice"
                )
            seen.add(index)
            return PurePosixPath("val", id_to_wnid[truth[index - 1]], rel.name)

        unpack(val_tar, tmp, limits=limits, select=select)
        if len(seen) != len(truth):
            missing = min(set(range(1, len(truth) + 1)) - seen)
            raise SparcEvalError(
                f"--val-tar {val_tar} holds {len(seen)} images but the devkit's ground truth has {len(truth)} lines "
                f"(first missing: ILSVRC2012_val_{missing:08d}.JPEG)"
            )
        _replace(tmp / "val", dest)
    for what, path in (("val", val_tar), ("devkit", devkit)):
        same = _md5(path) == IMAGENET_MD5[what]
        lines.append(
            f"{path.name}: md5 {'equals' if same else 'differs from'} torchvision's published md5 of the official file"
            + ("" if same else " (a repacked or partial copy: the layout was still checked image by image)")
        )
    lines.append(
        f"imagenet: {len(truth)} validation images in {len(set(id_to_wnid[t] for t in truth))} synset folders under {dest}"
    )
    return lines


# ------------------------------------------------------------------------------ Flickr30k


def _karpathy_file(karpathy: Path | None, root: Path, tmp: Path, limits: UnpackLimits) -> Path:
    """dataset_flickr30k.json from --karpathy (the JSON itself or Karpathy's caption_datasets.zip), else from ROOT."""
    if karpathy is None:
        path = root / "flickr30k" / "dataset_flickr30k.json"
        if not path.is_file():
            raise SparcEvalError(
                f"{path} does not exist: run `sparc-eval data get karpathy --root {root}` first, or pass --karpathy FILE"
            )
        return path
    _require_file(karpathy, "--karpathy")
    if karpathy.suffix == ".json":
        return karpathy
    unpack(karpathy, tmp, limits=limits, select=lambda rel: rel if rel.name == "dataset_flickr30k.json" else None)
    found = list(tmp.rglob("dataset_flickr30k.json"))
    if len(found) != 1:
        raise SparcEvalError(f"--karpathy {karpathy} holds no single dataset_flickr30k.json")
    return found[0]


def prepare_flickr30k(
    images: str | Path,
    root: str | Path,
    *,
    karpathy: str | Path | None = None,
    force: bool = False,
    limits: UnpackLimits = UnpackLimits(),
) -> list[str]:
    """Build ROOT/flickr30k/flickr30k-images/ (and dataset_flickr30k.json) from the official image archive."""
    images, root = _require_file(Path(images), "--images"), Path(root)
    dest = root / "flickr30k" / "flickr30k-images"
    _fresh(dest, force, "data prepare flickr30k")
    with staged(dest) as tmp:
        split_file = _karpathy_file(Path(karpathy) if karpathy else None, root, tmp / "karpathy", limits)
        try:
            entries = json.loads(split_file.read_text(encoding="utf-8"))["images"]
            wanted = {str(e["filename"]) for e in entries}
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise SparcEvalError(f"{split_file} is not a Karpathy split file (an 'images' list with 'filename's)") from None

        def select(rel: PurePosixPath) -> PurePosixPath | None:
            if rel.suffix.lower() != ".jpg":
                return None  # the archive's readme and folder entries
            if len(rel.parts) > 2:
                raise SparcEvalError(f"--images {images}: member {str(rel)!r} is nested deeper than flickr30k-images/<id>.jpg")
            return PurePosixPath("images", rel.name)

        unpack(images, tmp, limits=limits, select=select)
        got = {p.name for p in (tmp / "images").iterdir()} if (tmp / "images").is_dir() else set()
        missing = sorted(wanted - got)
        if missing:
            raise SparcEvalError(
                f"--images {images} lacks {len(missing)} image(s) that {split_file.name} lists, e.g. {missing[0]}; nothing was installed"
            )
        if karpathy is not None:
            target = root / "flickr30k" / "dataset_flickr30k.json"
            _fresh(target, force, "data prepare flickr30k")
            shutil.copyfile(split_file, tmp / "dataset_flickr30k.json")
            move_into_place(tmp / "dataset_flickr30k.json", target, replace=force)
        _replace(tmp / "images", dest)
    return [f"flickr30k: {len(got)} images under {dest} ({len(wanted)} listed by {split_file.name})"]


# ------------------------------------------------------------------------------ Pascal Context 59


def context59_lut() -> np.ndarray:
    """uint8 lookup table: 459-class id -> 1..59 for the 59 classes, 0 for everything else."""
    lut = np.zeros(1 << 16, np.uint8)
    lut[np.array(CONTEXT59_IDS)] = np.arange(1, len(CONTEXT59_IDS) + 1, dtype=np.uint8)
    return lut


def _convert_context(mats: Path, voc: Path, ids: list[str], lut: np.ndarray, labels_archive: Path) -> None:
    import scipy.io

    out = voc / "SegmentationClassContext"
    out.mkdir(parents=True, exist_ok=True)
    for image_id in track(ids, "Pascal Context labels"):
        mat = mats / f"{image_id}.mat"
        if not mat.is_file():
            raise SparcEvalError(f"{labels_archive} has no trainval/{image_id}.mat for VOC 2010 image {image_id}")
        try:
            label_map = scipy.io.loadmat(str(mat))["LabelMap"]
        except (ValueError, KeyError, TypeError, OSError, NotImplementedError) as exc:
            raise SparcEvalError(f"{labels_archive}: trainval/{image_id}.mat holds no readable LabelMap ({exc})") from None
        with Image.open(voc / "JPEGImages" / f"{image_id}.jpg") as img:
            width, height = img.size
        if label_map.shape != (height, width) or not np.issubdtype(label_map.dtype, np.integer) or label_map.min() < 0:
            raise SparcEvalError(
                f"{labels_archive}: trainval/{image_id}.mat LabelMap is {label_map.dtype} {label_map.shape}, "
                f"not integer labels of its {width}x{height} image"
            )
        Image.fromarray(lut[label_map.astype(np.int64).clip(0, len(lut) - 1)], mode="L").save(out / f"{image_id}.png")


def build_pascal_context(
    images_tar: Path, labels_archive: Path, root: Path, *, force: bool = False, limits: UnpackLimits = UnpackLimits()
) -> None:
    """VOCdevkit/VOC2010 with the Pascal Context 59 labels and split files (the layout context-seg reads)."""
    dest = root / "VOCdevkit" / "VOC2010"
    prefix = ("VOCdevkit", "VOC2010")
    with staged(dest) as tmp:
        voc = tmp / "VOC2010"
        unpack(images_tar, voc, limits=limits, select=_under(prefix))
        splits = {}
        for split in ("train", "val"):
            split_file = voc / "ImageSets" / "Main" / f"{split}.txt"
            if not split_file.is_file():
                raise SparcEvalError(
                    f"{images_tar} has no VOCdevkit/VOC2010/ImageSets/Main/{split}.txt; is it the VOC 2010 trainval tar?"
                )
            splits[split] = [line.split()[0] for line in split_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        unpack(labels_archive, tmp / "context", limits=limits, select=lambda rel: rel if rel.suffix == ".mat" else None)
        found = list((tmp / "context").rglob("*.mat"))
        if not found:
            raise SparcEvalError(
                f"{labels_archive} holds no trainval/<id>.mat label files; is it Pascal Context's trainval.tar.gz?"
            )
        _convert_context(found[0].parent, voc, splits["train"] + splits["val"], context59_lut(), labels_archive)
        sets = voc / "ImageSets" / "SegmentationContext"
        sets.mkdir(parents=True, exist_ok=True)
        for split, ids in splits.items():
            (sets / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
        for entry in sorted(voc.iterdir()):
            move_into_place(entry, dest / entry.name, replace=force)


def _under(prefix: tuple[str, ...]) -> Callable[[PurePosixPath], PurePosixPath | None]:
    """A member selector that keeps what lies under `prefix`, relative to it."""

    def select(rel: PurePosixPath) -> PurePosixPath | None:
        if rel.parts[: len(prefix)] != prefix or len(rel.parts) == len(prefix):
            return None
        return PurePosixPath(*rel.parts[len(prefix) :])

    return select
