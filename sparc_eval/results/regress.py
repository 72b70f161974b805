"""The regression gate: compare new result records against a baseline folder, metric by metric.

A metric regresses when it is worse than the baseline by more than an absolute tolerance AND the
drop is significant at level alpha in a paired test on the per-sample records (paired by sample id):
the exact McNemar test (two-sided binomial on the discordant pairs) where every per-sample record
carries a 0/1 field named like the metric, otherwise a paired bootstrap that resamples sample
indices and recomputes the metrics with the runner's `aggregate`. Drops within the tolerance are
never tested. A (checkpoint, task, metric) of the baseline that is missing from the new results, or
evaluated under a different task card (hash or version), sample limit or sample set, fails the gate.

With `exact=True` the two folders are replicas of one deterministic run (same code path, seeds, thread
count, as CI's `quickstart --fast` and its committed baseline): any drop beyond the tolerance and beyond
float round-off (another CPU or thread count reorders sums) fails without a paired test, which on a few
samples could never reach significance.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from sparc_eval.errors import SparcEvalError
from sparc_eval.progress import track
from sparc_eval.results.collect import Entry, collect
from sparc_eval.results.record import ResultRecord, load_samples

# Per-sample fields tried, in order, as the pairing key; the first one present and unique in both files wins.
ID_FIELDS = ("id", "sample_id", "image_id")

PASS, WITHIN_NOISE, REGRESSION, UNDEFINED = "ok", "within noise", "REGRESSION", "undefined"
EXACT_RELATIVE_ROUNDOFF = 1e-6  # exact mode: drops this small relative to max(1, |baseline|) are float round-off


@dataclass
class MetricComparison:
    checkpoint: str
    task: str
    metric: str
    higher_is_better: bool | None
    baseline: float | None
    new: float | None
    test: str = "-"  # "McNemar", "bootstrap", "exact", "none" (no paired test possible) or "-" (not needed)
    p_value: float | None = None
    status: str = PASS
    note: str = ""

    @property
    def delta(self) -> float | None:
        return None if self.baseline is None or self.new is None else self.new - self.baseline

    @property
    def worse_by(self) -> float | None:
        """How much worse the new value is (positive = worse), respecting the metric's direction."""
        delta = self.delta
        return None if delta is None else (-delta if self.higher_is_better else delta)


@dataclass
class Problem:
    """A baseline task that could not be compared: missing from the new results, or evaluated differently."""

    checkpoint: str
    task: str
    kind: str  # "missing" | "changed"
    detail: str


@dataclass
class RegressionReport:
    baseline_dir: str
    results_dir: str
    tolerance: float
    alpha: float
    n_bootstrap: int
    seed: int
    exact: bool = False
    metrics: list[MetricComparison] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    not_in_baseline: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[MetricComparison]:
        return [m for m in self.metrics if m.status == REGRESSION]

    @property
    def passed(self) -> bool:
        return not self.regressions and not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    @property
    def rule(self) -> str:
        if self.exact:
            return (
                f"Exact mode (the two folders replicate one deterministic run): a regression is a metric worse than the "
                f"baseline by more than {self.tolerance:g} (absolute) and more than float round-off "
                f"({EXACT_RELATIVE_ROUNDOFF:g} x max(1, |baseline|)); no paired test. "
                f"Missing tasks or metrics and changed task cards (hash or version), limits or sample sets fail."
            )
        return (
            f"A regression is a metric worse than the baseline by more than {self.tolerance:g} (absolute) AND "
            f"significant at alpha = {self.alpha:g}: two-sided exact McNemar test where the per-sample records carry "
            f"a 0/1 field named like the metric, else a two-sided paired bootstrap ({self.n_bootstrap} resamples of "
            f"the sample ids, seed {self.seed}) over the runner's aggregate; drops within the tolerance are not tested, "
            f"and a drop beyond it that no paired test can check counts as a regression. "
            f"Missing tasks or metrics and changed task cards (hash or version), limits or sample sets fail."
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k != "metrics"},
            "metrics": [{**asdict(m), "delta": m.delta} for m in self.metrics],
            "passed": self.passed,
            "rule": self.rule,
        }


