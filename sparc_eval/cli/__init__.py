"""The `sparc-eval` command line (entry point `sparc_eval.cli:main`)."""

from sparc_eval.cli.main import app, main

__all__ = ["app", "main"]
