"""The result record: one JSON per (checkpoint, task card), plus a per-sample JSONL beside it.

The table, regression gate and leaderboard read only these files, never a card: a record holds everything
needed to interpret and re-score it (the card's dataset, reader options and validated runner params, the
run's settings, the runner's metric declarations and family). Records are written atomically, samples
first and record last, so an existing record always has its samples file; the record keeps the samples'
sha256 so that an edited or replaced samples file is caught. A metric is a finite number or None
(undefined); NaN and infinity never enter a record, and a record holding one is refused on reading.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import RECORD_MAX_BYTES, inside, read_json_object, sha256_file, write_json_atomic, write_jsonl_atomic
from sparc_eval.schema import Name, NonEmpty, Seed, StrictModel, validate

SCHEMA_VERSION = 2
RECORD_SUFFIX = ".record.json"


@dataclass
class MetricValue:
    value: float | None  # None where the metric is undefined (e.g. top-5 with fewer than 5 classes), never NaN
    # None marks a descriptive quantity with no better direction (a chance level, a raw loss): reported, never ranked or gated.
    higher_is_better: bool | None


@dataclass
class ResultRecord:
    # name, version, card_sha256, runner, family, card_path, description, and what the card said to run:
    # dataset / fit_dataset ({format, root, split, options}), synthscenes, params (the runner's, validated, defaults in)
    task: dict[str, Any]
    checkpoint: dict[str, Any]  # ref, sha256, and the model's describe()
    metrics: dict[str, MetricValue]  # every metric the runner declares, with its direction
    n_samples: int
    samples_file: str  # file name, beside the record
    seed: int
    precision: str
    device: str
    limit: int | None
    batch_size: int
    num_workers: int
    threads: int  # intra-op threads (torch.get_num_threads()): float sums are reordered by it, counts are not
    wall_time_s: float
    throughput: float  # samples per second over the evaluation (fitting excluded)
    fit_time_s: float | None
    created_at: str
    packages: dict[str, str]
    git_revision: str | None
    info: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> file name beside the record
    world_size: int = 1  # processes that scored the split together (torchrun); 1 for a single process
    samples_sha256: str = ""  # filled in by write_record
    artifacts_sha256: dict[str, str] = field(default_factory=dict)  # name -> sha256, filled in by write_record
    # provenance.numerics(): CPU model, ATen capability, threads, MKL / oneDNN: what decides the low bits of the
    # metrics besides the seed (README, "What a seed reproduces"); descriptive, never part of the reuse check.
    numerics: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any], source: str) -> ResultRecord:
        """A record validated strictly against RecordSchema; every failure is one line naming `source` and the key."""
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SparcEvalError(
                f"{source} is a result record of schema version {version!r}; this sparc-eval reads version "
                f"{SCHEMA_VERSION} only: re-run the evaluation to rewrite it"
            )
        _refuse_non_finite(raw.get("metrics"), source)
        schema = validate(RecordSchema, raw, source)
        values = {name: getattr(schema, name) for name in RecordSchema.model_fields}
        # Read back as written: optional keys the file lacks are not added as defaults.
        dumped = {name: v.model_dump(exclude_unset=True) if isinstance(v, StrictModel) else v for name, v in values.items()}
        dumped["metrics"] = {k: MetricValue(m.value, m.higher_is_better) for k, m in schema.metrics.items()}
        return cls(**dumped)

    def metric_values(self) -> dict[str, float | None]:
        return {k: m.value for k, m in self.metrics.items()}


# ------------------------------------------------------------------------------------------------ schema

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# A file beside the record: a bare name, never a path (a record never leads outside its folder).
FileName = Annotated[str, Field(pattern=r"^[^/\\]+$", min_length=1)]


class MetricSchema(StrictModel):
    value: float | None
    higher_is_better: bool | None


class DatasetRecordSchema(StrictModel):
    format: NonEmpty
    root: NonEmpty
    split: NonEmpty
    options: dict[str, Any]


class TaskRecordSchema(StrictModel):
    name: Name
    version: int
    card_sha256: Sha256
    runner: NonEmpty
    family: NonEmpty
    card_path: str
    description: str
    dataset: DatasetRecordSchema
    fit_dataset: DatasetRecordSchema | None
    synthscenes: dict[str, int] | None
    params: dict[str, Any]


class TrainingRecordSchema(StrictModel):
    """How a sparc-eval checkpoint was trained (models.checkpoint.training_recipe): its rows over seeds hang on it."""

    seed: Seed | None
    recipe: dict[str, Any]


class CheckpointRecordSchema(StrictModel, extra="allow"):
    ref: str
    sha256: Sha256
    name: NonEmpty | None = None
    training: TrainingRecordSchema | None = None


class RecordSchema(StrictModel):
    task: TaskRecordSchema
    checkpoint: CheckpointRecordSchema
    metrics: dict[str, MetricSchema]
    n_samples: int = Field(ge=0)
    samples_file: FileName
    seed: int = Field(ge=0)
    precision: NonEmpty
    device: NonEmpty
    limit: int | None = Field(ge=1)
    batch_size: int = Field(ge=1)
    num_workers: int = Field(ge=0)
    threads: int = Field(ge=1)
    wall_time_s: float = Field(ge=0)
    throughput: float = Field(ge=0)
    fit_time_s: float | None = Field(ge=0)
    created_at: str
    packages: dict[str, str]
    git_revision: str | None
    info: dict[str, Any]
    artifacts: dict[str, FileName]
    world_size: int = Field(ge=1)
    samples_sha256: Sha256
    artifacts_sha256: dict[str, Sha256]
    numerics: dict[str, Any] = {}
    schema_version: int


def _refuse_non_finite(metrics: Any, source: str) -> None:
    """NaN and infinity are named with their metric (the schema would only say 'not finite')."""
    if not isinstance(metrics, dict):
        return
    for name, metric in metrics.items():
        value = metric.get("value") if isinstance(metric, dict) else None
        if isinstance(value, float) and not math.isfinite(value):
            raise SparcEvalError(
                f"{source}: metric {name!r} is {value}; a record holds a finite number or null (undefined), "
                "never NaN or infinity: re-run the evaluation"
            )


def direction_arrow(higher_is_better: bool | None) -> str:
    """↑ / ↓ for ranked metrics, nothing for descriptive ones."""
    return {True: "↑", False: "↓", None: ""}[higher_is_better]


def metric_value(value: Any, where: str, name: str) -> float | None:
    """A runner's metric value as it enters a record: a finite float, or None (undefined); anything else (NaN,
    infinity, a string) is an error naming the task and the metric."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise SparcEvalError(f"{where}: metric {name!r} is {value!r}, not a number (None marks an undefined metric)")
    number = float(value)
    if not math.isfinite(number):
        raise SparcEvalError(
            f"{where}: metric {name!r} came out as {number}; NaN and infinity never enter a record "
            "(None marks an undefined metric)"
        )
    return number