def compare_results(
    baseline_dir: str | Path,
    results_dir: str | Path,
    *,
    tolerance: float = 0.0,
    alpha: float = 0.05,
    n_bootstrap: int = 1000,
    seed: int = 0,
    exact: bool = False,
) -> RegressionReport:
    """Gate the records under `results_dir` against those under `baseline_dir` (see the module docstring)."""
    if tolerance < 0:
        raise SparcEvalError(f"--tolerance must be at least 0, got {tolerance}")
    if not 0 < alpha < 1:
        raise SparcEvalError(f"--alpha must lie strictly between 0 and 1, got {alpha}")
    if n_bootstrap < 1:
        raise SparcEvalError(f"--bootstrap must be at least 1, got {n_bootstrap}")
    baseline, baseline_superseded = collect(baseline_dir, key="name")
    new, new_superseded = collect(results_dir, key="name")
    report = RegressionReport(str(baseline_dir), str(results_dir), tolerance, alpha, n_bootstrap, seed, exact)
    for folder, superseded in ((baseline_dir, baseline_superseded), (results_dir, new_superseded)):
        if superseded:
            report.notes.append(
                f"{folder}: {len(superseded)} older record(s) for the same checkpoint and task ignored (newest wins)"
            )

    new_by_key = {(e.name, e.task): e for e in new}
    for base in baseline:
        fresh = new_by_key.pop((base.name, base.task), None)
        if fresh is None:
            report.problems.append(Problem(base.name, base.task, "missing", f"no record in {results_dir}"))
            continue
        _compare_task(base, fresh, report)
    report.not_in_baseline = [f"{name} / {task}" for name, task in sorted(new_by_key)]
    return report


def _changed(base: ResultRecord, new: ResultRecord) -> str | None:
    """What differs between how the two records were evaluated, or None when they are comparable."""
    checks = (
        ("task card version", base.task.get("version"), new.task.get("version")),
        ("task card sha256", base.task.get("card_sha256"), new.task.get("card_sha256")),
        ("runner", base.task.get("runner"), new.task.get("runner")),
        ("sample limit", base.limit, new.limit),
        ("number of samples", base.n_samples, new.n_samples),
    )
    for what, old, now in checks:
        if old != now:
            return f"{what} changed: {_short(old)} -> {_short(now)}"
    return None


def _short(value: Any) -> str:
    return value[:12] if isinstance(value, str) and len(value) == 64 else repr(value)


def _compare_task(base: Entry, new: Entry, report: RegressionReport) -> None:
    changed = _changed(base.record, new.record)
    if changed:
        report.problems.append(Problem(base.name, base.task, "changed", changed))
        return
    paired = _pair_samples(base, new)
    if isinstance(paired, str):
        report.problems.append(Problem(base.name, base.task, "changed", paired))
        return
    base_rows, new_rows = paired

    to_test: list[MetricComparison] = []
    for metric, old in base.record.metrics.items():
        now = new.record.metrics.get(metric)
        if now is None:
            report.problems.append(Problem(base.name, base.task, "missing", f"metric {metric!r} not in the new record"))
            continue
        if old.higher_is_better != now.higher_is_better:
            report.problems.append(Problem(base.name, base.task, "changed", f"metric {metric!r} changed direction"))
            continue
        comparison = MetricComparison(base.name, base.task, metric, old.higher_is_better, old.value, now.value)
        report.metrics.append(comparison)
        if old.value is None:
            comparison.status = UNDEFINED
        elif old.higher_is_better is None:
            comparison.note = "descriptive (no better direction): reported, not gated"
        elif now.value is None:
            report.problems.append(Problem(base.name, base.task, "changed", f"metric {metric!r} is now undefined"))
            comparison.status = UNDEFINED
        elif comparison.worse_by > _allowed_drop(report, old.value):  # type: ignore[operator]
            to_test.append(comparison)

    if report.exact:
        for comparison in to_test:
            comparison.test, comparison.status = "exact", REGRESSION
        return
    bootstrap = []
    for comparison in to_test:
        outcomes = _binary_outcomes(comparison.metric, base_rows, new_rows)
        if outcomes is None:
            bootstrap.append(comparison)
        else:
            comparison.test, comparison.p_value = "McNemar", _mcnemar(*outcomes)
    if bootstrap:
        _paired_bootstrap(bootstrap, base, new, base_rows, new_rows, report)
    for comparison in to_test:
        significant = comparison.p_value is None or comparison.p_value < report.alpha
        comparison.status = REGRESSION if significant else WITHIN_NOISE


