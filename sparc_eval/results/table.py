"""The results table: a pandas pivot of result records, rows = checkpoints, columns = task x metric.

Rendered as a rich table, Markdown, CSV or JSON. An undefined metric (None in the record) shows as
"n/a" (blank in CSV, null in JSON); a task a checkpoint was not evaluated on shows as an empty cell.
Checkpoints that share a recipe and differ only by training seed make one row (results.seeds): the cell is
the mean over seeds, shown with the standard deviation ("0.158 ± 0.013"), and the row label gives the
number of seeds; `per_seed=True` keeps one row per checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from sparc_eval.errors import SparcEvalError
from sparc_eval.results.collect import Entry, collect, family_rank
from sparc_eval.results.record import direction_arrow
from sparc_eval.results.seeds import SeedGroup, group_entries

NOT_DEFINED = "n/a"
LAYOUTS = ("default", "paper")


@dataclass(frozen=True)
class Column:
    task: str
    metric: str
    higher_is_better: bool | None
    family: str

    @property
    def title(self) -> str:
        return f"{self.task} · {self.metric} {direction_arrow(self.higher_is_better)}"


@dataclass
class ResultsTable:
    """The pivot (`values`: NaN where undefined or not run; `present`: True where a record exists) plus row provenance."""

    values: pd.DataFrame  # index: row label; columns: MultiIndex (task, metric)
    present: pd.DataFrame  # same shape, bool
    columns: list[Column]
    rows: dict[str, list[Entry]]  # row label -> the records in that row (every seed's), in column-task order
    superseded: list[Entry] = field(default_factory=list)
    spread: pd.DataFrame | None = None  # sample standard deviation over a row's seeds (NaN for one seed)
    counts: pd.DataFrame | None = None  # number of seeds with a defined value
    groups: dict[str, SeedGroup] = field(default_factory=dict)  # row label -> its seed group (empty: per seed)

    def cell(self, label: str, col: Column) -> float | None | str:
        """The value (mean over seeds), None when the metric is undefined, "" when the task was not run for this row."""
        if not self.present.at[label, (col.task, col.metric)]:
            return ""
        value = self.values.at[label, (col.task, col.metric)]
        return None if math.isnan(value) else float(value)

    def seeds(self, label: str) -> int:
        """How many checkpoints (seeds) the row aggregates."""
        group = self.groups.get(label)
        return len(group.members) if group else 1

    def recipes(self) -> dict[str, SeedGroup]:
        """The seed groups of the records, keyed by the label a recipe's row has (with --per-seed too: paired tests
        compare recipes whichever rows are shown); from the records already read."""
        return self.groups or row_groups(e for entries in self.rows.values() for e in entries)

    @property
    def aggregated(self) -> bool:
        return any(self.seeds(label) > 1 for label in self.rows)

    def spread_of(self, label: str, col: Column) -> float | None:
        if self.spread is None or self.seeds(label) < 2 or not self.present.at[label, (col.task, col.metric)]:
            return None
        value = self.spread.at[label, (col.task, col.metric)]
        return None if math.isnan(value) else float(value)

    def n_of(self, label: str, col: Column) -> int:
        if self.counts is None or not self.present.at[label, (col.task, col.metric)]:
            return 0
        return int(self.counts.at[label, (col.task, col.metric)])


def build_table(results_dir: str | Path, layout: str = "default", per_seed: bool = False) -> ResultsTable:
    """Pivot every record under `results_dir`; `layout="paper"` orders columns as the SPARC paper's tables.
    Checkpoints differing only by seed share a row unless `per_seed`."""
    if layout not in LAYOUTS:
        raise SparcEvalError(f"unknown table layout {layout!r}; use {' or '.join(LAYOUTS)}")
    entries, superseded = collect(results_dir, key="run")
    groups = {} if per_seed else row_groups(entries)
    row_of = {id(e): label for label, g in groups.items() for e in g.entries}
    long = pd.DataFrame(
        [
            {
                "row": row_of.get(id(e), e.label),
                "task": e.task,
                "metric": metric,
                "value": math.nan if m.value is None else float(m.value),
                "recorded": 1.0,
            }
            for e in entries
            for metric, m in e.record.metrics.items()
        ]
    )
    if long.empty:
        raise SparcEvalError(f"results folder {results_dir}: the records hold no metrics")
    by_cell = long.groupby(["row", "task", "metric"], sort=False)["value"]
    values, spread, counts = (stat.unstack(["task", "metric"]) for stat in (by_cell.mean(), by_cell.std(ddof=1), by_cell.count()))
    present = long.pivot_table(index="row", columns=["task", "metric"], values="recorded", aggfunc="max").notna()

    columns = _columns(entries, layout)
    order = pd.MultiIndex.from_tuples([(c.task, c.metric) for c in columns])
    row_order = list(dict.fromkeys(row_of.get(id(e), e.label) for e in entries))
    rows: dict[str, list[Entry]] = {label: [] for label in row_order}
    task_rank = {c.task: i for i, c in enumerate(columns)}
    for e in sorted(entries, key=lambda e: task_rank[e.task]):
        rows[row_of.get(id(e), e.label)].append(e)
    return ResultsTable(
        values=values.reindex(index=row_order, columns=order),
        present=present.reindex(index=row_order, columns=order, fill_value=False),
        columns=columns,
        rows=rows,
        superseded=superseded,
        spread=spread.reindex(index=row_order, columns=order),
        counts=counts.reindex(index=row_order, columns=order, fill_value=0),
        groups=groups,
    )


def row_groups(entries: Iterable[Entry]) -> dict[str, SeedGroup]:
    """Seed groups keyed by their row label; a group of one keeps the checkpoint's own label (name and short sha):
    nothing is aggregated."""
    return {(g.entries[0].label if len(g.members) == 1 else label): g for label, g in group_entries(entries).items()}


def _columns(entries: list[Entry], layout: str) -> list[Column]:
    """One column per (task, metric); metrics in the runner's display order, tasks by name or by paper family."""
    seen: dict[tuple[str, str], Column] = {}
    for e in entries:
        for metric, m in e.record.metrics.items():
            seen.setdefault((e.task, metric), Column(e.task, metric, m.higher_is_better, e.family))
    metric_rank = {key: i for i, key in enumerate(seen)}

    def sort_key(c: Column) -> tuple:
        family = family_rank(c.family) if layout == "paper" else (0, "")
        return (family, c.task, metric_rank[(c.task, c.metric)])

    return sorted(seen.values(), key=sort_key)


