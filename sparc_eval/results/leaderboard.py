"""Publishing: the results table as Markdown, CSV and one self-contained HTML page.

The page needs nothing from the network: styles, the sorting script and the charts (one inline SVG
bar chart per task family, drawn here) are all inside the file. Every row carries its provenance:
checkpoint sha256, the task card versions and hashes, and when each task was evaluated. The output
depends only on the records, so rebuilding from the same records gives the same bytes.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from string import Template

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import write_files_atomic
from sparc_eval.progress import track
from sparc_eval.results.collect import family_rank
from sparc_eval.results.record import direction_arrow
from sparc_eval.results.seeds import SeedGroup, find_group, paired_markdown, paired_test
from sparc_eval.results.table import (
    Column,
    ResultsTable,
    build_table,
    cell_text,
    render_csv,
    render_markdown,
    row_provenance,
)

TEMPLATE = Path(__file__).with_name("templates") / "leaderboard.html"
PAIRED_FILE = "paired-tests.md"  # written too when paired tests are asked for
# Tableau-10: distinguishable bar colours, one per checkpoint row, the same in every chart.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")


def build_leaderboard(
    results_dir: str | Path,
    out_dir: str | Path,
    title: str = "sparc-eval leaderboard",
    per_seed: bool = False,
    paired: PairedSpec | None = None,
) -> dict[str, Path]:
    """Write leaderboard.md, leaderboard.csv and index.html (paper column order) into `out_dir`, and with `paired`
    also paired-tests.md (every other recipe against one), all or none (fileio.write_files_atomic: every file is
    written to a temporary first, then each is renamed); returns the paths. Checkpoints that differ only by training
    seed share a row (mean ± sd over seeds) unless `per_seed`."""
    table = build_table(results_dir, layout="paper", per_seed=per_seed)
    linked = paired is not None
    texts = {
        "leaderboard.md": render_leaderboard_markdown(table, title, paired_file=linked),
        "leaderboard.csv": render_csv(table),
        "index.html": render_html(table, title, paired_file=linked),
    }
    if paired is not None:
        texts[PAIRED_FILE] = render_paired_markdown(table.recipes(), paired, title)
    return write_files_atomic(Path(out_dir), texts)


# ---------------------------------------------------------------------------------------- paired tests


@dataclass(frozen=True)
class PairedSpec:
    """Every other recipe tested against the row `against` (a row label or checkpoint name) over the same test
    images: `tasks` only when given; bootstrap resamples for per-image outcomes and, where the runner's aggregate
    recomputes the metric on each resample (slower), `n_bootstrap_aggregate` (default: the same)."""

    against: str
    tasks: tuple[str, ...] | None = None
    n_bootstrap: int = 1000
    n_bootstrap_aggregate: int | None = None


def render_paired_markdown(groups: dict[str, SeedGroup], spec: PairedSpec, title: str) -> str:
    reference = find_group(groups, spec.against)
    scored = {e.task for g in groups.values() for e in g.entries}
    unknown = [t for t in spec.tasks or () if t not in scored]
    if unknown:
        raise SparcEvalError(f"paired task {unknown[0]!r} has no records here; tasks: {', '.join(sorted(scored))}")
    ref_label = next(label for label, g in groups.items() if g is reference)
    aggregate = spec.n_bootstrap_aggregate or spec.n_bootstrap
    tasks = "every task both were scored on" if spec.tasks is None else ", ".join(spec.tasks)
    lines = [
        f"# {title}: paired tests against {ref_label}",
        "",
        f"Tasks: {tasks}.",
        "",
        "Per test image, each recipe's outcome is averaged over its seeds; a paired bootstrap over images",
        f"({spec.n_bootstrap:,} resamples; {aggregate:,} where the task's aggregate recomputes the metric) gives the",
        "95 % interval of the difference of the seed means and a two-sided p (exact McNemar where both rows are one",
        "seed with 0/1 outcomes). The spread between seeds is not part of the test.",
    ]
    others = [(label, g) for label, g in groups.items() if g is not reference]
    for label, group in track(others, f"paired tests against {ref_label}"):
        comparisons = paired_test(
            reference, group, n_bootstrap=spec.n_bootstrap, n_bootstrap_aggregate=aggregate, tasks=spec.tasks
        )
        # Column heads by checkpoint name; by whole row label where the two rows share a name.
        heads = (reference.name, group.name) if reference.name != group.name else (ref_label, label)
        body = paired_markdown(comparisons, *heads) if comparisons else "No task in common.\n"
        lines += ["", f"## {label} vs {ref_label}", "", body.rstrip("\n")]
    return "\n".join(lines) + "\n"


def _summary(table: ResultsTable) -> str:
    records = sum(len(entries) for entries in table.rows.values())
    newest = max(e.record.created_at for entries in table.rows.values() for e in entries)
    checkpoints = len({e.sha256 for entries in table.rows.values() for e in entries})
    seeds = (
        f"{len(table.rows)} row(s) over {checkpoints} checkpoint(s): each row a recipe, its cells the mean ± standard "
        "deviation over the recipe's training seeds; "
        if table.aggregated
        else f"{len(table.rows)} checkpoint(s), "
    )
    return f"{seeds}{len({c.task for c in table.columns})} task(s), {records} result record(s); newest evaluation {newest}."


# ---------------------------------------------------------------------------------------- Markdown


def render_leaderboard_markdown(table: ResultsTable, title: str, paired_file: bool = False) -> str:
    lines = [f"# {title}", "", _summary(table)]
    if paired_file:
        lines += ["", f"Paired tests between recipes over the same test images: [{PAIRED_FILE}]({PAIRED_FILE})."]
    lines += ["", render_markdown(table).rstrip("\n"), "", "## Provenance", ""]
    lines += ["| checkpoint | sha256 | evaluated | task cards (version, card sha256) |", "|:---|:---|:---|:---|"]
    for label, entries in table.rows.items():
        p = row_provenance(entries)
        cards = ", ".join(dict.fromkeys(f"{c['task']} v{c['version']} ({str(c['card_sha256'])[:8]})" for c in p["cards"]))
        shas = ", ".join(f"`{m['sha256']}`" + ("" if m["seed"] is None else f" (seed {m['seed']})") for m in p["checkpoints"])
        lines.append(f"| {label} | {shas} | {p['evaluated']} | {cards} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- HTML


def render_html(table: ResultsTable, title: str, paired_file: bool = False) -> str:
    link = f' Paired tests between recipes over the same test images: <a href="{PAIRED_FILE}">{PAIRED_FILE}</a>.'
    return Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=html.escape(title),
        summary=html.escape(_summary(table)) + (link if paired_file else ""),
        table=_html_table(table),
        charts="\n".join(_family_chart(table, family) for family in sorted({c.family for c in table.columns}, key=family_rank)),
    )


def _best(table: ResultsTable, col: Column) -> float | None:
    values = [v for label in table.rows if isinstance(v := table.cell(label, col), float)]
    if not values:
        return None
    if col.higher_is_better is None:  # descriptive quantities have no best
        return None
    return max(values) if col.higher_is_better else min(values)


def _spans(keys: list[str]) -> list[tuple[str, int]]:
    """Run-length groups of consecutive equal keys, for colspan headers."""
    spans: list[tuple[str, int]] = []
    for key in keys:
        if spans and spans[-1][0] == key:
            spans[-1] = (key, spans[-1][1] + 1)
        else:
            spans.append((key, 1))
    return spans


def _card_versions(table: ResultsTable, task: str) -> str:
    """The task card version(s) behind a column; rows scored under different versions are flagged."""
    versions = sorted(
        {e.record.task.get("version") for entries in table.rows.values() for e in entries if e.task == task}, key=str
    )
    text = "/".join(f"v{v}" for v in versions)
    if len(versions) > 1:
        return f'<span class="mixed" title="rows were scored under different card versions">{text} (mixed)</span>'
    return f'<span class="sha" title="task card version">{text}</span>'


def _sort_button(text: str, col: int, kind: str, first: str, rowspan: int = 1, title: str = "") -> str:
    attrs = f' rowspan="{rowspan}"' if rowspan > 1 else ""
    attrs += f' title="{html.escape(title)}"' if title else ""
    return (
        f'<th scope="col" data-col="{col}" data-type="{kind}" data-first="{first}"{attrs}>'
        f'<button type="button">{html.escape(text)}</button></th>'
    )


def _html_table(table: ResultsTable) -> str:
    cols = table.columns
    n_metrics = len(cols)
    out = ['<table id="leaderboard" class="lb">', "<thead>"]
    # Header rows: family, task, metric. Body cells: 0 checkpoint, 1..n metrics, n+1 evaluated, n+2 provenance.
    out.append(
        "<tr>"
        + _sort_button("checkpoint", 0, "text", "ascending", rowspan=3)
        + "".join(f'<th colspan="{n}" class="family">{html.escape(f)}</th>' for f, n in _spans([c.family for c in cols]))
        + _sort_button("evaluated", n_metrics + 1, "text", "descending", rowspan=3)
        + '<th scope="col" rowspan="3">provenance</th></tr>'
    )
    out.append(
        "<tr>"
        + "".join(
            f'<th colspan="{n}">{html.escape(t)} {_card_versions(table, t)}</th>' for t, n in _spans([c.task for c in cols])
        )
        + "</tr>"
    )
    out.append(
        "<tr>"
        + "".join(
            _sort_button(
                f"{c.metric} {direction_arrow(c.higher_is_better)}",
                i + 1,
                "number",
                "descending" if c.higher_is_better else "ascending",
                title=f"{c.task} / {c.metric}: "
                + {True: "higher is better", False: "lower is better", None: "descriptive"}[c.higher_is_better],
            )
            for i, c in enumerate(cols)
        )
        + "</tr>"
    )
    out += ["</thead>", "<tbody>"]
    best = {c: _best(table, c) for c in cols}
    for label, entries in table.rows.items():
        p = row_provenance(entries)
        cells = [
            f'<th scope="row" data-value="{html.escape(label)}">{html.escape(entries[0].name)} '
            + (
                f'<span class="sha">{html.escape(p["sha256"][:8])}</span>'
                if p["sha256"]
                else f'<span class="sha">{table.seeds(label)} seeds</span>'
            )
            + (f' <span class="sha">limit {entries[0].record.limit}</span>' if entries[0].record.limit is not None else "")
            + "</th>"
        ]
        for c in cols:
            value = table.cell(label, c)
            if value == "":
                cells.append('<td class="num" data-value="" title="not evaluated"></td>')
            elif value is None:
                cells.append('<td class="num na" data-value="" title="undefined">n/a</td>')
            else:
                cls = "num best" if value == best[c] else "num"
                cells.append(f'<td class="{cls}" data-value="{value!r}">{html.escape(cell_text(table, label, c))}</td>')
        cells.append(f'<td class="date" data-value="{html.escape(p["evaluated"])}">{html.escape(p["evaluated"][:10])}</td>')
        cards = "".join(
            f'<li>{html.escape(c["task"])} v{c["version"]} · card <span class="sha">{html.escape(str(c["card_sha256"])[:12])}</span>'
            f" · {html.escape(c['created_at'])} · n={c['n_samples']}</li>"
            for c in p["cards"]
        )
        shas = "".join(
            f'<div class="sha">{html.escape(m["sha256"])}' + ("" if m["seed"] is None else f" (seed {m['seed']})") + "</div>"
            for m in p["checkpoints"]
        )
        summary = html.escape(p["sha256"][:12]) if p["sha256"] else f"{len(p['checkpoints'])} checkpoints"
        cells.append(
            f'<td><details><summary>sha256 <span class="sha">{summary}</span></summary>{shas}<ul>{cards}</ul></details></td>'
        )
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- charts

_LABEL_W, _BAR_W, _VALUE_W = 290, 420, 70
_BAR_H, _BAR_GAP, _GROUP_GAP, _LEGEND_ROW = 12, 2, 12, 16


def _family_chart(table: ResultsTable, family: str) -> str:
    """Grouped horizontal bars: one group per (task, metric) of the family, one bar per checkpoint row.

    Each group has its own scale (from min(0, values) to max(0, values)): metrics of one family come in
    different units (fractions, percentages, patch counts), and the comparison that matters is between
    checkpoints on the same metric.
    """
    cols = [c for c in table.columns if c.family == family]
    # Colours follow the row order of the whole table so a checkpoint looks the same in every chart.
    colour = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(table.rows)}
    labels = [label for label in table.rows if any(table.cell(label, c) != "" for c in cols)]

    width = _LABEL_W + _BAR_W + _VALUE_W * (2 if table.aggregated else 1)  # room for "mean ± sd"
    parts: list[str] = []
    y = 4
    for label in labels:  # legend
        parts.append(f'<rect x="{_LABEL_W}" y="{y}" width="10" height="10" fill="{colour[label]}"/>')
        parts.append(f'<text x="{_LABEL_W + 14}" y="{y + 9}">{html.escape(label)}</text>')
        y += _LEGEND_ROW
    y += 6
    for c in cols:
        values = [v for label in labels if isinstance(v := table.cell(label, c), float)]
        lo, hi = min([0.0, *values]), max([0.0, *values])
        span = (hi - lo) or 1.0

        def x(v: float, lo: float = lo, span: float = span) -> float:
            return _LABEL_W + (v - lo) / span * _BAR_W

        group_h = len(labels) * (_BAR_H + _BAR_GAP)
        parts.append(
            f'<text x="{_LABEL_W - 6}" y="{y + group_h / 2 + 4:.1f}" text-anchor="end">'
            f"{html.escape(c.task)} · {html.escape(c.metric)} {direction_arrow(c.higher_is_better)}</text>"
        )
        parts.append(f'<line x1="{x(0.0):.1f}" y1="{y - 2}" x2="{x(0.0):.1f}" y2="{y + group_h}" stroke="#59636e"/>')
        for label in labels:
            value = table.cell(label, c)
            tip = html.escape(f"{label}: {c.task} / {c.metric} = {cell_text(table, label, c) or 'not evaluated'}")
            if isinstance(value, float):
                x0, x1 = sorted((x(0.0), x(value)))
                parts.append(
                    f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 0.5):.1f}" height="{_BAR_H}" fill="{colour[label]}">'
                    f"<title>{tip}</title></rect>"
                )
                parts.append(
                    f'<text x="{max(x1, x(0.0)) + 4:.1f}" y="{y + _BAR_H - 2}">{html.escape(cell_text(table, label, c))}</text>'
                )
            else:
                parts.append(
                    f'<text x="{x(0.0) + 4:.1f}" y="{y + _BAR_H - 2}" fill="#59636e"><title>{tip}</title>'
                    f"{'n/a' if value is None else '–'}</text>"
                )
            y += _BAR_H + _BAR_GAP
        y += _GROUP_GAP
    height = y + 4
    title = html.escape(f"{family}: metric values per checkpoint, each metric on its own scale")
    return (
        f'<figure><figcaption>{html.escape(family)} <span class="hint">(each metric on its own scale)</span></figcaption>'
        f'<svg role="img" aria-label="{title}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(parts)}</svg></figure>'
    )
