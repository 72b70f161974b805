"""Training batches from webdataset shards, deterministic by (seed, step) at shard granularity.

Every epoch permutes the shards (seeded by seed and epoch) and cuts the permuted list into groups of
SHUFFLE_SHARDS consecutive shards; the samples of a group are permuted together (seeded by seed, epoch and
group), and the epoch is the groups' samples one after another. A batch is a run of that order, so it draws
from at most two groups: a step reads a few shards, not the whole dataset, and the samples of the shards of a
group are mixed. Each sample is one image (its captions, one per line of `txt`, are one sample), so an image is
never twice in a batch; one caption per image and epoch is drawn with the permutation.

Because the order is computed from the shards' sample counts (a MANIFEST.json beside them, written by `sparc-eval
data shards`, or a scan of their tar headers), the batch of any step is found without reading the steps before
it: a resumed run needs no sampler state and equals an uninterrupted one, and W processes each decode their
1/W of the same global batch. Samples are read by offset (sparc_eval.data.webdataset), so a shard is indexed
once per process that reads it.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from sparc_eval.data.webdataset import (
    ShardReader,
    captions_of,
    checked_index,
    decode_image,
    expand_shards,
    manifest_counts,
    read_manifest,
)
from sparc_eval.errors import SparcEvalError

SHUFFLE_SHARDS = 8  # shards whose samples an epoch mixes together
_CACHED_INDEXES = 4 * SHUFFLE_SHARDS


def is_shard_source(data: str | os.PathLike) -> bool:
    """Whether --data names webdataset shards: a brace pattern, a .tar file, or a folder written by `data shards`."""
    text = os.fspath(data)
    if "{" in text or "::" in text or text.endswith(".tar"):
        return True
    path = Path(text)
    return path.is_dir() and read_manifest(path) is not None


def shard_paths(data: str | os.PathLike) -> list[Path]:
    """The shards --data names, in order: a folder's manifest lists them, a pattern is brace-expanded."""
    path = Path(os.fspath(data))
    if path.is_dir():
        section = read_manifest(path)
        if section is None:
            raise SparcEvalError(f"training data folder {path} has no MANIFEST.json with a webdataset section")
        return expand_shards("::".join(str(path / s["file"]) for s in section["shards"]))
    return expand_shards(os.fspath(data))


class ShardBatches:
    """Global batches of (image tensor, caption) drawn from webdataset shards (the interface of PairBatches)."""

    def __init__(self, data: str | os.PathLike, batch_size: int, seed: int, transform: Callable):
        self.data = os.fspath(data)
        self.shards = shard_paths(data)
        self.manifest_counts = manifest_counts(self.shards)
        self._indexes: OrderedDict[int, list] = OrderedDict()
        counts = []
        for i, path in enumerate(self.shards):
            if path in self.manifest_counts:
                counts.append(self.manifest_counts[path])
            else:  # a shard without a manifest (img2dataset, open_clip's): its headers give the count
                counts.append(len(self._index(i)))
        self.counts = counts
        self.n_samples = sum(counts)
        if batch_size > self.n_samples:
            raise SparcEvalError(
                f"batch size {batch_size} exceeds the {self.n_samples} samples of {len(self.shards)} shards ({self.data}); an image may appear only once per batch"
            )
        self.batch_size = batch_size
        self.seed = seed
        self.transform = transform
        self.batches_per_epoch = self.n_samples // batch_size
        self._reader = ShardReader()
        self._epoch: tuple[int, list[list[int]], list[int]] | None = None
        self._group: tuple[tuple[int, int], list[int], list[int]] | None = None

    def describe(self) -> dict:
        # The data a resumed run must find again: each shard's name and sample count, and its sha256 where a manifest
        # states it (hashing terabytes at start-up is not an option), else its size.
        identity = [
            [p.name, n, self._manifest_sha(p)] if p in self.manifest_counts else [p.name, n, p.stat().st_size]
            for p, n in zip(self.shards, self.counts)
        ]
        return {
            "shards": self.data,
            "shards_sha256": hashlib.sha256(json.dumps(identity).encode()).hexdigest(),
            "n_shards": len(self.shards),
            "n_images": self.n_samples,
            "shuffle_shards": SHUFFLE_SHARDS,
        }

    def _manifest_sha(self, path: Path) -> str:
        section = read_manifest(path.parent) or {"shards": []}
        return next((s["sha256"] for s in section["shards"] if s["file"] == path.name), "")

    def _index(self, shard: int) -> list:
        found = self._indexes.get(shard)
        if found is None:
            path = self.shards[shard]
            found = self._indexes[shard] = checked_index(path, self.manifest_counts.get(path))
            while len(self._indexes) > _CACHED_INDEXES:
                self._indexes.popitem(last=False)
        else:
            self._indexes.move_to_end(shard)
        return found

    def _epoch_groups(self, epoch: int) -> tuple[list[list[int]], list[int]]:
        """The epoch's groups of shard indices, and the epoch position where each group starts."""
        if self._epoch is None or self._epoch[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.shards), generator=g).tolist()
            groups = [order[i : i + SHUFFLE_SHARDS] for i in range(0, len(order), SHUFFLE_SHARDS)]
            starts, total = [], 0
            for group in groups:
                starts.append(total)
                total += sum(self.counts[s] for s in group)
            self._epoch = (epoch, groups, starts)
        return self._epoch[1], self._epoch[2]

    def _group_order(self, epoch: int, index: int, group: list[int]) -> tuple[list[int], list[int]]:
        """The permutation of a group's samples (positions in the group's shards laid end to end) and the caption
        draw of each position."""
        if self._group is None or self._group[0] != (epoch, index):
            size = sum(self.counts[s] for s in group)
            g = torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_033 + index) % (1 << 62))
            order = torch.randperm(size, generator=g).tolist()
            picks = torch.randint(0, 1 << 30, (size,), generator=g).tolist()
            self._group = ((epoch, index), order, picks)
        return self._group[1], self._group[2]

    def rows(self, step: int) -> list[tuple[int, int, int]]:
        """(shard, sample in shard, caption draw) of each item of the global batch of `step` (the last partial batch of
        an epoch is dropped)."""
        epoch, index = divmod(step, self.batches_per_epoch)
        groups, starts = self._epoch_groups(epoch)
        out = []
        for position in range(index * self.batch_size, (index + 1) * self.batch_size):
            g = bisect.bisect_right(starts, position) - 1
            order, picks = self._group_order(epoch, g, groups[g])
            local = order[position - starts[g]]
            for shard in groups[g]:
                if local < self.counts[shard]:
                    out.append((shard, local, picks[position - starts[g]]))
                    break
                local -= self.counts[shard]
        return out

    def load(self, rows: list[tuple[int, int, int]]) -> tuple[torch.Tensor, list[str]]:
        images, captions = [], []
        for shard, index, pick in rows:
            path, sample = self.shards[shard], self._index(shard)[index]
            where = f"shard {path}, sample {sample.key!r}"
            image_key = sample.image_key()
            if image_key is None:
                raise SparcEvalError(f"{where} has no image (jpg/jpeg/png/webp member)")
            image = decode_image(self._reader.read(path, sample, image_key), where)
            images.append(self.transform(image))
            options = captions_of(self._reader.read(path, sample, "txt"), where)
            captions.append(options[pick % len(options)])
        return torch.stack(images), captions
