"""Training batches from image-text pairs: one caption per image per draw, no image twice in a batch.

Pairs files hold ~5 rows per image (one per caption). Drawing rows uniformly would put the same image
twice into some batches, and the global contrastive loss would then push apart an image and a caption
that match (a false negative). So every epoch permutes the distinct images and picks one of each image's
captions at random; a batch is a run of that permutation. The draw for a step depends only on
(seed, step), which makes runs repeatable and resumable without saving sampler state.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

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
