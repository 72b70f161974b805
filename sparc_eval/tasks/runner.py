"""Runner base class and registry: one module per task kind, one registered Runner subclass each.

A runner turns (card, model) into metrics plus per-sample records. Runners with a fitting stage
(detection heads, a captioner) implement `fit`; the harness hands them a cache folder keyed by
(checkpoint hash, card hash) so a rerun loads what was fitted instead of fitting again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from sparc_eval.data.registry import open_dataset
from sparc_eval.data.synth import ensure_synthscenes
from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import inside
from sparc_eval.progress import track
from sparc_eval.registry import Registry
from sparc_eval.tasks.card import DatasetSpec, TaskCard
from sparc_eval.tasks.distributed import SINGLE, FitBatches, World
from sparc_eval.tasks.feature_cache import FeatureCache, file_list_digest, transform_id

FEATURE_MEMORY_ENV = "SPARC_EVAL_FEATURE_MEMORY_GB"

# The built-in task kinds, by the name a card's `runner:` gives; another package adds its own through the
# `sparc_eval.runners` entry-point group (sparc_eval.registry). A new kind is one module and one line here.
RUNNERS: Registry[type[Runner]] = Registry(
    "runner",
    {
        "classification": "sparc_eval.tasks.classification:ClassificationRunner",
        "retrieval": "sparc_eval.tasks.retrieval:RetrievalRunner",
        "segmentation": "sparc_eval.tasks.segmentation:SegmentationRunner",
        "detection": "sparc_eval.tasks.detection:DetectionRunner",
        "captioning": "sparc_eval.tasks.captioning:CaptioningRunner",
        "grounding": "sparc_eval.tasks.grounding:GroundingRunner",
        "hard_negatives": "sparc_eval.tasks.hard_negatives:HardNegativesRunner",
    },
)


def get_runner(kind: str, card_path: Path | None = None) -> type[Runner]:
    """The runner class of task kind `kind`; `card_path` names the card in the error for an unknown kind."""
    return RUNNERS.get(kind, f"task card {card_path}: " if card_path else "")


@dataclass
class RunContext:
    """Run-level settings every runner honours (from the CLI / `evaluate` overrides, never from the card)."""

    device: torch.device
    batch_size: int
    precision: str  # "fp32" | "bf16"
    limit: int | None
    num_workers: int
    seed: int
    data_dir: Path
    work_dir: Path  # where the record and its artifacts go
    record_stem: str  # artifacts are named <record_stem>.<name> beside the record
    cache_dir: Path  # fitted state for (checkpoint, card); persists across runs
    # In-memory values computed once per run and shared by its parts (e.g. class text embeddings).
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)
    # This process's rank among the processes torchrun started (sparc_eval.tasks.distributed); SINGLE outside torchrun.
    world: World = SINGLE
    # Image / text embeddings reused across tasks and runs (sparc_eval.tasks.feature_cache); None: --no-cache.
    features: FeatureCache | None = None
    unstored_features: dict[str, Any] = field(default_factory=dict, repr=False)

    def artifact(self, name: str) -> Path:
        """Path of an extra file that belongs to this run's record, e.g. artifact("detections.json"); a name that
        would lead outside the results folder is refused."""
        return inside(self.work_dir, f"{self.record_stem}.{name}", "artifact name")

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when asked for (this CPU runs bf16 matmuls ~2.5x faster than fp32); a no-op otherwise."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def limited(self, dataset: Dataset) -> Dataset:
        """The first `limit` items (deterministic), or the whole dataset."""
        if self.limit is None or self.limit >= len(dataset):  # type: ignore[arg-type]
            return dataset
        return Subset(dataset, range(self.limit))

    def loader(self, dataset: Dataset, collate_fn: Callable | None = None, shuffle: bool = False) -> DataLoader:
        """Batches of ctx.batch_size, decoded in ctx.num_workers worker processes, pinned for a CUDA device."""
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_fn,
            generator=generator,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
        )

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on ctx.device; from pinned memory the copy overlaps the next batch's work."""
        return tensor.to(self.device, non_blocking=True)

    # -------------------------------------------------------------- distributed evaluation (tasks.distributed)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes records, artifacts and caches."""
        return self.world.is_main

    def shard(self, dataset: Dataset) -> Dataset:
        """This rank's contiguous slice of the (limited) evaluation split; ranks' slices cover it once, in order."""
        return self._slice(self.limited(dataset))

    def _slice(self, dataset: Dataset) -> Dataset:
        rows = self.world.shard(len(dataset))  # type: ignore[arg-type]
        return dataset if len(rows) == len(dataset) else Subset(dataset, rows)  # type: ignore[arg-type]

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's `items` in rank order, i.e. in the split's order (per-sample records, predictions)."""
        return self.world.gather(items)

    def all_reduce_counts(self, counts: Any) -> Any:
        """Exact sum over ranks of a count array (integer or float64, numpy or tensor)."""
        return self.world.sum(counts)

    def fit_batches(self, n: int, batch_size: int) -> FitBatches:
        """Shuffled batches of a fitting stage over n items: the same global batches on any number of ranks (those
        of a single process), this rank's slice of each, and each step's weight (FitBatches.weights)."""
        return FitBatches(n, batch_size, self.seed, self.world)

    def fit_loader(self, batches: FitBatches, dataset: Dataset, collate_fn: Callable | None = None) -> DataLoader:
        """A DataLoader that decodes this rank's slice of each of `batches` in ctx.num_workers workers."""
        return batches.loader(dataset, collate_fn, self.num_workers, self.seed, pin_memory=self.device.type == "cuda")

    def features_fit_in_memory(self, n_items: int, item_numel: int) -> bool:
        """Whether n_items float32 feature rows of item_numel values fit under SPARC_EVAL_FEATURE_MEMORY_GB (default
        4): fitting stages then encode their split once (through the feature cache) instead of once per epoch."""
        raw = os.environ.get(FEATURE_MEMORY_ENV, "4")
        try:
            budget = float(raw) * 2**30
        except ValueError:
            raise SparcEvalError(f"{FEATURE_MEMORY_ENV}={raw!r} must be a number of GiB") from None
        return n_items * item_numel * 4 <= budget

    # -------------------------------------------------------------- encoding, through the feature cache

    def image_features(
        self,
        model: torch.nn.Module,
        dataset: Dataset,
        encode: Callable[[torch.Tensor], torch.Tensor],
        kind: str,
        transform: Any,
        collate_fn: Callable | None = None,
    ) -> torch.Tensor:
        """`encode(images)` of every item of `dataset` in order, float32 on the CPU, stacked [N, ...].

        Each rank encodes its slice and the slices are gathered, so every rank holds the whole tensor. With the
        feature cache on and a dataset that lists its image files (`paths`), the tensor is read from the cache
        when an entry with the same key exists (model, files, `transform`, `kind`, precision, device, weight
        dtype) and stored there otherwise. `kind` names what `encode` computes (e.g. "image", "dense-local");
        `transform` is the image transform the dataset applies. Batches come from `collate_fn` as {"image": ...}; by
        default only the items' "image" tensors are stacked.
        """
        paths = _image_paths(dataset)
        entry = None
        if self.features is not None and paths is not None:
            files = file_list_digest(paths)
            if files is not None:
                entry = self.features.entry(
                    kind, files=files, n=len(paths), transform=transform_id(transform), weights=_weight_dtype(model)
                )
        return self._cached(entry, lambda: self._encode_images(dataset, encode, kind, collate_fn or _stack_images))

    def text_features(
        self, model: torch.nn.Module, texts: list[str], encode: Callable[[torch.Tensor], torch.Tensor], kind: str
    ) -> torch.Tensor:
        """`encode(model.tokenize(batch))` of every text in order, float32 on the CPU [N, ...]: sharded over ranks
        and cached like image_features, keyed by the texts themselves."""
        entry = None
        if self.features is not None:
            digest = hashlib.sha256(json.dumps(texts).encode("utf-8")).hexdigest()
            entry = self.features.entry(kind, texts=digest, n=len(texts), weights=_weight_dtype(model))

        def compute() -> torch.Tensor:
            rows = list(self.world.shard(len(texts)))
            chunks = []
            batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
            for batch in track(batches, f"encoding {kind}"):
                tokens = self.to_device(model.tokenize([texts[i] for i in batch]))
                with torch.no_grad(), self.autocast():
                    chunks.append(encode(tokens).float().cpu())
            return _concat(self.gather([torch.cat(chunks)] if chunks else []))

        return self._cached(entry, compute)

    def _encode_images(self, dataset: Dataset, encode: Callable, kind: str, collate_fn: Callable) -> torch.Tensor:
        chunks = []
        for batch in track(self.loader(self._slice(dataset), collate_fn=collate_fn), f"encoding {kind}"):
            with torch.no_grad(), self.autocast():  # no_grad, not inference_mode: a fitting stage trains on these
                chunks.append(encode(self.to_device(batch["image"])).float().cpu())
        return _concat(self.gather([torch.cat(chunks)] if chunks else []))

    def _cached(self, entry: Any, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """compute(), or the cache entry's tensor when every rank could read it. What is computed waits in
        `unstored_features` until the run has succeeded (store_features), so a failed run leaves no file behind."""
        if entry is not None and entry.key in self.unstored_features:
            return self.unstored_features[entry.key][1]
        found = self.features.load(entry) if entry is not None else None
        if self.world.all_true(found is not None):
            return found["features"]  # type: ignore[index]
        features = compute()
        if entry is not None:
            self.unstored_features[entry.key] = (entry, features)
        return features

    def store_features(self) -> None:
        """Write the features this run computed into the feature cache (rank 0; called once the record is written)."""
        if self.features is not None and self.is_main:
            for entry, features in self.unstored_features.values():
                self.features.store(entry, {"features": features})
        self.unstored_features.clear()


@dataclass
class TaskOutput:
    """What a runner returns: metric values (None where undefined, never NaN), per-sample records, extra info."""

    metrics: dict[str, float | None]
    samples: list[dict[str, Any]]
    n_samples: int
    info: dict[str, Any] = field(default_factory=dict)
    # Extra files the runner wrote into ctx.work_dir (e.g. COCO-format detections), by name.
    artifacts: dict[str, str] = field(default_factory=dict)


class Runner(ABC):
    """Base of every task runner.

    Subclasses set `Params` (a dataclass validated against the card's `params`), `metrics` (name ->
    higher_is_better, None for descriptive quantities) and `family` (the column group of the results
    table), and implement `evaluate`, plus `fit` when the task has a fitting stage. `aggregate`
    recomputes metrics from per-sample records; regression's paired bootstrap uses it.
    """

    Params: ClassVar[type]
    metrics: ClassVar[dict[str, bool | None]]
    # The task family the results table and leaderboard group this runner's columns under. The SPARC paper's
    # families come first in its order (results.collect.PAPER_FAMILIES); anything else is a diagnostic.
    family: ClassVar[str] = "diagnostics"
    has_fit_stage: ClassVar[bool] = False
    # Optional libraries the runner imports, {import name: sparc-eval extra that installs it}; checked before any
    # work (evaluation.check_requirements). Readers and loaders declare theirs as a `requires` attribute too.
    requires: ClassVar[dict[str, str]] = {}

    def __init__(self, card: TaskCard, params: Any, ctx: RunContext):
        self.check(card, params)
        self.card = card
        self.params = params
        self.ctx = ctx

    @classmethod
    def card_metrics(cls, card: TaskCard) -> dict[str, bool | None]:
        """The metrics a record of `card` holds: every declared one, unless the kind's metrics depend on the
        card (hard_negatives: one pair per negative type the card lists), so no record carries columns that
        can never have a value."""
        return cls.metrics

    @classmethod  # noqa: B027 (a no-op unless the kind has cross-checks)
    def check(cls, card: TaskCard, params: Any) -> None:
        """Checks of the card and params that their types cannot say (ranges that depend on each other, a
        fit_dataset the kind needs), as one-line SparcEvalErrors; run when the card is loaded."""

    @classmethod
    def requirements(cls, params: Any) -> dict[str, str]:
        """The optional libraries this run needs ({import name: extra}); `requires` unless params add some."""
        return dict(cls.requires)

    @classmethod
    def dataset_options(cls, params: Any) -> dict[str, Any]:
        """Reader options the runner adds to its card's when it opens a dataset (a built-in class-name list, say);
        `open` applies them, and the layout doctor (`data check --task`) lists the files they name."""
        return {}

    def open(self, spec: DatasetSpec, transform: Callable | None = None, **options: Any) -> Dataset:
        """Open one of the card's datasets with its root placeholders resolved; `dataset_options` and then `options`
        override the card's reader options."""
        root = resolve_root(self.card, spec, self.ctx.data_dir)
        merged = {**spec.options, **self.dataset_options(self.params), **options}
        return open_dataset(spec.format, root, spec.split, transform=transform, **merged)

    def fit(self, model: torch.nn.Module) -> None:  # noqa: B027 (a no-op unless the task has a fitting stage)
        """Fit task-specific heads on the card's fit_dataset, caching them under ctx.cache_dir (fitting runners only)."""

    @abstractmethod
    def evaluate(self, model: torch.nn.Module) -> TaskOutput:
        """Stream the evaluation split through `model` and score it; called under torch.inference_mode()."""

    @classmethod
    def aggregate(cls, samples: list[dict[str, Any]], params: Any) -> dict[str, float | None]:
        """Metrics recomputed from per-sample records; must equal what `evaluate` reported on the full set."""
        raise NotImplementedError(f"runner {cls.__name__} cannot recompute its metrics from per-sample records")


def resolve_root(card: TaskCard, spec: DatasetSpec, data_dir: Path) -> Path:
    """Fill the root's placeholders: {data} = the data folder, {synthscenes} = the card's SynthScenes tree
    (generated on first use)."""
    placeholders: dict[str, str] = {"data": str(data_dir)}
    if "{synthscenes}" in spec.root:
        placeholders["synthscenes"] = str(ensure_synthscenes(data_dir, **card.synth_params))
    try:
        return Path(spec.root.format(**placeholders)).expanduser()
    except KeyError as exc:
        raise SparcEvalError(
            f"task card {card.path}: unknown placeholder {{{exc.args[0]}}} in dataset root {spec.root!r}"
        ) from None


def require_finite(emb: torch.Tensor, what: str, model: Any) -> None:
    """Stop with one line naming the checkpoint when it produced NaN or infinite embeddings (shared by the task kinds)."""
    if not torch.isfinite(emb).all():
        raise SparcEvalError(f"checkpoint {model.describe().get('ref', '?')} produced non-finite {what} embeddings")


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random for a deterministic CPU run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _image_paths(dataset: Dataset) -> list[Any] | None:
    """The image file of each item of `dataset` (through Subsets), or None for a dataset that does not list its files."""
    indices: Any = range(len(dataset))  # type: ignore[arg-type]
    while isinstance(dataset, Subset):
        indices = [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    paths = getattr(dataset, "paths", None)
    if not isinstance(paths, (list, tuple)):
        return None
    return [paths[i] for i in indices]


def _stack_images(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Collate only the images of the items (their other fields may not stack: caption lists, annotations)."""
    return {"image": torch.stack([item["image"] for item in items])}


def _weight_dtype(model: torch.nn.Module) -> str:
    return str(next(model.parameters()).dtype)


def _concat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Gathered per-rank tensors as one (ranks with an empty slice send none)."""
    if not parts:
        raise SparcEvalError("the evaluation split holds no items to encode")
    return torch.cat(parts)
