"""Hand-made result records for the table, regression and leaderboard tests (written with sparc_eval.results.record).

Metric names and their better directions come from the runner's own declaration (`Runner.metrics`), so a
fixture can only hold metrics a real record of that runner holds, with the direction it would have.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sparc_eval.results.record import MetricValue, ResultRecord, artifact_path, record_path, write_record
from sparc_eval.tasks.runner import RUNNERS


def fake_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_run(
    results_dir: Path,
    *,
    ckpt: str,
    task: str,
    metrics: dict[str, float | None],
    samples: list[dict[str, Any]] | None = None,
    runner: str = "classification",
    ckpt_sha: str | None = None,
    card_sha: str | None = None,
    card_path: str = "",
    version: int = 1,
    limit: int | None = None,
    created_at: str = "2025-01-01T00:00:00+00:00",
    params: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write one record (+ its samples file) for checkpoint folder `runs/<ckpt>` on `task`; returns the record path.

    `metrics` maps names the runner declares to values (None: undefined); their directions are the runner's."""
    declared = RUNNERS.get(runner).metrics
    undeclared = sorted(set(metrics) - set(declared))
    if undeclared:
        raise ValueError(f"runner {runner!r} declares no metric {undeclared[0]!r}; it declares {', '.join(declared)}")
    ckpt_sha = ckpt_sha or fake_sha(ckpt)
    card_sha = card_sha or fake_sha(f"{task} v{version}")
    samples = samples if samples is not None else [{"id": i} for i in range(4)]
    path = record_path(results_dir, ckpt_sha, task, card_sha, limit)
    record = ResultRecord(
        task={
            "name": task,
            "version": version,
            "card_sha256": card_sha,
            "runner": runner,
            "family": RUNNERS.get(runner).family,
            "card_path": card_path,
            "description": "",
            "dataset": {"format": "pairs", "root": "{data}/pairs", "split": "val", "options": {}},
            "fit_dataset": None,
            "synthscenes": None,
            "params": params or {},
        },
        checkpoint={"ref": f"runs/{ckpt}", "sha256": ckpt_sha, "source": "sparc-eval", "arch": "tiny"},
        metrics={name: MetricValue(value, declared[name]) for name, value in metrics.items()},
        n_samples=len(samples),
        samples_file=artifact_path(path, "samples.jsonl").name,
        seed=seed,
        precision="fp32",
        device="cpu",
        limit=limit,
        batch_size=64,
        num_workers=0,
        threads=1,
        wall_time_s=1.0,
        throughput=len(samples),
        fit_time_s=None,
        created_at=created_at,
        packages={},
        git_revision=None,
    )
    write_record(path, record, samples)
    return path
