"""Feature cache: image and text embeddings computed once per (checkpoint, data, preprocessing, precision, head).

Scoring a checkpoint spends most of its time in the towers: decoding and encoding the split's images, encoding
captions and, for zero-shot classification, class names x templates (ImageNet: 1,000 x 80 = 80,000 prompts).
Tasks and runs that read the same images or texts with the same model reuse those tensors from here.

An entry is one safetensors file, `<folder>/<model id[:16]>/<kind>-<key[:24]>.safetensors`, written
atomically (temporary file + rename) by rank 0. Its key is the sha256 of everything that determines the
tensors:

- the model: its describe() without the path it was loaded from (weights sha256, architecture, dense heads);
- the data: for images, every file's resolved path, size and modification time (a rewritten file
  invalidates the entry); for texts, the texts themselves; for a zero-shot classifier, class names and templates;
- the image preprocessing: the model's transform (its repr) and the runner's wrapper (e.g. pad-to-square);
- what was encoded (pooled embedding, dense path and head), the precision and the device type.

The key and a sha256 of the tensor bytes are kept in the file's metadata and checked on load: a file that
does not parse, holds another key or fails its checksum is recomputed and replaced, never trusted.
Features from the cache equal a fresh computation with the same batch size and world size bit for bit;
with another batch size or world size they can differ in the last bits of float32 (matrix kernels block by
batch), as two fresh runs would.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CACHE_ENV = "SPARC_EVAL_CACHE"
FORMAT = "sparc-eval features v1"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def model_id(described: dict[str, Any]) -> str:
    """The model's identity for cache keys: its description without the path it was loaded from."""
    return _digest({k: v for k, v in described.items() if k != "ref"})


def transform_id(transform: Any) -> str:
    """A stable description of an image transform: its repr with memory addresses removed."""
    return _ADDRESS.sub("", repr(transform))


def file_list_digest(paths: Sequence[str | os.PathLike]) -> str | None:
    """sha256 over (resolved path, size, mtime_ns) of each file in order; None when a file cannot be read."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            return None
        h.update(f"{Path(p).resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class Entry:
    path: Path
    key: str
    parts: dict[str, Any]


@dataclass(frozen=True)
class FeatureCache:
    """The cache of one model in one precision on one device type (RunContext.features)."""

    folder: Path
    model: str  # model_id(describe())
    precision: str
    device_type: str

    def entry(self, kind: str, **parts: Any) -> Entry:
        full = {
            "format": FORMAT,
            "model": self.model,
            "precision": self.precision,
            "device": self.device_type,
            "kind": kind,
            **parts,
        }
        key = _digest(full)
        safe_kind = re.sub(r"[^A-Za-z0-9_.-]", "_", kind)
        return Entry(self.folder / self.model[:16] / f"{safe_kind}-{key[:24]}.safetensors", key, full)

    def load(self, entry: Entry) -> dict[str, torch.Tensor] | None:
        """The entry's tensors, or None when it is missing or not to be trusted (a bad file is removed)."""
        from safetensors import safe_open

        if not entry.path.is_file():
            return None
        try:
            with safe_open(str(entry.path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            if meta.get("format") != FORMAT or meta.get("key") != entry.key or meta.get("sha256") != _tensor_digest(tensors):
                raise ValueError("key or checksum mismatch")
        except Exception:  # noqa: BLE001 (any unreadable file is recomputed; that is the whole contract)
            entry.path.unlink(missing_ok=True)
            return None
        return tensors

    def store(self, entry: Entry, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        from sparc_eval.fileio import atomic_path

        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {
            "format": FORMAT,
            "key": entry.key,
            "sha256": _tensor_digest(tensors),
            "parts": json.dumps(entry.parts, default=str),
        }
        entry.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(entry.path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)


def default_cache_dir(results_dir: Path) -> Path:
    """SPARC_EVAL_CACHE when set, else <results>/cache/features."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path(results_dir) / "cache" / "features"
