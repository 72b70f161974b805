"""Gathering result records for the table, the regression gate and the leaderboard.

One place decides how a checkpoint is named, which record wins when a folder holds several for the
same checkpoint and task (the newest), and which task family a runner belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparc_eval.errors import SparcEvalError
from sparc_eval.results.record import ResultRecord, iter_records

# The SPARC paper's table order of task families; a runner names its own family (Runner.family) and the
# record carries it, so a plugin's family needs no entry here: families the paper lacks come after these,
# by name, and the diagnostics (grounding probes, ...) last.
PAPER_FAMILIES = ("zero-shot classification", "retrieval", "segmentation", "detection", "captioning")
DIAGNOSTICS = "diagnostics"


def family_rank(family: str) -> tuple[int, str]:
    """Sort key of a task family in the paper's order."""
    if family in PAPER_FAMILIES:
        return (PAPER_FAMILIES.index(family), "")
    return (len(PAPER_FAMILIES) + (family == DIAGNOSTICS), family)


def checkpoint_name(checkpoint: dict[str, Any]) -> str:
    """A readable, sha-free name: the checkpoint card's name when there is one, else the ref's last part.

    `runs/quick/tiny-sparc` -> `tiny-sparc`, `checkpoints/tiny-clip.yaml` -> `tiny-clip`,
    `openclip:ViT-B-16@/w/vitb16.safetensors` -> `openclip:ViT-B-16@vitb16`.
    """
    if checkpoint.get("name"):
        return str(checkpoint["name"])
    ref = str(checkpoint.get("ref") or "")
    if not ref:
        return "unnamed"
    if ref.startswith("openclip:"):
        arch, _, weights = ref.partition("@")
        return f"{arch}@{_stem(weights)}" if weights else arch
    return _stem(ref)


def _stem(ref: str) -> str:
    last = Path(ref.rstrip("/")).name
    for suffix in (".yaml", ".yml", ".safetensors"):
        if last.endswith(suffix):
            return last[: -len(suffix)]
    return last


@dataclass(frozen=True)
class Entry:
    """One result record with the names the table, regression gate and leaderboard use for it."""

    path: Path
    record: ResultRecord

    @property
    def name(self) -> str:
        return checkpoint_name(self.record.checkpoint)

    @property
    def sha256(self) -> str:
        return str(self.record.checkpoint.get("sha256") or "")

    @property
    def task(self) -> str:
        return str(self.record.task["name"])

    @property
    def family(self) -> str:
        return str(self.record.task.get("family") or DIAGNOSTICS)

    @property
    def label(self) -> str:
        """Row label: name, short sha, and the sample limit when the run was partial."""
        limit = f" [limit {self.record.limit}]" if self.record.limit is not None else ""
        return f"{self.name} ({self.sha256[:8]}){limit}"


def collect(results_dir: str | Path, key: str = "run") -> tuple[list[Entry], list[Entry]]:
    """The newest record under `results_dir` per key, in row order, and the older ones it superseded.

    key "run": one record per (checkpoint name, sha256, limit, task) -- the table's cells.
    key "name": one record per (checkpoint name, task) -- what the regression gate compares,
    since a retrained checkpoint keeps its name but not its sha.
    """
    entries = [Entry(path, record) for path, record in iter_records(results_dir)]
    if not entries:
        raise SparcEvalError(f"results folder {results_dir} holds no result records (*.record.json)")
    identity = {
        "run": lambda e: (e.name, e.sha256, e.record.limit, e.task),
        "name": lambda e: (e.name, e.task),
    }[key]
    kept: dict[tuple, Entry] = {}
    superseded: list[Entry] = []
    for entry in sorted(entries, key=lambda e: (e.record.created_at, str(e.path)), reverse=True):
        if identity(entry) in kept:
            superseded.append(entry)
        else:
            kept[identity(entry)] = entry

    def row_order(e: Entry) -> tuple:
        return (e.name, e.sha256, e.record.limit is not None, e.record.limit or 0, e.task)  # full runs before limited ones

    return sorted(kept.values(), key=row_order), superseded