def _allowed_drop(report: RegressionReport, baseline_value: float) -> float:
    """The tolerance; in exact mode at least float round-off, which another CPU or thread count changes
    (seen: grounding means differing in the 9th digit between 1 and 2 threads, every count-based metric equal)."""
    if not report.exact:
        return report.tolerance
    return max(report.tolerance, EXACT_RELATIVE_ROUNDOFF * max(1.0, abs(baseline_value)))


def _pair_samples(base: Entry, new: Entry) -> tuple[list[dict], list[dict]] | str:
    """Both per-sample files aligned by sample id, or a sentence saying why they cannot be paired."""
    base_rows = load_samples(base.path, base.record)
    new_rows = load_samples(new.path, new.record)
    for id_field in ID_FIELDS:
        base_ids = [row.get(id_field) for row in base_rows]
        new_ids = [row.get(id_field) for row in new_rows]
        if None in base_ids or None in new_ids:
            continue
        base_keys, new_keys = list(map(_key, base_ids)), list(map(_key, new_ids))
        if len(set(base_keys)) != len(base_keys) or len(set(new_keys)) != len(new_keys):
            continue
        if set(base_keys) != set(new_keys):
            missing, extra = len(set(base_keys) - set(new_keys)), len(set(new_keys) - set(base_keys))
            return (
                f"sample set changed: {missing} of the baseline's {len(base_keys)} sample id(s) ({id_field}) are not in "
                f"the new per-sample records, and {extra} of the new {len(new_keys)} are not in the baseline's"
            )
        by_id = dict(zip(new_keys, new_rows))
        return base_rows, [by_id[k] for k in base_keys]
    return f"per-sample records cannot be paired: no field among {', '.join(ID_FIELDS)} is present and unique in both files"


def _key(value: Any) -> str:
    return repr(value)  # ids may be ints, strings or lists; repr keeps 1 and "1" apart


