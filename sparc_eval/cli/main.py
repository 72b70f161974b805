"""The `sparc-eval` command line: one typer app (cli.app), one module per command group.

Every user-caused error is a SparcEvalError: printed on one line, exit code 2, no traceback.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

import typer
from rich.markup import escape

# Importing a command module attaches its commands to the app, in the order `--help` lists them.
from sparc_eval.cli import cards, data, evaluate, kprecision, plugins, quickstart, results, shards, train, viz  # noqa: F401
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


def _fail(message: str) -> None:
    """One line on stderr and exit code 2 (markup in the message, e.g. a bbox "[x, y, w, h]", printed as is)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(2)


def _os_error(exc: OSError) -> str:
    """An OSError (a full disk, a permission, a missing folder) as one sentence naming the path."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{paths}: {reason}" if paths else reason


@contextlib.contextmanager
def _held_back_warnings() -> Iterator[None]:
    """Hold library warnings (warnings module, logging WARNING records) until the command ends: shown after a
    success, dropped after a user error, whose report is one line."""
    held_logs: list[logging.LogRecord] = []

    class _Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held_logs.append(record)

    root = logging.getLogger()
    handler = _Hold(logging.WARNING)
    hold_logs = not root.handlers  # a program that configured logging keeps its own handlers
    if hold_logs:
        root.addHandler(handler)
    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("default")
        try:
            yield
        finally:
            if hold_logs:
                root.removeHandler(handler)
    for w in held:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    for record in held_logs:
        sys.stderr.write(logging.Formatter("%(levelname)s:%(name)s:%(message)s").format(record) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning SparcEvalError (and OSError, naming its path) into one line and
    exit code 2."""
    try:
        # Without standalone mode click returns a typer.Exit's code instead of exiting.
        with _held_back_warnings():
            code = app(args=argv, standalone_mode=False)
    except SparcEvalError as exc:
        where = _rank_prefix()
        if where is None:  # under torchrun: another rank failed first and reports
            sys.exit(2)
        _fail(f"{where}{exc}")
    except OSError as exc:  # a full disk or a permission: the environment, not a bug
        where = _rank_prefix()
        if where is None:
            sys.exit(2)
        _fail(f"{where}{_os_error(exc)}")
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:
        # Usage errors (unknown command or option) show their own message and carry their own exit code;
        # typer >= 0.20 vendors click, so they are recognised by shape rather than by class.
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            if exc.exit_code == 2 and hasattr(exc, "format_message") and type(exc).__name__ != "NoArgsIsHelpError":
                command = getattr(getattr(exc, "ctx", None), "command_path", "sparc-eval")
                _fail(f"{exc.format_message()} (see {command} --help)")  # a bad option value: one line too
            exc.show()
            sys.exit(exc.exit_code)
        if _rank_prefix() is None:
            sys.exit(2)
        raise
    sys.exit(code if isinstance(code, int) else 0)
