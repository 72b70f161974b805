"""Evaluation under torchrun: one process group per process, contiguous shards, exact reductions.

`torchrun --nproc-per-node N -m sparc_eval run ...` starts N copies of the command; each reads torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and joins one process group
(gloo on CPU, nccl on CUDA). Every runner then:

- takes its contiguous slice of the evaluation split (`World.shard`: rank r of N gets items
  [r*n//N, (r+1)*n//N), so slices differ in size by at most one, with no duplicates and no padding);
- reduces exact state: counts are summed with all_reduce on int64 / float64 tensors, everything else
  (per-sample records, embeddings, captions) is gathered with all_gather_object and concatenated in
  rank order, which is the split's own order;
- fits its heads (detection, captioner) with DistributedDataParallel on `FitBatches`: every rank walks
  the same shuffled global batches as a single process and takes its slice of each.

Rank 0 alone writes records, artifacts and caches. A failure on one rank ends every rank: the failing
rank exits, its peers' next collective fails (gloo: the connection closes at once; nccl: the process-group
timeout, `SPARC_EVAL_DIST_TIMEOUT` seconds, default 1800; torchrun also stops the others when one exits),
and `claim_error_report` lets exactly one rank print its one-line error. No record is written, since
rank 0 writes only after a final collective that every rank must reach.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from sparc_eval.errors import SparcEvalError

TIMEOUT_ENV = "SPARC_EVAL_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800
_ERROR_KEY = "sparc_eval/errors"


class PeerFailed(SparcEvalError):
    """A collective failed because another rank stopped; that rank reports the cause."""


@dataclass(frozen=True)
class World:
    """This process's place among the evaluation processes (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None outside torchrun

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.size, "backend": self.backend}

    # ------------------------------------------------------------------------------------ splitting

    def shard(self, n: int) -> range:
        """This rank's contiguous slice of n items; the slices of all ranks cover range(n) once, in order."""
        return range(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    # ------------------------------------------------------------------------------------ reductions

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def gather(self, items: Sequence[Any]) -> list[Any]:
        """Every rank's `items` concatenated in rank order (on every rank): per-sample records, embeddings, ids."""
        if not self.distributed:
            return list(items)
        parts: list[Any] = [None] * self.size
        _collective(dist.all_gather_object, parts, list(items))
        return [item for part in parts for item in part]

    def sum(self, value: Any) -> Any:
        """The exact sum over ranks of a count array (numpy or tensor, integer or float64), same type back."""
        if not self.distributed:
            return value
        is_numpy = isinstance(value, np.ndarray)
        tensor = torch.from_numpy(np.ascontiguousarray(value)) if is_numpy else value
        if tensor.dtype.is_floating_point and tensor.dtype != torch.float64:
            raise TypeError("World.sum adds counts: use an integer or float64 array so the sum is exact")
        work = tensor.to(self._comm_device(), copy=True)
        _collective(dist.all_reduce, work)
        out = work.to(tensor.device)
        return out.numpy() if is_numpy else out

    def all_true(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on every rank: ranks take the same branch (reuse a cache or not)."""
        if not self.distributed:
            return bool(flag)
        return int(self.sum(torch.tensor([0 if flag else 1], dtype=torch.int64))[0]) == 0

    def barrier(self) -> None:
        if self.distributed:
            _collective(dist.barrier)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        _collective(dist.broadcast_object_list, box, src=0)
        return box[0]

    # ------------------------------------------------------------------------------------ fitting

    def data_parallel(self, module: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
        """`module` wrapped in DistributedDataParallel under torchrun (gradients averaged over ranks), else itself."""
        if not self.distributed:
            return module
        device_ids = [self.local_rank] if self.backend == "nccl" else None
        return torch.nn.parallel.DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )

    def normaliser(self, count: int | float, device: torch.device) -> torch.Tensor:
        """A loss's denominator for a count summed over the global batch: global count / world size (at least
        1 / world size), so that the mean over ranks that DDP's averaging takes equals the global batch's loss."""
        total = torch.tensor([float(count)], dtype=torch.float64)
        total = self.sum(total) if self.distributed else total
        return (total.clamp(min=1.0) / self.size).to(device=device, dtype=torch.float32)[0]


SINGLE = World()
_WORLD: World | None = None


def _timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise SparcEvalError(f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


def world_from_env(device_type: str) -> World:
    """The World of this process: from torchrun's environment (joining the process group once), else SINGLE."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise SparcEvalError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if size <= 1:
        _WORLD = SINGLE
        return _WORLD
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise SparcEvalError(
                f"rank {rank} (LOCAL_RANK {local_rank}) asked for CUDA device {local_rank}, which this node does not have"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, timeout=_timeout())
        except (RuntimeError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise SparcEvalError(f"rank {rank} of {size} could not join the process group ({reason})") from None
        atexit.register(_destroy)
    else:
        backend = dist.get_backend()
    _WORLD = World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank, backend=backend)
    if not _WORLD.is_main:
        os.environ["SPARC_EVAL_NO_PROGRESS"] = "1"  # one set of progress bars: rank 0's
    return _WORLD


def current_world() -> World:
    """The World joined so far (SINGLE before any distributed run in this process)."""
    return _WORLD or SINGLE


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _collective(fn, *args, **kwargs):
    """Run one collective; a peer that stopped (closed connection, timeout) becomes PeerFailed."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, dist.DistError) as exc:
        if isinstance(exc, SparcEvalError):
            raise
        raise PeerFailed(f"a collective failed: another rank stopped ({' '.join(str(exc).split())[:160]})") from None


def claim_error_report() -> bool:
    """Whether this rank should print its error: True for the first rank to fail (and outside torchrun).

    The process group's store counts failures atomically; a rank that cannot reach the store (its host, rank 0,
    has gone) stays quiet, since the rank that went first has reported.
    """
    world = current_world()
    if not world.distributed:
        return True
    try:
        store = dist.distributed_c10d._get_default_store()
        return int(store.add(_ERROR_KEY, 1)) == 1
    except Exception:  # noqa: BLE001 (the store is gone with the rank that failed first)
        return False


# ------------------------------------------------------------------------------------------ fitting batches


class FitBatches(Sampler[list[int]]):
    """Shuffled batches of a fitting stage, the same on every world size.

    The global batches are exactly those of `DataLoader(dataset, batch_size, shuffle=True,
    generator=torch.Generator().manual_seed(seed))` (an index-only loader with that generator is walked,
    so one process reproduces the single-process fits of earlier releases); each rank takes its contiguous
    slice of every global batch. A rank whose slice is empty (a last batch smaller than the world) gets the
    batch's first item with weight 0, so that every rank still takes part in each step's collectives.
    """

    def __init__(self, n: int, batch_size: int, seed: int, world: World):
        self.n, self.batch_size, self.world = n, batch_size, world
        self._order = DataLoader(range(n), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._order:
            items = batch.tolist()
            local = [items[i] for i in self.world.shard(len(items))]
            yield local or items[:1]

    def weights(self) -> list[float]:
        """Per step of an epoch: 1.0, or 0.0 where this rank's slice is empty (its one item must not count)."""
        sizes = [self.batch_size] * (self.n // self.batch_size) + ([self.n % self.batch_size] if self.n % self.batch_size else [])
        return [1.0 if len(self.world.shard(size)) else 0.0 for size in sizes]

    def loader(self, dataset, collate_fn, num_workers: int, seed: int, pin_memory: bool = False) -> DataLoader:
        """A DataLoader over `dataset` that yields this rank's slices; its own generator only seeds the workers,
        so the global RNG (dropout, initialisation) is left as a single-process run leaves it."""
        return DataLoader(
            dataset,
            batch_sampler=self,
            num_workers=num_workers,
            collate_fn=collate_fn,
            generator=torch.Generator().manual_seed(seed),
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,  # the same workers serve every epoch
        )


# ------------------------------------------------------------------------------------------ data loading

WORKERS_ENV = "SPARC_EVAL_NUM_WORKERS"
MAX_AUTO_WORKERS = 8


def default_num_workers(world: World = SINGLE) -> int:
    """DataLoader workers per rank when --num-workers is not given: SPARC_EVAL_NUM_WORKERS if set, else half of the
    CPUs this process may use, divided among the ranks on this node, at most 8 (the other half runs the model's
    intra-op threads). A 2-core machine gets 1 worker for one process, none for two."""
    raw = os.environ.get(WORKERS_ENV)
    if raw is not None:
        if not raw.isdigit():
            raise SparcEvalError(f"{WORKERS_ENV}={raw!r} must be a whole number of worker processes")
        return int(raw)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", str(world.size)))
    return min(MAX_AUTO_WORKERS, cpus // max(1, local_ranks) // 2)
