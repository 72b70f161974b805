"""`sparc-eval table`, `regress` and `leaderboard build`: read result records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from sparc_eval.cli.app import app, console, leaderboard_app
from sparc_eval.errors import SparcEvalError


@app.command("table")
def table_cmd(
    results_dir: Path = typer.Argument(..., help="Results folder (searched recursively for *.record.json)."),
    fmt: str = typer.Option("rich", "--format", "-f", help="rich, md, csv or json."),
    layout: str = typer.Option("default", "--layout", help="default (tasks by name) or paper (the SPARC paper's column order)."),
    per_seed: bool = typer.Option(
        False, "--per-seed", help="One row per checkpoint, instead of one per recipe over its training seeds (mean ± sd)."
    ),
    paired: tuple[str, str] | None = typer.Option(
        None,
        "--paired",
        metavar="ROW_A ROW_B",
        help="Also test ROW_B against ROW_A (row labels or checkpoint names) task by task over the same test images: paired bootstrap of the seed means (exact McNemar for one seed each).",
    ),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Resamples of the paired test."),
) -> None:
    """Pivot result records into one table: a row per recipe (checkpoints differing only by training seed share a row:
    mean ± standard deviation over seeds), a column per task x metric.

    Example: sparc-eval table results --format md --layout paper

    Example: sparc-eval table runs/like-for-like/results --paired tiny-clip tiny-sparc
    """
    from sparc_eval.cli import checks
    from sparc_eval.results.table import FORMATS, TEXT_RENDERERS, build_table, render_rich, table_json

    checks.existing_folder("results folder", results_dir)

    if fmt not in FORMATS:
        raise SparcEvalError(f"unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")
    checks.between("--bootstrap", bootstrap, 1, 1_000_000)
    if paired and fmt == "csv":
        raise SparcEvalError("--paired adds a second table, which CSV cannot hold: use --format rich, md or json")
    table = build_table(results_dir, layout=layout, per_seed=per_seed)
    if paired:
        from sparc_eval.results.seeds import find_group, paired_json, paired_markdown, paired_test

        # The test runs before anything is printed: a bad name or unpairable records are one line, not a table and an error.
        a, b = (find_group(table.recipes(), ref) for ref in paired)
        if a is b:
            raise SparcEvalError(f"--paired needs two different rows; {paired[0]!r} and {paired[1]!r} are the same row")
        comparisons = paired_test(a, b, n_bootstrap=bootstrap)
    if fmt == "json" and paired:
        # One JSON document for a program to read: the table and the test side by side.
        both = {**table_json(table), "paired": {"a": paired[0], "b": paired[1], "comparisons": paired_json(comparisons)}}
        sys.stdout.write(json.dumps(both, indent=2) + "\n")
        return
    if fmt == "rich":
        console.print(render_rich(table, title=f"results in {results_dir}", width=console.width))
    else:
        sys.stdout.write(TEXT_RENDERERS[fmt](table))
    if paired:
        sys.stdout.write("\n" + paired_markdown(comparisons, *paired))


@app.command("regress")
def regress_cmd(
    baseline: Path = typer.Option(..., "--baseline", help="Folder of baseline result records (e.g. leaderboard/baseline)."),
    results: Path = typer.Option(..., "--results", help="Folder of new result records to gate."),
    tolerance: float = typer.Option(0.0, "--tolerance", help="Absolute drop allowed before a metric is tested at all."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level of the paired test."),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", help="Paired bootstrap resamples (metrics without 0/1 per-sample outcomes)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    exact: bool = typer.Option(
        False,
        "--exact",
        help="Both folders replicate one deterministic run (CI's quickstart --fast): any drop beyond the tolerance fails, no paired test.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Regression gate: fail when a metric drops beyond the tolerance AND significantly, or a baseline task is missing or changed.

    Exit code 0 = pass, 1 = regression / missing / changed, 2 = bad input.

    Example: sparc-eval regress --baseline leaderboard/baseline --results runs/ci/results --tolerance 0.01
    """
    import json

    from sparc_eval.cli import checks
    from sparc_eval.results.regress import compare_results, render_report

    checks.existing_folder("--baseline", baseline)
    checks.existing_folder("--results", results)
    checks.finite("--tolerance", tolerance, minimum=0)
    if not 0 < alpha < 1:
        raise SparcEvalError(f"--alpha must be between 0 and 1 (exclusive), got {alpha}")
    checks.between("--bootstrap", bootstrap, 1, 1_000_000)
    checks.seed("--seed", seed)
    report = compare_results(baseline, results, tolerance=tolerance, alpha=alpha, n_bootstrap=bootstrap, seed=seed, exact=exact)
    if json_out:
        print(json.dumps(report.to_json(), indent=2))
    else:
        render_report(report, console)
    sys.exit(report.exit_code)  # typer.Exit would be swallowed by standalone_mode=False


@leaderboard_app.command("build")
def leaderboard_build(
    results_dir: Path = typer.Argument(..., help="Results folder (searched recursively for *.record.json)."),
    out: Path = typer.Option(Path("leaderboard"), "--out", help="Folder for leaderboard.md, leaderboard.csv and index.html."),
    title: str = typer.Option("sparc-eval leaderboard", "--title", help="Page title."),
    per_seed: bool = typer.Option(
        False, "--per-seed", help="One row per checkpoint, instead of one per recipe over its training seeds (mean ± sd)."
    ),
    paired_against: str | None = typer.Option(
        None,
        "--paired-against",
        metavar="ROW",
        help="Also write paired-tests.md: every other recipe against ROW (a row label or checkpoint name), task by task over the same test images.",
    ),
    paired_tasks: list[str] = typer.Option(
        [], "--paired-task", metavar="TASK", help="Only these tasks in the paired tests (repeatable; default: every task)."
    ),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Paired bootstrap resamples."),
    bootstrap_aggregate: int | None = typer.Option(
        None,
        "--bootstrap-aggregate",
        help="Resamples for metrics the task's aggregate recomputes on each resample (slower; default: --bootstrap).",
    ),
) -> None:
    """Write the leaderboard as Markdown, CSV and a self-contained, sortable HTML page with one chart per task family.

    Example: sparc-eval leaderboard build results --out leaderboard/

    Example: sparc-eval leaderboard build runs/like-for-like/results --out lfl/ --paired-against tiny-clip --paired-task synth-cls
    """
    from sparc_eval.cli import checks
    from sparc_eval.results.leaderboard import PairedSpec, build_leaderboard

    checks.existing_folder("results folder", results_dir)
    checks.output_folder("--out", out, free_mib=4)
    checks.between("--bootstrap", bootstrap, 1, 1_000_000)
    checks.between("--bootstrap-aggregate", bootstrap_aggregate, 1, 1_000_000)
    if paired_against is None and (paired_tasks or bootstrap_aggregate is not None):
        raise SparcEvalError("--paired-task and --bootstrap-aggregate need --paired-against ROW")
    paired = None
    if paired_against is not None:
        paired = PairedSpec(paired_against, tuple(paired_tasks) or None, bootstrap, bootstrap_aggregate)

    for path in build_leaderboard(results_dir, out, title=title, per_seed=per_seed, paired=paired).values():
        console.print(f"wrote {path}", highlight=False)