def format_value(value: float | None | str) -> str:
    if value is None:
        return NOT_DEFINED
    if value == "":
        return ""
    return f"{value:.4g}"


def cell_text(table: ResultsTable, label: str, col: Column) -> str:
    """The cell as shown: the value, and for a row over several seeds its spread ("0.158 ± 0.013") and, where fewer
    seeds than the row's have a defined value, their number ("(n=1)")."""
    text = format_value(table.cell(label, col))
    if table.seeds(label) < 2 or text in ("", NOT_DEFINED):
        return text
    spread = table.spread_of(label, col)
    n = table.n_of(label, col)
    return text + (f" ± {spread:.2g}" if spread is not None else "") + (f" (n={n})" if n < table.seeds(label) else "")


def render_rich(table: ResultsTable, title: str = "results", width: int | None = None) -> Table:
    """Checkpoints as rows; when that is wider than `width` (the terminal), transposed: task x metric as rows."""
    out = Table(title=title, caption=_superseded_note(table))
    out.add_column("checkpoint", no_wrap=True)
    for col in table.columns:
        out.add_column(f"{col.task}\n{col.metric} {direction_arrow(col.higher_is_better)}", justify="right", no_wrap=True)
    for label in table.rows:
        out.add_row(label, *(cell_text(table, label, c) for c in table.columns))
    if width is None or Console(width=100_000).measure(out).maximum <= width:
        return out
    transposed = Table(title=title, caption=" ".join(filter(None, ["transposed to fit the terminal.", _superseded_note(table)])))
    transposed.add_column("task", no_wrap=True)
    transposed.add_column("metric", no_wrap=True)
    for label in table.rows:
        transposed.add_column(label, justify="right")
    previous = None
    for col in table.columns:
        transposed.add_row(
            col.task if col.task != previous else "",
            f"{col.metric} {direction_arrow(col.higher_is_better)}",
            *(cell_text(table, label, col) for label in table.rows),
            end_section=False,
        )
        previous = col.task
    return transposed


