"""The `sparc-eval` command line: one typer app (cli.app), one module per command group.

Every user-caused error is a SparcEvalError: printed on one line, exit code 2, no traceback.
"""

from __future__ import annotations

import sys

import typer

# Importing a command module attaches its commands to the app, in the order `--help` lists them.
from sparc_eval.cli import data, evaluate, kprecision, plugins, quickstart, results, train, viz  # noqa: F401
from sparc_eval.cli.app import app, err_console
from sparc_eval.errors import SparcEvalError


def _rank_prefix() -> str | None:
    """ "" outside torchrun; under it "rank R of N: " for the first rank to fail, None for the others (they stay quiet,
    so a failure on one rank is one line, whichever ranks it stops)."""
    distributed = sys.modules.get("sparc_eval.tasks.distributed")  # imported by every run that joined a process group
    if distributed is None or not distributed.current_world().distributed:
        return ""
    world = distributed.current_world()
    return f"rank {world.rank} of {world.size}: " if distributed.claim_error_report() else None


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning SparcEvalError into one line and exit code 2."""
    try:
        # Without standalone mode click returns a typer.Exit's code instead of exiting.
        code = app(args=argv, standalone_mode=False)
    except SparcEvalError as exc:
        where = _rank_prefix()
        if where is None:  # under torchrun: another rank failed first and reports
            sys.exit(2)
        err_console.print(f"[bold red]error:[/] {where}{exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:
        # Usage errors (unknown command or option) show their own message and carry their own exit code;
        # typer >= 0.20 vendors click, so they are recognised by shape rather than by class.
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        if _rank_prefix() is None:
            sys.exit(2)
        raise
    sys.exit(code if isinstance(code, int) else 0)
