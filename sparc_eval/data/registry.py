"""Readers of on-disk dataset formats, keyed by the `format` name a task card uses.

A reader is a function `read(root, split, *, transform=None, **its own options) -> Dataset`. A new
format is one such function in its own module under `sparc_eval/data/` and one line in `READERS`
(or, from another package, an entry point in the `sparc_eval.readers` group; sparc_eval.registry).
`open_dataset` finds it by name. Readers fail loudly (SparcEvalError naming the file) and never skip
bad items silently.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from sparc_eval.errors import SparcEvalError
from sparc_eval.registry import Registry

Reader = Callable[..., Dataset]
READERS: Registry[Reader] = Registry(
    "reader",
    {
        "coco-captions": "sparc_eval.data.coco:read_coco_captions",
        "coco-instances": "sparc_eval.data.coco:read_coco_instances",
        "karpathy": "sparc_eval.data.karpathy:read_karpathy",
        "lvis": "sparc_eval.data.lvis:read_lvis",
        "voc": "sparc_eval.data.voc:read_voc",
        "imagefolder": "sparc_eval.data.imagefolder:read_imagefolder",
        "pairs": "sparc_eval.data.pairs:read_pairs",
    },
)


def open_dataset(format: str, root: str | Path, split: str, transform: Callable | None = None, **options: Any) -> Dataset:
    """Open the dataset at `root` in `format`, split `split`; `options` are the format's own keys."""
    reader = READERS.get(format, "dataset format: ")
    root = Path(root)
    if not root.exists():
        raise SparcEvalError(f"dataset root {root} does not exist")
    return reader(root, split, transform=transform, **options)
