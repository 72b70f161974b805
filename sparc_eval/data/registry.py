"""Readers of on-disk dataset formats, keyed by the `format` name a task card uses.

A reader is a function `read(root, split, *, transform=None, <its options as keyword-only parameters>) -> Dataset`;
its parameters' annotations are the options' types, checked when a card is loaded (check_reader_options). A new
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
        "sugarcrepe": "sparc_eval.data.sugarcrepe:read_sugarcrepe",
        "webdataset": "sparc_eval.data.webdataset:read_webdataset",
    },
)


def check_reader_options(reader: Reader, options: dict[str, Any], where: str) -> None:
    """`options` checked against the reader's keyword-only parameters (their annotations are the types, those without a
    default are required; `transform` is the harness's), as one line `WHERE: ...` naming the option."""
    from sparc_eval.schema import model_from_callable, validate

    name = f"{getattr(reader, '__name__', 'reader')}_options"
    validate(model_from_callable(reader, name, skip=frozenset({"transform"}), keyword_only=True), options, where, "reader option")


def open_dataset(format: str, root: str | Path, split: str, transform: Callable | None = None, **options: Any) -> Dataset:
    """Open the dataset at `root` in `format`, split `split`; `options` are the format's own keys."""
    reader = READERS.get(format, "dataset format: ")
    root = Path(root)
    check_reader_options(reader, options, f"{format} dataset {root}")
    if not root.exists():
        raise SparcEvalError(f"dataset root {root} does not exist")
    return reader(root, split, transform=transform, **options)
