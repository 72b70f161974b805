"""`evaluate(ckpt, task)`: card -> model -> runner -> metrics -> result record (DESIGN.md, "Data flow").

It sits beside the CLI, above `tasks`, `results` and `models`, since it is the one place that joins them.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sparc_eval.errors import SparcEvalError
from sparc_eval.models.loaders import load_model
from sparc_eval.provenance import git_revision, package_versions
from sparc_eval.results.record import (
    RECORD_SUFFIX,
    MetricValue,
    ResultRecord,
    artifact_path,
    clean_metric,
    load_record,
    record_path,
    write_record,
)
from sparc_eval.tasks.card import load_card, validate_params
from sparc_eval.tasks.distributed import default_num_workers, world_from_env
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
) -> Evaluation:
    """Score checkpoint `ckpt` on task `task` (card name or path).

    An existing record for the same (checkpoint sha256, card sha256, limit) is returned as is
    unless `force`. Nothing is written unless the whole evaluation succeeds.

    Under torchrun every process calls this; each scores its slice of the split and rank 0 alone writes the
    record (sparc_eval.tasks.distributed). `num_workers` None: default_num_workers(). `cache` False bypasses
    the feature cache (sparc_eval.tasks.feature_cache).
    """
    if precision not in ("fp32", "bf16"):
        raise SparcEvalError(f"unknown precision {precision!r}; use fp32 or bf16")
    if limit is not None and limit < 1:
        raise SparcEvalError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise SparcEvalError(f"--batch-size must be at least 1, got {batch_size}")
    card = load_card(task)
    runner_cls = get_runner(card.runner, card.path)
    params = validate_params(runner_cls.Params, card.params, card)
    dev = resolve_device(device)
    world = world_from_env(dev.type)
    if world.backend == "nccl" and dev.index is None:
        dev = torch.device("cuda", world.local_rank)  # one GPU per process
    num_workers = default_num_workers(world) if num_workers is None else num_workers

    model = load_model(ckpt, trust_pickle=trust_pickle)
    described = model.describe()
    path = record_path(Path(out), described["sha256"], card.name, card.sha256, limit)
    if world.all_true(path.is_file() and not force):
        return Evaluation(load_record(path), path, reused=True)

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
        cache_dir=Path(out) / "cache" / f"{described['sha256'][:16]}-{card.sha256[:12]}",
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
    record = ResultRecord(
        task={
            "name": card.name,
            "version": card.version,
            "card_sha256": card.sha256,
            "runner": card.runner,
            "family": runner_cls.family,
            "card_path": str(card.path),
            "description": card.description,
        },
        checkpoint={"ref": ckpt, **described},
        metrics={
            name: MetricValue(clean_metric(output.metrics.get(name)), higher) for name, higher in runner_cls.metrics.items()
        },
        n_samples=output.n_samples,
        samples_file=artifact_path(path, "samples.jsonl").name,
        seed=seed,
        precision=precision,
        device=str(dev),
        limit=limit,
        wall_time_s=round(wall, 3),
        throughput=round(output.n_samples / wall, 3) if wall > 0 else 0.0,
        fit_time_s=None if fit_time is None else round(fit_time, 3),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        packages=package_versions(),
        git_revision=git_revision(),
        info=output.info,
        artifacts=output.artifacts,
        world_size=world.size,
    )
    # Rank 0 writes only once every rank has got here: a rank that failed has left, so this collective fails too.
    world.barrier()
    if world.is_main:
        write_record(path, record, output.samples)
    world.barrier()  # no rank returns before the record exists
    return Evaluation(record, path, reused=False)
