"""`sparc-eval quickstart`: the main job."""

from __future__ import annotations

from pathlib import Path

import typer

from sparc_eval.cli.app import app, console
from sparc_eval.cli.cards import cards_option, use_cards


@app.command("quickstart")
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Folder for checkpoints, results and the leaderboard."),
    fast: bool = typer.Option(
        False, "--fast", help="Seconds-long smoke run: tiny data, a few steps, --limit; numbers meaningless."
    ),
    data_dir: Path = typer.Option(
        Path("data"), "--data-dir", envvar="SPARC_EVAL_DATA", help="Where SynthScenes is generated (reused when present)."
    ),
    cards: list[Path] = cards_option(),
) -> None:
    """The main job: generate SynthScenes, train tiny-clip and tiny-sparc (same data, steps, seed), score both on
    every task card tagged `quickstart`, print the comparison table and build the leaderboard. Under 10 minutes on
    2 CPU cores.

    Example: sparc-eval quickstart --out runs/quick
    """
    from sparc_eval.cli import checks
    from sparc_eval.quickstart import run_quickstart

    use_cards(cards)
    checks.output_folder("--out", out, free_mib=128)
    checks.data_folder("--data-dir", data_dir)
    result = run_quickstart(out, fast=fast, data_dir=data_dir, console=console)
    for stage, seconds in result.seconds.items():
        console.print(f"{stage}: {seconds:.1f} s", highlight=False)
    console.print(f"results: {result.results_dir}\nleaderboard: {result.leaderboard['index.html']}", highlight=False)