def record_path(results_dir: Path, checkpoint_sha256: str, task_name: str, card_sha256: str, limit: int | None) -> Path:
    """`RESULTS/<checkpoint sha256[:16]>/<task>-<card sha256[:12]>[-limitN].record.json`; artifacts share the stem."""
    suffix = f"-limit{limit}" if limit is not None else ""
    folder = Path(results_dir) / checkpoint_sha256[:16]
    return inside(folder, f"{task_name}-{card_sha256[:12]}{suffix}{RECORD_SUFFIX}", "task name")


def artifact_path(record_file: Path, name: str) -> Path:
    """A file that belongs to a record, e.g. artifact_path(rec, "samples.jsonl") or (rec, "detections.json")."""
    return inside(record_file.parent, record_file.name[: -len(RECORD_SUFFIX)] + "." + name, "artifact name")


def write_record(path: Path, record: ResultRecord, samples: list[dict[str, Any]]) -> None:
    """Samples first, then the record with the samples' and artifacts' sha256, each file atomically."""
    samples_path = inside(path.parent, record.samples_file, "samples file")
    write_jsonl_atomic(samples_path, samples)
    record.samples_sha256 = sha256_file(samples_path)
    record.artifacts_sha256 = {
        name: sha256_file(inside(path.parent, file, f"artifact {name!r}")) for name, file in record.artifacts.items()
    }
    write_json_atomic(path, record.to_json())


def load_record(path: str | Path) -> ResultRecord:
    """A record, read within bounds (fileio.read_json_object) and validated (ResultRecord.from_json)."""
    path = Path(path)
    raw = read_json_object(path, "result record", RECORD_MAX_BYTES)
    return ResultRecord.from_json(raw, f"result record {path}")


