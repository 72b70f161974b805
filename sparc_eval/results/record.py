"""The result record: one JSON per (checkpoint, task card), plus a per-sample JSONL beside it.

The table, regression gate and leaderboard read only these files. Records are written atomically,
samples first and record last, so an existing record always has its samples file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import write_json_atomic, write_jsonl_atomic

SCHEMA_VERSION = 1
RECORD_SUFFIX = ".record.json"


@dataclass
class MetricValue:
    value: float | None  # None where the metric is undefined (e.g. top-5 with fewer than 5 classes), never NaN
    # None marks a descriptive quantity with no better direction (a chance level, a raw loss): reported, never ranked or gated.
    higher_is_better: bool | None


@dataclass
class ResultRecord:
    task: dict[str, Any]  # name, version, card_sha256, runner, card_path, description
    checkpoint: dict[str, Any]  # ref, sha256, and the model's describe()
    metrics: dict[str, MetricValue]
    n_samples: int
    samples_file: str  # file name, relative to the record
    seed: int
    precision: str
    device: str
    limit: int | None
    wall_time_s: float
    throughput: float  # samples per second over the evaluation (fitting excluded)
    fit_time_s: float | None
    created_at: str
    packages: dict[str, str]
    git_revision: str | None
    info: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    world_size: int = 1  # processes that scored the split together (torchrun); 1 for a single process
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any], source: str) -> ResultRecord:
        if raw.get("schema_version") != SCHEMA_VERSION:
            raise SparcEvalError(
                f"{source}: result record schema version {raw.get('schema_version')!r}, expected {SCHEMA_VERSION}"
            )
        try:
            metrics = {k: MetricValue(**v) for k, v in raw["metrics"].items()}
            return cls(**{**raw, "metrics": metrics})
        except (KeyError, TypeError) as exc:
            raise SparcEvalError(f"{source}: not a sparc-eval result record ({exc})") from None

    def metric_values(self) -> dict[str, float | None]:
        return {k: m.value for k, m in self.metrics.items()}


def direction_arrow(higher_is_better: bool | None) -> str:
    """↑ / ↓ for ranked metrics, nothing for descriptive ones."""
    return {True: "↑", False: "↓", None: ""}[higher_is_better]


def clean_metric(value: Any) -> float | None:
    """NaN and missing become None so that JSON stays valid and 'undefined' is explicit."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def record_path(results_dir: Path, checkpoint_sha256: str, task_name: str, card_sha256: str, limit: int | None) -> Path:
    """`RESULTS/<checkpoint sha256[:16]>/<task>-<card sha256[:12]>[-limitN].record.json`; artifacts share the stem."""
    suffix = f"-limit{limit}" if limit is not None else ""
    return Path(results_dir) / checkpoint_sha256[:16] / f"{task_name}-{card_sha256[:12]}{suffix}{RECORD_SUFFIX}"


def artifact_path(record_file: Path, name: str) -> Path:
    """A file that belongs to a record, e.g. artifact_path(rec, "samples.jsonl") or (rec, "detections.json")."""
    return record_file.with_name(record_file.name[: -len(RECORD_SUFFIX)] + "." + name)


def write_record(path: Path, record: ResultRecord, samples: list[dict[str, Any]]) -> None:
    write_jsonl_atomic(path.parent / record.samples_file, samples)
    write_json_atomic(path, record.to_json())


def load_record(path: str | Path) -> ResultRecord:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SparcEvalError(f"result record {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise SparcEvalError(f"result record {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise SparcEvalError(f"result record {path} is not a JSON object")
    return ResultRecord.from_json(raw, str(path))


def load_samples(record_file: str | Path, record: ResultRecord) -> list[dict[str, Any]]:
    path = Path(record_file).parent / record.samples_file
    if not path.is_file():
        raise SparcEvalError(f"per-sample file {path} of record {record_file} does not exist")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise SparcEvalError(f"per-sample file {path}: line {lineno} is not valid JSON") from None
    return rows


def iter_records(results_dir: str | Path) -> Iterator[tuple[Path, ResultRecord]]:
    """Every record under `results_dir` (recursively), in path order."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise SparcEvalError(f"results folder {results_dir} does not exist")
    for path in sorted(results_dir.rglob(f"*{RECORD_SUFFIX}")):
        yield path, load_record(path)
