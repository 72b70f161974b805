"""Readers of on-disk dataset formats, keyed by the `format` name a task card uses.

A new format is one function decorated with `@register_reader("name")` in its own module under
`sparc_eval/data/`; `open_dataset` finds it by name. Readers fail loudly (SparcEvalError naming
the file) and never skip bad items silently.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from sparc_eval.errors import SparcEvalError

Reader = Callable[..., Dataset]
READERS: dict[str, Reader] = {}

# Modules that register readers; imported on first use so `import sparc_eval.data` stays light.
_READER_MODULES = (
    "sparc_eval.data.coco",
    "sparc_eval.data.karpathy",
    "sparc_eval.data.lvis",
    "sparc_eval.data.voc",
    "sparc_eval.data.imagefolder",
    "sparc_eval.data.pairs",
)


def register_reader(name: str) -> Callable[[Reader], Reader]:
    def decorate(fn: Reader) -> Reader:
        if name in READERS:
            raise RuntimeError(f"reader {name!r} registered twice")
        READERS[name] = fn
        return fn

    return decorate


def _load_readers() -> None:
    for module in _READER_MODULES:
        importlib.import_module(module)


def open_dataset(format: str, root: str | Path, split: str, transform: Callable | None = None, **options: Any) -> Dataset:
    """Open the dataset at `root` in `format`, split `split`; `options` are the format's own keys."""
    _load_readers()
    if format not in READERS:
        raise SparcEvalError(f"unknown dataset format {format!r}; known: {', '.join(sorted(READERS))}")
    root = Path(root)
    if not root.exists():
        raise SparcEvalError(f"dataset root {root} does not exist")
    return READERS[format](root, split, transform=transform, **options)
