"""Results over training seeds: checkpoints that share a recipe and differ only by seed make one row.

A sparc-eval checkpoint's record carries `checkpoint.training = {"seed", "recipe"}` (models.checkpoint
.training_recipe: every training setting but the seed and how the run was executed, plus the training data's
hash). Records whose checkpoints have the same name, the same recipe and the same sample limit form one group,
one member per checkpoint (sha256). A checkpoint without a recipe (open_clip, Hugging Face) is a group of its own.
A group's cell is the mean over its members of the metric, its spread the sample standard deviation (n - 1;
undefined for one seed), and n the number of members whose value is defined.

`paired_test` compares two groups task by task over the same test images: per image, each group's outcome is
averaged over its seeds, and a paired bootstrap over images (the regression gate's resampling) tests the difference
of the groups' mean metric; with one seed on each side and 0/1 per-sample outcomes it is the exact McNemar test.
Metrics without per-sample outcomes are recomputed on each resample by the runner's aggregate, per seed, then
averaged over seeds.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import sha256_text
from sparc_eval.models.checkpoint import RUN_LEVEL_TRAINING_KEYS
from sparc_eval.results.collect import Entry


def seed_of(entry: Entry) -> int | None:
    training = entry.record.checkpoint.get("training")
    return training.get("seed") if isinstance(training, dict) else None


def recipe_sha256(entry: Entry) -> str | None:
    """sha256 of the checkpoint's recipe (all but the seed), or None for a checkpoint trained elsewhere."""
    training = entry.record.checkpoint.get("training")
    if not isinstance(training, dict) or not isinstance(training.get("recipe"), dict):
        return None
    # Keys that say how a run was executed are left out here too: records made before a key joined that list
    # (num_workers) still group with newer ones.
    recipe = {k: v for k, v in training["recipe"].items() if k not in RUN_LEVEL_TRAINING_KEYS}
    return sha256_text(json.dumps(recipe, sort_keys=True, default=str))


def group_key(entry: Entry) -> tuple:
    recipe = recipe_sha256(entry)
    return (entry.name, recipe or f"checkpoint {entry.sha256}", entry.record.limit)


@dataclass
class SeedGroup:
    """Records of the checkpoints that share one recipe; `members` maps checkpoint sha256 to its seed."""

    name: str
    recipe: str | None
    limit: int | None
    entries: list[Entry] = field(default_factory=list)

    @property
    def members(self) -> dict[str, int | None]:
        return {e.sha256: seed_of(e) for e in sorted(self.entries, key=lambda e: (seed_of(e) is None, seed_of(e) or 0))}

    @property
    def seeds(self) -> list[int | None]:
        return list(self.members.values())

    def label(self, with_recipe: bool) -> str:
        """`name (2 seeds)`, `name [recipe 1a2b3c4d] (2 seeds)` where two recipes share a name, or the checkpoint's
        own label (name and short sha) for a checkpoint without a recipe."""
        if self.recipe is None:
            return self.entries[0].label
        n = len(self.members)
        limit = f" [limit {self.limit}]" if self.limit is not None else ""
        recipe = f" [recipe {self.recipe[:8]}]" if with_recipe else ""
        return f"{self.name}{recipe} ({n} seed{'s' * (n != 1)}){limit}"

    def by_task(self, task: str) -> list[Entry]:
        return [e for e in self.entries if e.task == task]


def group_entries(entries: Iterable[Entry]) -> dict[str, SeedGroup]:
    """Groups in the entries' order, keyed by their row label."""
    groups: dict[tuple, SeedGroup] = {}
    for e in entries:
        key = group_key(e)
        recipe = recipe_sha256(e)
        groups.setdefault(key, SeedGroup(e.name, recipe, e.record.limit)).entries.append(e)
    names = [g.name for g in groups.values() if g.recipe is not None]
    shared = {n for n in names if names.count(n) > 1}
    labelled = {g.label(with_recipe=g.name in shared): g for g in groups.values()}
    for label, group in labelled.items():
        _check_one_card_per_task(label, group)
    return labelled


def card_of(entry: Entry) -> str:
    return str(entry.record.task.get("card_sha256") or "")


def _check_one_card_per_task(label: str, group: SeedGroup) -> None:
    """A mean over seeds is only a mean of one task: every seed's record of a task must come from the same card."""
    for task in dict.fromkeys(e.task for e in group.entries):
        by_card = {card_of(e): e for e in group.by_task(task)}
        if len(by_card) > 1:
            shown = ", ".join(f"card {card[:12]} for seed {seed_of(e)}" for card, e in by_card.items())
            raise SparcEvalError(
                f"{label} on {task}: its seeds were scored with different task cards ({shown}); re-score them with one "
                "card, or show them apart with --per-seed"
            )