def _binary_outcomes(metric: str, base_rows: list[dict], new_rows: list[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    """Paired 0/1 outcomes of `metric` from the per-sample records that carry a field of that name (e.g. only the
    image rows of a retrieval task carry i2t_r1), or None when the records do not carry such outcomes."""
    carried = [(b.get(metric), n.get(metric)) for b, n in zip(base_rows, new_rows) if metric in b or metric in n]
    if not carried or not all(_is_binary(b) and _is_binary(n) for b, n in carried):
        return None
    base, new = zip(*carried)
    return np.asarray(base, dtype=bool), np.asarray(new, dtype=bool)


def _is_binary(value: Any) -> bool:
    return isinstance(value, (bool, int, float)) and value in (0, 1)


def _mcnemar(base: np.ndarray, new: np.ndarray) -> float:
    """Two-sided exact McNemar p-value: a binomial(n = discordant pairs, 1/2) test on one kind of discordance."""
    from scipy.stats import binomtest  # imported here: scipy.stats costs a second at start-up

    lost = int(np.sum(base & ~new))
    gained = int(np.sum(~base & new))
    if lost + gained == 0:
        return 1.0
    return float(binomtest(lost, lost + gained, 0.5, alternative="two-sided").pvalue)


def recompute(runner: Any, rows: list[dict], params: Any, source: Entry) -> dict[str, float | None]:
    """The runner's aggregate over per-sample rows read from `source`'s file; rows that lack what it reads (a
    hand-made or foreign file whose sha256 the record matches) are one error naming that file, not a traceback."""
    try:
        return runner.aggregate(rows, params)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise SparcEvalError(
            f"per-sample records of {source.path} do not hold what runner {source.record.task['runner']!r} "
            f"recomputes its metrics from ({type(exc).__name__}: {exc})"
        ) from None


def _paired_bootstrap(
    comparisons: list[MetricComparison],
    base: Entry,
    new: Entry,
    base_rows: list[dict],
    new_rows: list[dict],
    report: RegressionReport,
) -> None:
    """Resample sample indices (the same ones for both sides), recompute the metrics, and test delta = 0 two-sided."""
    from sparc_eval.tasks.runner import get_runner

    runner_name = str(new.record.task["runner"])
    runner = get_runner(runner_name)
    params = _recorded_params(new, runner)
    try:
        full = recompute(runner, new_rows, params, new)
    except NotImplementedError:
        for c in comparisons:
            c.test, c.note = "none", f"runner {runner_name!r} cannot recompute its metrics from per-sample records"
        return
    for c in comparisons:
        if full.get(c.metric) is None or not np.isclose(full[c.metric], c.new, rtol=1e-6, atol=1e-9):
            report.notes.append(
                f"{c.checkpoint} / {c.task}: the runner's aggregate gives {c.metric} = {full.get(c.metric)!r}, "
                f"the record says {c.new!r}"
            )

    rng = np.random.default_rng([report.seed, zlib.crc32(f"{new.name}/{new.task}".encode())])
    n = len(base_rows)
    deltas: dict[str, list[float]] = {c.metric: [] for c in comparisons}
    for _ in track(range(report.n_bootstrap), f"bootstrap {new.name} / {new.task}"):
        idx = rng.integers(0, n, size=n)
        old = recompute(runner, [base_rows[i] for i in idx], params, base)
        now = recompute(runner, [new_rows[i] for i in idx], params, new)
        for metric, values in deltas.items():
            if old.get(metric) is not None and now.get(metric) is not None:
                values.append(now[metric] - old[metric])
    for c in comparisons:
        d = np.asarray(deltas[c.metric])
        c.test = "bootstrap"
        if d.size == 0:
            c.test, c.note = "none", "the metric was undefined on every resample"
            continue
        below = (np.sum(d <= 0) + 1) / (d.size + 1)
        above = (np.sum(d >= 0) + 1) / (d.size + 1)
        c.p_value = float(min(1.0, 2 * min(below, above)))


def _recorded_params(entry: Entry, runner: type) -> Any:
    """The runner's params the record was made with (records carry them: no card is read)."""
    from sparc_eval.tasks.card import validate_params

    return validate_params(runner.Params, entry.record.task["params"], f"result record {entry.path}")


# ---------------------------------------------------------------------------------------- report

_STATUS_STYLE = {PASS: "green", WITHIN_NOISE: "yellow", REGRESSION: "bold red", UNDEFINED: "dim"}


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def render_report(report: RegressionReport, console: Console) -> None:
    console.print(
        Panel(
            Group(f"baseline [bold]{report.baseline_dir}[/]  vs  results [bold]{report.results_dir}[/]", "", report.rule),
            title="sparc-eval regression gate",
            expand=False,
        ),
        highlight=False,
    )
    if report.problems:
        problems = Table(title="missing or changed (fail)", title_style="bold red")
        for column in ("checkpoint", "task", "problem", "detail"):
            problems.add_column(column)
        for p in report.problems:
            problems.add_row(p.checkpoint, p.task, f"[red]{p.kind}[/]", p.detail)
        console.print(problems)
    for checkpoint in dict.fromkeys(m.checkpoint for m in report.metrics):
        metrics = Table(title=f"{checkpoint}: metrics")
        for column, justify in (
            ("task", "left"),
            ("metric", "left"),
            ("baseline", "right"),
            ("new", "right"),
            ("Δ", "right"),
            ("test", "left"),
            ("p", "right"),
            ("status", "left"),
        ):
            metrics.add_column(column, justify=justify, no_wrap=column != "task")  # type: ignore[arg-type]
        previous = None
        for m in (m for m in report.metrics if m.checkpoint == checkpoint):
            metrics.add_row(
                m.task if m.task != previous else "",
                f"{m.metric} {'↑' if m.higher_is_better else '↓'}",
                _fmt(m.baseline),
                _fmt(m.new),
                _fmt(m.delta, signed=True),
                m.test,
                "" if m.p_value is None else f"{m.p_value:.3g}",
                f"[{_STATUS_STYLE[m.status]}]{m.status}[/]",
            )
            previous = m.task
        console.print(metrics)
    for m in report.metrics:
        if m.note:
            console.print(f"{m.checkpoint} / {m.task} / {m.metric}: {m.note}", highlight=False)
    if report.not_in_baseline:
        console.print(f"not in the baseline (not gated): {', '.join(report.not_in_baseline)}", highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    summary = (
        f"{len(report.regressions)} regression(s), {sum(p.kind == 'missing' for p in report.problems)} missing, "
        f"{sum(p.kind == 'changed' for p in report.problems)} changed, {len(report.metrics)} metric(s) compared"
    )
    verdict = "[bold green]PASS[/]" if report.passed else "[bold red]FAIL[/]"
    console.print(f"{verdict}: {summary}", highlight=False)