def files_problem(record_file: str | Path, record: ResultRecord) -> str | None:
    """Why the files beside a record no longer belong to it (a samples file or artifact missing or changed since the
    record was written), or None when they all match the sha256 the record keeps."""
    folder = Path(record_file).parent
    files = [("per-sample file", record.samples_file, record.samples_sha256)]
    files += [(f"artifact {name!r}", record.artifacts.get(name, ""), sha) for name, sha in record.artifacts_sha256.items()]
    for what, name, sha in files:
        file = inside(folder, name, f"result record {record_file}: {what}")
        if not file.is_file():
            return f"its {what} {file} is missing"
        if sha256_file(file) != sha:
            return f"its {what} {file} has changed since the record was written (sha256 differs)"
    return None


def load_samples(record_file: str | Path, record: ResultRecord) -> list[dict[str, Any]]:
    """The per-sample rows of a record, checked against the sha256 the record keeps."""
    path = inside(Path(record_file).parent, record.samples_file, f"result record {record_file}: samples_file")
    if not path.is_file():
        raise SparcEvalError(f"per-sample file {path} of record {record_file} does not exist")
    if sha256_file(path) != record.samples_sha256:
        raise SparcEvalError(
            f"per-sample file {path} has changed since record {record_file} was written (sha256 differs): re-run the evaluation"
        )
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    raise SparcEvalError(f"per-sample file {path}: line {lineno} is not valid JSON") from None
                if not isinstance(row, dict):
                    raise SparcEvalError(f"per-sample file {path}: line {lineno} is not a JSON object")
                rows.append(row)
    except UnicodeDecodeError:
        raise SparcEvalError(f"per-sample file {path} is not UTF-8 text") from None
    return rows


def iter_records(results_dir: str | Path) -> Iterator[tuple[Path, ResultRecord]]:
    """Every record under `results_dir` (recursively), in path order."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise SparcEvalError(f"results folder {results_dir} does not exist")
    for path in sorted(results_dir.rglob(f"*{RECORD_SUFFIX}")):
        yield path, load_record(path)


# ------------------------------------------------------------------------------------------- reuse


def numbers_identity(task: dict[str, Any], checkpoint_sha256: str, run: dict[str, Any]) -> dict[str, Any]:
    """Everything that determines a record's numbers, by a readable label, in the order a difference is reported.

    `run` holds seed, precision, limit, batch_size, device and sparc_eval (the version). Left out, and only recorded:
    the number of DataLoader workers and processes (they do not change what is computed), the intra-op thread count
    (it reorders float sums: round-off, which regress --exact allows for), the wall time, the git revision and
    the versions of other packages.
    """
    return {
        "checkpoint sha256": checkpoint_sha256,
        "task card sha256": task["card_sha256"],
        "task card version": task["version"],
        "runner": task["runner"],
        "runner params": task["params"],
        "dataset": task["dataset"],
        "fit dataset": task["fit_dataset"],
        "SynthScenes tree": task["synthscenes"],
        "seed": run["seed"],
        "precision": run["precision"],
        "limit": run["limit"],
        "batch size": run["batch_size"],
        "device": str(run["device"]).split(":")[0],
        "sparc-eval version": run["sparc_eval"],
    }


def record_identity(record: ResultRecord) -> dict[str, Any]:
    run = {
        "seed": record.seed,
        "precision": record.precision,
        "limit": record.limit,
        "batch_size": record.batch_size,
        "device": record.device,
        "sparc_eval": record.packages.get("sparc-eval"),
    }
    return numbers_identity(record.task, str(record.checkpoint["sha256"]), run)


def stale_reason(record_file: Path, record: ResultRecord, wanted: dict[str, Any]) -> str | None:
    """Why the existing `record` cannot stand for the run `wanted` (a numbers_identity), or None when it can."""
    for label, had in record_identity(record).items():
        now = wanted[label]
        if had != now:
            if isinstance(had, dict) and isinstance(now, dict):
                key = next(k for k in sorted({*had, *now}) if had.get(k) != now.get(k))
                return f"{label} key {key!r} {now.get(key)!r} differs from the record's {had.get(key)!r}"
            return f"{label} {_short(now)} differs from the record's {_short(had)}"
    return files_problem(record_file, record)


def _short(value: Any) -> str:
    return value[:12] if isinstance(value, str) and len(value) == 64 else repr(value)
