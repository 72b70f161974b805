"""Training batches from image-text pairs: one caption per image per draw, no image twice in a batch.

Pairs files hold ~5 rows per image (one per caption). Drawing rows uniformly would put the same image
twice into some batches, and the global contrastive loss would then push apart an image and a caption
that match (a false negative). So every epoch permutes the distinct images and picks one of each image's
captions at random; a batch is a run of that permutation. The draw for a step depends only on
(seed, step), which makes runs repeatable and resumable without saving sampler state. Webdataset shards
(sparc_eval.train.shards) keep the same promises at shard granularity.

Batches reach the trainer through a `torch.utils.data.DataLoader` over steps (`batch_loader`): item `step` is this
process's slice of that step's global batch, decoded and tokenized in a worker process, prefetched and (for a
CUDA device) pinned. Since an item is a function of (seed, step) alone, the worker count changes nothing but the
speed, and a resumed run starts the loader at its step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import sha256_file


def resolve_pairs(data: str | os.PathLike) -> tuple[Path, Path | None]:
    """The pairs file for `data` (a .jsonl/.csv file, a folder with train.jsonl, or a SynthScenes root),
    and the MANIFEST.json of the tree it belongs to, if any."""
    data = Path(data)
    if not data.exists():
        raise SparcEvalError(f"training data {data} does not exist")
    pairs = data
    if data.is_dir():
        folder = data / "pairs" if (data / "pairs").is_dir() else data  # a SynthScenes (or alike) root
        found = [p for p in (folder / "train.jsonl", folder / "train.csv") if p.is_file()]
        if not found:
            raise SparcEvalError(f"training data folder {data} has no train.jsonl, train.csv or pairs/ folder holding one")
        pairs = found[0]
    manifest = next((d / "MANIFEST.json" for d in (pairs.parent, pairs.parent.parent) if (d / "MANIFEST.json").is_file()), None)
    return pairs, manifest


class PairBatches:
    """Global batches of (image tensor, caption) drawn from a pairs file."""

    def __init__(self, data: str | os.PathLike, batch_size: int, seed: int, transform: Callable):
        from sparc_eval.data.registry import open_dataset

        self.pairs_file, self.manifest = resolve_pairs(data)
        self.dataset = open_dataset("pairs", self.pairs_file, "train", transform=transform)
        rows_of: dict[str, list[int]] = {}
        for row, path in enumerate(self.dataset.image_paths):
            rows_of.setdefault(os.path.normpath(path), []).append(row)
        self.rows_of_image = list(rows_of.values())
        if batch_size > len(self.rows_of_image):
            raise SparcEvalError(
                f"batch size {batch_size} exceeds the {len(self.rows_of_image)} distinct images of {self.pairs_file}; an image may appear only once per batch"
            )
        self.batch_size = batch_size
        self.seed = seed
        self.batches_per_epoch = len(self.rows_of_image) // batch_size
        self._epoch: tuple[int, list[int]] | None = None

    def describe(self) -> dict:
        return {
            "pairs_file": str(self.pairs_file),
            "pairs_sha256": sha256_file(self.pairs_file),
            "manifest_sha256": sha256_file(self.manifest) if self.manifest else None,
            "n_images": len(self.rows_of_image),
            "n_pairs": len(self.dataset),
        }

    def _epoch_rows(self, epoch: int) -> list[int]:
        if self._epoch is None or self._epoch[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.rows_of_image), generator=g).tolist()
            picks = torch.randint(0, 1 << 30, (len(order),), generator=g).tolist()
            self._epoch = (epoch, [self.rows_of_image[i][p % len(self.rows_of_image[i])] for i, p in zip(order, picks)])
        return self._epoch[1]

    def rows(self, step: int) -> list[int]:
        """Dataset rows of the global batch of `step` (the last partial batch of an epoch is dropped)."""
        epoch, index = divmod(step, self.batches_per_epoch)
        return self._epoch_rows(epoch)[index * self.batch_size : (index + 1) * self.batch_size]

    def load(self, rows: list[int]) -> tuple[torch.Tensor, list[str]]:
        items = [self.dataset[r] for r in rows]
        return torch.stack([it["image"] for it in items]), [it["caption"] for it in items]


def open_batches(data: str | os.PathLike, batch_size: int, seed: int, transform: Callable) -> Any:
    """The batch source --data names: webdataset shards (a pattern, a .tar, a `data shards` folder) or image-text pairs."""
    from sparc_eval.train.shards import ShardBatches, is_shard_source

    if is_shard_source(data):
        return ShardBatches(data, batch_size, seed, transform)
    return PairBatches(data, batch_size, seed, transform)


@dataclass
class _Failed:
    """A user error raised in a worker, carried to the main process as a value: DataLoader would re-raise it with the
    worker's traceback folded into the message, and the CLI reports one line."""

    message: str


class StepBatches(Dataset):
    """Item `step`: (images, tokens) of this rank's slice [rank * local, (rank + 1) * local) of the global batch of `step`."""

    def __init__(self, batches: Any, steps: int, rank: int, local: int, tokenize: Callable[[list[str]], torch.Tensor]):
        self.batches, self.steps, self.rank, self.local, self.tokenize = batches, steps, rank, local, tokenize

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | _Failed:
        try:
            rows = self.batches.rows(step)[self.rank * self.local : (self.rank + 1) * self.local]
            images, captions = self.batches.load(rows)
        except SparcEvalError as exc:
            return _Failed(str(exc))
        return images, self.tokenize(captions)


def batch_loader(
    batches: Any,
    *,
    start: int,
    steps: int,
    rank: int,
    local: int,
    tokenize: Callable[[list[str]], torch.Tensor],
    num_workers: int,
    pin_memory: bool,
    seed: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, tokens) of steps start, start + 1, ..., steps - 1 in order, decoded in `num_workers` worker processes
    (0: in this one) with two batches prefetched per worker."""
    loader = DataLoader(
        StepBatches(batches, steps, rank, local, tokenize),
        batch_size=None,  # an item is already a batch
        sampler=range(start, steps),
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers else None,
        # The loader's own generator seeds its workers; without one it would draw from the global RNG, which the
        # training steps use, and a resumed run would then differ from an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )
    for item in loader:
        if isinstance(item, _Failed):
            raise SparcEvalError(item.message)
        yield item
