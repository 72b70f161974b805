"""`evaluate(ckpt, task)`: card -> model -> runner -> metrics -> result record (DESIGN.md, "Data flow").

It sits beside the CLI, above `tasks`, `results` and `models`, since it is the one place that joins them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sparc_eval.errors import SparcEvalError
from sparc_eval.models.loaders import load_model
from sparc_eval.progress import console
from sparc_eval.provenance import git_revision, numerics, package_versions
from sparc_eval.results.record import (
    RECORD_SUFFIX,
    MetricValue,
    ResultRecord,
    artifact_path,
    load_record,
    metric_value,
    numbers_identity,
    record_path,
    stale_reason,
    write_record,
)
from sparc_eval.tasks.card import TaskCard, load_card
from sparc_eval.tasks.distributed import SINGLE, default_num_workers, world_from_env
from sparc_eval.tasks.feature_cache import FeatureCache, default_cache_dir, model_id
from sparc_eval.tasks.runner import RunContext, get_runner, seed_everything

DEFAULT_RESULTS_DIR = Path("results")
DEFAULT_DATA_DIR = Path("data")


def resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SparcEvalError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SparcEvalError(f"device {device!r} asked for but no CUDA device is available")
    return dev


@dataclass
class Evaluation:
    record: ResultRecord
    path: Path
    reused: bool  # an existing record was returned instead of evaluating again
    recomputed_because: str | None = None  # why an existing record at `path` was not reused


def _importable(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None  # None: imports of it are blocked
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_requirements(card: TaskCard, ckpt: str) -> None:
    """Stop before any work when an optional library the run needs is missing, with one line naming the extra.

    Runners (`requirements(params)`), readers and model loaders (a `requires` attribute) declare what they
    import beyond the core dependencies, as {import name: sparc-eval extra that installs it}.
    """
    from sparc_eval.data.registry import READERS
    from sparc_eval.models.loaders import LOADERS, split_reference

    needs: dict[str, tuple[str, str]] = {}  # import name -> (extra, who needs it)
    for module, extra in get_runner(card.runner).requirements(card.runner_params).items():
        needs.setdefault(module, (extra, f"runner {card.runner!r}"))
    for spec in filter(None, (card.dataset, card.fit_dataset)):
        for module, extra in getattr(READERS.get(spec.format), "requires", {}).items():
            needs.setdefault(module, (extra, f"reader {spec.format!r}"))
    source, _ = split_reference(ckpt)
    for module, extra in getattr(LOADERS.get(source), "requires", {}).items():
        needs.setdefault(module, (extra, f"model source {source!r}"))
    for module, (extra, who) in needs.items():
        if not _importable(module):
            raise SparcEvalError(
                f"task {card.name}: {who} needs the optional library {module!r}, which is not installed: "
                f"pip install 'sparc-eval[{extra}]'"
            )


def evaluate(ckpt: str, task: str | Path, **overrides) -> ResultRecord:
    """Score checkpoint `ckpt` on task `task` (card name or path); returns the result record (see run_evaluation)."""
    return run_evaluation(ckpt, task, **overrides).record


def run_evaluation(
    ckpt: str,
    task: str | Path,
    *,
    out: str | Path = DEFAULT_RESULTS_DIR,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    limit: int | None = None,
    batch_size: int = 64,
    precision: str = "fp32",
    device: str = "cpu",
    num_workers: int | None = None,
    seed: int = 0,
    force: bool = False,
    trust_pickle: bool = False,
    cache: bool = True,
    distributed: bool = True,
) -> Evaluation:
    """Score checkpoint `ckpt` on task `task` (card name or path).

    An existing record at the same path is returned as is only when everything that determines its numbers
    matches the request (results.record.numbers_identity: checkpoint and card sha256, runner params, data, seed,
    precision, limit, batch size, device kind, sparc-eval version) and its samples file and artifacts still match
    the sha256 it keeps; otherwise the run is computed again, saying why, unless `force` (always recompute).
    Nothing is written unless the whole evaluation succeeds.

    Under torchrun every process calls this; each scores its slice of the split and rank 0 alone writes the
    record (sparc_eval.tasks.distributed); `distributed` False scores on this process alone even under torchrun
    (e.g. rank 0 during training). `num_workers` None: default_num_workers(). `cache` False bypasses the
    feature cache (sparc_eval.tasks.feature_cache).
    """
    if precision not in ("fp32", "bf16"):
        raise SparcEvalError(f"unknown precision {precision!r}; use fp32 or bf16")
    if limit is not None and limit < 1:
        raise SparcEvalError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise SparcEvalError(f"--batch-size must be at least 1, got {batch_size}")
    card = load_card(task)  # validated completely: keys, reader options, runner params
    runner_cls = get_runner(card.runner, card.path)
    params = card.runner_params
    check_requirements(card, ckpt)
    dev = resolve_device(device)
    world = world_from_env(dev.type) if distributed else SINGLE
    if world.backend == "nccl" and dev.index is None:
        dev = torch.device("cuda", world.local_rank)  # one GPU per process
    num_workers = default_num_workers(world) if num_workers is None else num_workers

    task_info = {
        "name": card.name,
        "version": card.version,
        "card_sha256": card.sha256,
        "runner": card.runner,
        "family": runner_cls.family,
        "card_path": str(card.path),
        "description": card.description,
        "dataset": card.dataset.to_json(),
        "fit_dataset": card.fit_dataset.to_json() if card.fit_dataset else None,
        "synthscenes": card.synthscenes,
        "params": dataclasses.asdict(params),
    }
    task_info = json.loads(json.dumps(task_info))  # as a record will hold it (tuples become lists), for the reuse check
    packages = package_versions()
    settings = {"seed": seed, "precision": precision, "limit": limit, "batch_size": batch_size, "device": str(dev)}

    model = load_model(ckpt, trust_pickle=trust_pickle)
    described = model.describe()
    if len(set(world.gather([described["sha256"]]))) > 1:  # e.g. a path that names other files on another node
        raise SparcEvalError(
            f"the ranks loaded different weights for checkpoint {ckpt!r}; every rank must read the same checkpoint"
        )
    path = record_path(Path(out), described["sha256"], card.name, card.sha256, limit)
    reason, existing = None, None
    if path.is_file() and not force:
        wanted = numbers_identity(task_info, described["sha256"], {**settings, "sparc_eval": packages.get("sparc-eval")})
        try:
            existing = load_record(path)
            reason = stale_reason(path, existing, wanted)
        except SparcEvalError as exc:
            reason = f"the existing record cannot be used ({exc})"
    # Every rank takes part (a rank without the file, e.g. on another node, votes to recompute).
    if world.all_true(existing is not None and reason is None):
        return Evaluation(existing, path, reused=True)
    if reason is not None and world.is_main:
        console.print(f"recomputing {card.name}: {reason}", highlight=False, markup=False, soft_wrap=True)

    seed_everything(seed)
    model = model.to(dev).eval()
    ctx = RunContext(
        device=dev,
        batch_size=batch_size,
        precision=precision,
        limit=limit,
        num_workers=num_workers,
        seed=seed,
        data_dir=Path(data_dir),
        work_dir=path.parent,
        record_stem=path.name[: -len(RECORD_SUFFIX)],
        # Fitted state depends on the seed too (heads and captioners are initialised and shuffled by it).
        cache_dir=Path(out) / "cache" / f"{described['sha256'][:16]}-{card.sha256[:12]}-seed{seed}",
        world=world,
        features=FeatureCache(default_cache_dir(Path(out)), model_id(described), precision, dev.type) if cache else None,
    )
    runner = runner_cls(card, params, ctx)

    fit_time = None
    if runner_cls.has_fit_stage:
        start = time.perf_counter()
        runner.fit(model)
        fit_time = time.perf_counter() - start
        model.eval()
    if precision == "bf16":
        # Weights in bf16 as well as autocast: autocast alone re-casts every weight on every forward, which on
        # CPU made bf16 slower than fp32; with bf16 weights it is ~2x faster (docs/eval-speed.md). After fit,
        # so fitted heads train in fp32.
        model = model.to(torch.bfloat16)
    start = time.perf_counter()
    with torch.inference_mode():
        output = runner.evaluate(model)
    wall = time.perf_counter() - start

    unknown = set(output.metrics) - set(runner_cls.metrics)
    if unknown:
        raise RuntimeError(f"runner {card.runner!r} reported undeclared metrics {sorted(unknown)}")
    where = f"task {card.name} (runner {card.runner!r})"
    record = ResultRecord(
        task=task_info,
        checkpoint={"ref": ckpt, **described},
        metrics={
            name: MetricValue(metric_value(output.metrics.get(name), where, name), higher)
            for name, higher in runner_cls.card_metrics(card).items()
        },
        n_samples=output.n_samples,
        samples_file=artifact_path(path, "samples.jsonl").name,
        **settings,
        num_workers=num_workers,
        threads=torch.get_num_threads(),
        numerics=numerics(),
        wall_time_s=round(wall, 3),
        throughput=round(output.n_samples / wall, 3) if wall > 0 else 0.0,
        fit_time_s=None if fit_time is None else round(fit_time, 3),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        packages=packages,
        git_revision=git_revision(),
        info=output.info,
        artifacts=output.artifacts,
        world_size=world.size,
    )
    # Rank 0 writes only once every rank has got here: a rank that failed has left, so this collective fails too.
    world.barrier()
    if world.is_main:
        write_record(path, record, output.samples)
    ctx.store_features()  # only a run that succeeded leaves cache entries
    world.barrier()  # no rank returns before the record exists
    return Evaluation(record, path, reused=False, recomputed_because=reason)
