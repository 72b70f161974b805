"""The `sugarcrepe` reader: image-text hard negatives in SugarCrepe's released layout (Hsieh et al. 2023).

One JSON file per negative type in the `annotations` folder (`replace_obj.json`, `replace_att.json`,
`replace_rel.json`, `swap_obj.json`, `swap_att.json`, `add_obj.json`, `add_att.json` in the release), each
an object keyed by entry id: `{"0": {"filename": "000000544519.jpg", "caption": "...", "negative_caption":
"..."}, ...}`. `filename` is relative to the `images` folder (COCO val2017 for SugarCrepe). As an extension,
`negative_caption` may be a list of captions (several negatives for one positive). SynthScenes writes its own
hard negatives in this layout (sparc_eval.data.synth_negatives), so one reader serves both.

Options: `annotations` (folder of the type files, relative to the root; "{split}" is replaced by the split),
`images` (image folder, relative to the root), `types` (the file stems to read, in order; default the seven
of the release). Every entry is checked when the dataset opens: a missing file or key, an empty caption,
an image that is not there or a filename leading outside the image folder is one error naming the file and
the entry.

Items are the distinct images in order of first appearance, each with its entries:
`{"image", "path", "entries": [{"id": "<type>/<entry id>", "type", "key", "positive", "negatives"}]}`, so a
model encodes each image once however many types use it. `--limit N` keeps the first N images.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparc_eval.data.common import ImageDataset, load_json, require_dir, resolve
from sparc_eval.data.layout import Need, folder_needs, readable
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import inside

SUGARCREPE_TYPES = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att")
_KEYS = ("filename", "caption", "negative_caption")


class HardNegativeDataset(ImageDataset):
    """Distinct images with their hard-negative entries (see the module docstring)."""

    def __init__(self, paths: list[Path], entries: list[list[dict[str, Any]]], types: list[str], transform: Callable | None):
        super().__init__(paths, transform)
        self.entries = entries
        self.types = types

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.load(index), "path": str(self.paths[index]), "entries": self.entries[index]}


def read_sugarcrepe(
    root: Path,
    split: str,
    *,
    transform: Callable | None = None,
    annotations: str = ".",
    images: str = ".",
    types: tuple[str, ...] = SUGARCREPE_TYPES,
) -> HardNegativeDataset:
    """Options: `annotations` (folder of the type files; '{split}' is replaced by the split) and `images` (the
    image folder), both relative to root or absolute; `types` (the file stems to read, in order)."""
    if not types or not all(isinstance(t, str) and t for t in types) or len(set(types)) != len(types):
        raise SparcEvalError(f"the sugarcrepe reader's 'types' must be distinct file stems, got {list(types)!r}")
    image_dir = require_dir(resolve(root, images), "image folder")
    annotations_dir = require_dir(resolve(root, annotations, split), "SugarCrepe annotation folder")

    listing: dict[Path, set[str]] = {}
    index_of: dict[Path, int] = {}
    paths: list[Path] = []
    entries: list[list[dict[str, Any]]] = []
    for kind in types:
        path = inside(annotations_dir, f"{kind}.json", "SugarCrepe type", follow_links=False)
        table = load_json(path, "SugarCrepe file")
        if not isinstance(table, dict):
            raise SparcEvalError(f"SugarCrepe file {path} must hold an object keyed by entry id, not a {type(table).__name__}")
        for key, entry in table.items():
            where = f"SugarCrepe file {path} entry {key!r}"
            if not isinstance(entry, dict):
                raise SparcEvalError(f"{where} must be an object with keys {', '.join(_KEYS)}")
            missing = [k for k in _KEYS if k not in entry]
            if missing:
                raise SparcEvalError(f"{where} has no {missing[0]!r}")
            positive, negatives = entry["caption"], entry["negative_caption"]
            negatives = negatives if isinstance(negatives, list) else [negatives]
            for name, text in [("caption", positive), *(("negative_caption", n) for n in negatives)]:
                if not isinstance(text, str) or not text.strip():
                    raise SparcEvalError(f"{where} has an empty or non-text {name!r}: {text!r}")
            if not negatives:
                raise SparcEvalError(f"{where} has an empty 'negative_caption' list")
            if not isinstance(entry["filename"], str):
                raise SparcEvalError(f"{where} has a non-text 'filename': {entry['filename']!r}")
            image = inside(image_dir, entry["filename"], f"{where}: image", follow_links=False)
            folder = image.parent
            if folder not in listing:
                listing[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
            if image.name not in listing[folder]:
                raise SparcEvalError(f"{where} refers to image {image}, which does not exist")
            if image not in index_of:
                index_of[image] = len(paths)
                paths.append(image)
                entries.append([])
            entries[index_of[image]].append(
                {"id": f"{kind}/{key}", "type": kind, "key": str(key), "positive": positive, "negatives": list(negatives)}
            )
    if not paths:
        raise SparcEvalError(f"SugarCrepe folder {annotations_dir} holds no entries in {', '.join(f'{t}.json' for t in types)}")
    return HardNegativeDataset(paths, entries, list(types), transform)


def layout_sugarcrepe(
    root: Path, split: str, *, annotations: str = ".", images: str = ".", types: tuple[str, ...] = SUGARCREPE_TYPES
) -> list[Need]:
    """What "sugarcrepe" reads (sparc_eval.data.layout): one JSON per type, and the images those name."""
    image_dir, annotations_dir = resolve(root, images), resolve(root, annotations, split)
    files = [inside(annotations_dir, f"{kind}.json", "SugarCrepe type", follow_links=False) for kind in types]
    needs = [Need(annotations_dir, "SugarCrepe type files", folder=True, files=tuple(p.name for p in files))]
    names: list[str] = []
    for path in files:
        table = load_json(path, "SugarCrepe file") if readable(path) else None
        if isinstance(table, dict):
            names += [e["filename"] for e in table.values() if isinstance(e, dict) and isinstance(e.get("filename"), str)]
    if not names:
        return [*needs, Need(image_dir, "image folder", folder=True)]
    return [
        *needs,
        *folder_needs(inside(image_dir, name, "SugarCrepe image", follow_links=False) for name in dict.fromkeys(names)),
    ]


read_sugarcrepe.layout = layout_sugarcrepe  # type: ignore[attr-defined]