def render_markdown(table: ResultsTable) -> str:
    header = ["checkpoint", *(c.title for c in table.columns)]
    lines = [_md_row(header), "|" + "|".join([":---", *["---:"] * len(table.columns)]) + "|"]
    for label in table.rows:
        lines.append(_md_row([label, *(cell_text(table, label, c) for c in table.columns)]))
    note = _superseded_note(table)
    return "\n".join(lines) + ("\n\n" + note if note else "") + "\n"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def row_provenance(entries: list[Entry]) -> dict[str, Any]:
    """Where a row's numbers come from: checkpoint sha256 (empty for a row over several seeds, whose `checkpoints`
    list each one with its seed), newest evaluation time, and each task card used."""
    from sparc_eval.results.seeds import seed_of

    members = {e.sha256: seed_of(e) for e in sorted(entries, key=lambda e: (seed_of(e) is None, seed_of(e) or 0, e.sha256))}
    return {
        "sha256": entries[0].sha256 if len(members) == 1 else "",
        "checkpoints": [{"sha256": sha, "seed": seed} for sha, seed in members.items()],
        "evaluated": max(e.record.created_at for e in entries),
        "cards": [
            {
                "task": e.task,
                "version": e.record.task.get("version"),
                "card_sha256": e.record.task.get("card_sha256"),
                "created_at": e.record.created_at,
                "n_samples": e.record.n_samples,
                "record": str(e.path),
            }
            for e in entries
        ],
    }


def render_csv(table: ResultsTable) -> str:
    """One header row: checkpoint, name, sha256, limit, evaluated, cards, then `task/metric`; undefined and not-run cells
    are blank. A table with rows over several seeds adds, per metric, `task/metric sd` and `task/metric n` at the end,
    and `seeds` (the rows' training seeds) after them."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    extra = [f"{c.task}/{c.metric} {kind}" for kind in ("sd", "n") for c in table.columns] + ["seeds"] if table.aggregated else []
    writer.writerow(
        ["checkpoint", "name", "sha256", "limit", "evaluated", "cards", *(f"{c.task}/{c.metric}" for c in table.columns), *extra]
    )
    for label, entries in table.rows.items():
        first, provenance = entries[0], row_provenance(entries)
        cards = "; ".join(dict.fromkeys(f"{c['task']} v{c['version']}" for c in provenance["cards"]))
        cells = [table.cell(label, c) for c in table.columns]
        if table.aggregated:
            spreads = [table.spread_of(label, c) for c in table.columns]
            counts = [table.n_of(label, c) for c in table.columns]
            seeds = " ".join(str(m["seed"]) for m in provenance["checkpoints"])
            cells += [*("" if v is None else v for v in spreads), *counts, seeds]
        writer.writerow(
            [
                label,
                first.name,
                provenance["sha256"],
                "" if first.record.limit is None else first.record.limit,
                provenance["evaluated"],
                cards,
                *("" if v is None else v for v in cells),
            ]
        )
    return buf.getvalue()


def table_json(table: ResultsTable) -> dict[str, Any]:
    """Columns with their direction and family; rows with provenance and values[task][metric] (null = undefined;
    the mean over seeds), and for every row `seeds`, `spread` (standard deviation, null for one seed) and `n`."""
    rows = []
    for label, entries in table.rows.items():
        values: dict[str, dict[str, float | None]] = {}
        spread: dict[str, dict[str, float | None]] = {}
        counts: dict[str, dict[str, int]] = {}
        for c in table.columns:
            v = table.cell(label, c)
            if v != "":
                values.setdefault(c.task, {})[c.metric] = v
                spread.setdefault(c.task, {})[c.metric] = table.spread_of(label, c)
                counts.setdefault(c.task, {})[c.metric] = table.n_of(label, c)
        first = entries[0]
        rows.append(
            {
                "checkpoint": label,
                "name": first.name,
                "limit": first.record.limit,
                "values": values,
                "spread": spread,
                "n": counts,
                **row_provenance(entries),
            }
        )
    return {
        "columns": [
            {"task": c.task, "metric": c.metric, "higher_is_better": c.higher_is_better, "family": c.family}
            for c in table.columns
        ],
        "rows": rows,
        "superseded": [str(e.path) for e in table.superseded],
    }


def render_json(table: ResultsTable) -> str:
    return json.dumps(table_json(table), indent=2) + "\n"


def _superseded_note(table: ResultsTable) -> str:
    if not table.superseded:
        return ""
    return f"{len(table.superseded)} older record(s) for the same checkpoint and task not shown (newest wins)"


TEXT_RENDERERS: dict[str, Callable[[ResultsTable], str]] = {
    "md": render_markdown,
    "csv": render_csv,
    "json": render_json,
}
FORMATS = ("rich", *TEXT_RENDERERS)