def mean_spread(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


# ---------------------------------------------------------------------------------------- paired test


@dataclass
class PairedComparison:
    task: str
    metric: str
    higher_is_better: bool | None
    mean_a: float | None
    mean_b: float | None
    n_a: int
    n_b: int
    test: str  # "McNemar", "bootstrap" or "none"
    p_value: float | None = None
    ci_low: float | None = None  # 95 % bootstrap interval of mean_b - mean_a
    ci_high: float | None = None
    note: str = ""

    @property
    def delta(self) -> float | None:
        return None if self.mean_a is None or self.mean_b is None else self.mean_b - self.mean_a


def paired_test(
    a: SeedGroup,
    b: SeedGroup,
    *,
    n_bootstrap: int = 1000,
    n_bootstrap_aggregate: int | None = None,
    seed: int = 0,
    tasks: Iterable[str] | None = None,
) -> list[PairedComparison]:
    """Group b against group a on every task both were scored on, or on `tasks` only (see the module doc).
    `n_bootstrap_aggregate` (default: n_bootstrap) resamples the metrics that the runner's aggregate recomputes."""
    from sparc_eval.results.regress import _binary_outcomes, _mcnemar, _pair_samples

    if n_bootstrap < 1:
        raise SparcEvalError(f"--bootstrap must be at least 1, got {n_bootstrap}")
    out: list[PairedComparison] = []
    wanted = None if tasks is None else set(tasks)
    tasks = [t for t in dict.fromkeys(e.task for e in a.entries) if b.by_task(t) and (wanted is None or t in wanted)]
    for task in tasks:
        ea, eb = a.by_task(task), b.by_task(task)
        reference = ea[0]
        if card_of(ea[0]) != card_of(eb[0]):
            raise SparcEvalError(
                f"{a.name} vs {b.name} on {task}: scored with different task cards ({card_of(ea[0])[:12]} and "
                f"{card_of(eb[0])[:12]}); a paired test needs both on the same card"
            )
        # Every seed of both groups paired to the first one's sample order: the same test images throughout.
        rows_a, rows_b = [], []
        for entry in ea + eb:
            paired = _pair_samples(reference, entry)
            if isinstance(paired, str):
                raise SparcEvalError(f"{a.name} vs {b.name} on {task}: {paired}")
            (rows_a if entry in ea else rows_b).append(paired[1])
        rng = np.random.default_rng([seed, zlib.crc32(f"{a.name}/{b.name}/{task}".encode())])
        recomputed: list[PairedComparison] = []  # metrics without per-image outcomes: one aggregate pass for all
        for metric, m in reference.record.metrics.items():
            va = [e.record.metrics[metric].value for e in ea if metric in e.record.metrics]
            vb = [e.record.metrics[metric].value for e in eb if metric in e.record.metrics]
            va, vb = [v for v in va if v is not None], [v for v in vb if v is not None]
            comparison = PairedComparison(
                task,
                metric,
                m.higher_is_better,
                mean_spread(va)[0] if va else None,
                mean_spread(vb)[0] if vb else None,
                len(va),
                len(vb),
                "none",
            )
            out.append(comparison)
            if comparison.delta is None or m.higher_is_better is None:
                comparison.note = "undefined" if comparison.delta is None else "descriptive: not tested"
                continue
            outcomes = [_binary_outcomes(metric, rows_a[0], r) for r in rows_a + rows_b]
            if all(o is not None for o in outcomes):
                per_a = np.mean([o[1] for o in outcomes[: len(rows_a)]], axis=0)
                per_b = np.mean([o[1] for o in outcomes[len(rows_a) :]], axis=0)
                _bootstrap_means(comparison, per_a, per_b, rng, n_bootstrap)
                if len(rows_a) == 1 and len(rows_b) == 1:
                    comparison.test, comparison.p_value = "McNemar", _mcnemar(per_a.astype(bool), per_b.astype(bool))
            else:
                recomputed.append(comparison)
        if recomputed:
            _bootstrap_aggregate(recomputed, ea, eb, rows_a, rows_b, rng, n_bootstrap_aggregate or n_bootstrap)
    return out


def _two_sided(deltas: np.ndarray) -> float:
    below = (np.sum(deltas <= 0) + 1) / (deltas.size + 1)
    above = (np.sum(deltas >= 0) + 1) / (deltas.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def _finish(comparison: PairedComparison, deltas: np.ndarray) -> None:
    comparison.test = "bootstrap"
    comparison.p_value = _two_sided(deltas)
    comparison.ci_low, comparison.ci_high = (float(x) for x in np.quantile(deltas, [0.025, 0.975]))


def _bootstrap_means(c: PairedComparison, per_a: np.ndarray, per_b: np.ndarray, rng: Any, n_bootstrap: int) -> None:
    """Per-image outcomes (averaged over seeds): resample images, difference of the means."""
    n = per_a.size
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    _finish(c, per_b[idx].mean(1) - per_a[idx].mean(1))


def _bootstrap_aggregate(
    comparisons: list[PairedComparison],
    entries_a: list[Entry],
    entries_b: list[Entry],
    rows_a: list[list[dict]],
    rows_b: list[list[dict]],
    rng: Any,
    n_bootstrap: int,
) -> None:
    """Resample images; each seed's metrics recomputed by the runner's aggregate; groups compared by their seed means."""
    from sparc_eval.results.regress import _recorded_params, recompute
    from sparc_eval.tasks.runner import get_runner

    runner = get_runner(str(entries_a[0].record.task["runner"]))
    params = _recorded_params(entries_a[0], runner)
    n = len(rows_a[0])
    deltas: dict[str, list[float]] = {c.metric: [] for c in comparisons}
    try:
        for _ in range(n_bootstrap):
            idx = rng.integers(0, n, size=n)
            sides = [
                [recompute(runner, [rows[i] for i in idx], params, entry) for rows, entry in zip(side, entries)]
                for side, entries in ((rows_a, entries_a), (rows_b, entries_b))
            ]
            for metric, values in deltas.items():
                means = []
                for side in sides:
                    defined = [v for v in (agg.get(metric) for agg in side) if v is not None]
                    means.append(sum(defined) / len(defined) if defined else None)
                if None not in means:
                    values.append(means[1] - means[0])
    except NotImplementedError:
        for c in comparisons:
            c.note = f"runner {entries_a[0].record.task['runner']!r} cannot recompute its metrics from per-sample records"
        return
    for c in comparisons:
        if not deltas[c.metric]:
            c.note = "the metric was undefined on every resample"
        else:
            _finish(c, np.asarray(deltas[c.metric]))


def find_group(groups: dict[str, SeedGroup], ref: str) -> SeedGroup:
    """The group whose row label is `ref`, or the only one whose checkpoint name is `ref`."""
    if ref in groups:
        return groups[ref]
    named = [g for g in groups.values() if g.name == ref]
    if len(named) == 1:
        return named[0]
    known = ", ".join(repr(label) for label in groups)
    if named:
        raise SparcEvalError(f"{len(named)} rows are named {ref!r}; give the whole row label: {known}")
    raise SparcEvalError(f"no row {ref!r} in the results; rows: {known}")


def paired_json(comparisons: list[PairedComparison]) -> list[dict[str, Any]]:
    """The comparisons as JSON-ready dicts (with delta = mean_b - mean_a)."""
    return [{**asdict(c), "delta": c.delta} for c in comparisons]


def paired_markdown(comparisons: list[PairedComparison], a: str, b: str) -> str:
    """The paired comparison of row b against row a as a Markdown table."""
    lines = [
        f"| task | metric | {a} | {b} | Δ ({b} − {a}) | 95 % interval | test | p |",
        "|:---|:---|---:|---:|---:|:---|:---|---:|",
    ]
    for c in comparisons:
        fmt = lambda v, n: "n/a" if v is None else f"{v:.4g} (n={n})"  # noqa: E731
        interval = "" if c.ci_low is None else f"{c.ci_low:+.3g} … {c.ci_high:+.3g}"
        delta = "" if c.delta is None else f"{c.delta:+.4g}"
        p = "" if c.p_value is None else f"{c.p_value:.3g}"
        test = c.test if not c.note else f"{c.test} ({c.note})"
        arrow = {True: " ↑", False: " ↓", None: ""}[c.higher_is_better]
        lines.append(
            f"| {c.task} | {c.metric}{arrow} | {fmt(c.mean_a, c.n_a)} | {fmt(c.mean_b, c.n_b)} | {delta} | {interval} | {test} | {p} |"
        )
    return "\n".join(lines) + "\n"
