"""The typer app and its sub-apps; the command modules beside this one attach their commands to them.

Heavy imports (torch, open_clip) happen inside commands so that `--help` stays instant.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from sparc_eval import __version__


class UncutConsole(Console):
    """A console that never cuts what it prints: a table gets the width it needs even where that is more than
    the terminal's (or, piped into another program, rich's default of 80 columns), and long lines are not
    folded. Names, paths and numbers then reach `grep` whole."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        tables = [o for o in objects if isinstance(o, Table)]
        kwargs.setdefault("soft_wrap", not tables)
        needed = max((_NATURAL.measure(t).maximum for t in tables), default=0)
        if needed <= self.width:
            super().print(*objects, **kwargs)
            return
        # print(width=...) is capped at the console's width, so widen the console itself for this one call.
        saved = self._width
        self.width = needed
        try:
            super().print(*objects, **kwargs)
        finally:
            self._width = saved


_NATURAL = Console(width=100_000)  # measures a table's natural width, unconstrained by any terminal
console = UncutConsole()
err_console = Console(stderr=True)

app = typer.Typer(
    name="sparc-eval",
    help="Train SPARC / CLIP-style image-text models and score them on the SPARC paper's tasks.\n\n"
    "Example: sparc-eval quickstart --out runs/quick",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(
    help="Generate and verify datasets.\n\nExample: sparc-eval data synth --out data/synthscenes", no_args_is_help=True
)
app.add_typer(data_app, name="data")


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"sparc-eval {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Train SPARC / CLIP-style image-text models and score them on the SPARC paper's tasks."""


leaderboard_app = typer.Typer(
    help="Publish result tables.\n\nExample: sparc-eval leaderboard build results --out leaderboard/", no_args_is_help=True
)
app.add_typer(leaderboard_app, name="leaderboard")

viz_app = typer.Typer(
    help="Pictures: token-to-patch alignment heat maps and segmentation panels.\n\n"
    "Example: sparc-eval viz align --ckpt runs/quick/tiny-sparc --image data/synthscenes/images/004001.png "
    "--caption 'a small red circle' --out align.png",
    no_args_is_help=True,
)
app.add_typer(viz_app, name="viz")
