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


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning SparcEvalError into one line and exit code 2."""
    try:
        # Without standalone mode click returns a typer.Exit's code instead of exiting.
        code = app(args=argv, standalone_mode=False)
    except SparcEvalError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
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
        raise
    sys.exit(code if isinstance(code, int) else 0)
